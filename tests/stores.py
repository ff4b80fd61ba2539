"""What the store tests share: running a command as a user does, and moving shard directories to and from S3."""

import os
import subprocess
import sys

import fsspec
from servers import ROOT

NOISE = ("Traceback", "never retrieved", "Exception ignored", "attached to a different loop", " - ERROR - ")


def run_clean(*args, **env):
    """`python ARGS` from the checkout with this test's environment (the fixture's AWS settings) and `env`: it
    exits 0 and prints nothing a user would take for a failure. Returns its stdout."""
    run = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert not [word for word in NOISE if word in output], output
    return run.stdout


def s3fs_():
    return fsspec.filesystem("s3", use_listings_cache=False)


def local_files(root):
    """{relative path: bytes} of everything a shard run leaves that readers use (not the .work bookkeeping)."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), root)
            if not rel.startswith(".work"):
                with open(os.path.join(folder, name), "rb") as f:
                    found[rel] = f.read()
    return found


def remote_files(url):
    fs = s3fs_()
    prefix = url[len("s3://") :]
    return {
        path[len(prefix) + 1 :]: fs.cat_file(path)
        for path in fs.find(prefix)
        if not path[len(prefix) + 1 :].startswith(".work")
    }


def upload(local, url):
    s3fs_().put(local.rstrip("/") + "/", url[len("s3://") :], recursive=True)

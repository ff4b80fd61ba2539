"""Where bytes live: local paths and fsspec URLs (s3://, gs://, any fsspec protocol) behind one set of functions.

Local paths use plain `os` calls: a file is written under a temporary name and renamed, so it is whole or absent.
A remote object is written with one PUT (a multipart upload above 50 MiB), which object stores make visible only
when complete: whole or absent there too. Credentials and endpoints come from each store's standard environment
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE, ... for S3; GOOGLE_APPLICATION_CREDENTIALS for GCS).
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import glob as globlib
import hashlib
import io
import json
import os
import posixpath
import shutil
import socket
import sys

import numpy as np

from .errors import UserError

# the package fsspec needs for a protocol, pinned as in requirements.txt (a bare `pip install s3fs` beside a recent
# boto3 resolves to s3fs 0.4.2 from 2019)
PROTOCOL_PACKAGES = {
    "s3": "s3fs==2026.9.0",
    "s3a": "s3fs==2026.9.0",
    "gs": "gcsfs==2026.9.0",
    "gcs": "gcsfs==2026.9.0",
    "az": "adlfs",
    "abfs": "adlfs",
}


def is_url(path) -> bool:
    return "://" in os.fspath(path)


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts) if is_url(root) else os.path.join(root, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def absolute(path) -> str:
    """A URL as given (without a trailing slash), a local path made absolute (workers have other cwds)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def cache_dir(*parts: str) -> str:
    """A folder of this tool's local cache: $XDG_CACHE_HOME/alexnet-wds/... (default ~/.cache)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "alexnet-wds", *parts)


def filesystem(url: str):
    """(fsspec filesystem, path inside it); one line naming the package when the protocol's is missing."""
    import fsspec

    protocol = url.split("://", 1)[0]
    try:  # no listings cache: other processes (workers, other nodes) write here too
        return fsspec.core.url_to_fs(url, use_listings_cache=False)
    except ImportError:
        package = PROTOCOL_PACKAGES.get(protocol, f"the fsspec implementation of {protocol}://")
        raise UserError(
            f"{url}: {protocol}:// needs {package.split('==')[0]}: `pip install {package}` "
            "(make test / make demo install it)"
        ) from None
    except ValueError as e:
        raise UserError(f"{url}: {e}") from None


def isfile(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    fs, p = filesystem(path)
    return fs.isfile(p)


def isdir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    fs, p = filesystem(path)
    return fs.isdir(p)


def size(path: str) -> int:
    if not is_url(path):
        return os.path.getsize(path)
    fs, p = filesystem(path)
    return fs.size(p)


def open(path: str, mode: str = "rb"):  # noqa: A001 - the file-like counterpart of builtins.open
    if not is_url(path):
        return builtins.open(path, mode)
    fs, p = filesystem(path)
    return fs.open(p, mode)


def read_bytes(path: str, start: int | None = None, end: int | None = None) -> bytes:
    """The whole file, or bytes [start, end): one ranged GET on an object store."""
    if not is_url(path):
        with builtins.open(path, "rb") as f:
            if start is None:
                return f.read()
            f.seek(start)
            return f.read(end - start)
    fs, p = filesystem(path)
    return fs.cat_file(p, start=start, end=end)


def read_json(path: str):
    return json.loads(read_bytes(path))


def read_many(paths: list[str]) -> dict[str, bytes]:
    """{path: bytes} of the files that exist (concurrent GETs on an object store); missing ones are left out."""
    remote = [p for p in paths if is_url(p)]
    found: dict[str, bytes] = {}
    if remote:
        fs, _ = filesystem(remote[0])
        stripped = {fs._strip_protocol(p): p for p in remote}
        for key, data in fs.cat(list(stripped), on_error="omit").items():
            if isinstance(data, bytes):
                found[stripped[key]] = data
    for path in paths:
        if not is_url(path) and os.path.isfile(path):
            found[path] = read_bytes(path)
    return found


def list_sizes(folder: str) -> dict[str, int]:
    """{name: bytes} of the files directly inside `folder` (one listing request on an object store)."""
    if not is_url(folder):
        if not os.path.isdir(folder):
            return {}
        return {e.name: e.stat().st_size for e in os.scandir(folder) if e.is_file()}
    fs, p = filesystem(folder)
    try:
        entries = fs.ls(p, detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {posixpath.basename(e["name"]): e["size"] for e in entries if e["type"] == "file"}


def list_files(folder: str) -> list[str]:
    """Paths relative to `folder` ('/'-separated) of every file below it, recursively."""
    if not is_url(folder):
        found = []
        for root, _, names in os.walk(folder, followlinks=True):
            rel = os.path.relpath(root, folder)
            found += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/") for name in names]
        return found
    fs, p = filesystem(folder)
    p = p.rstrip("/")
    return [name[len(p) + 1 :] for name in fs.find(p, withdirs=False)]


def listdir(folder: str) -> list[str]:
    if not is_url(folder):
        return os.listdir(folder)
    fs, p = filesystem(folder)
    return [posixpath.basename(name.rstrip("/")) for name in fs.ls(p, detail=False)]


def makedirs(path: str) -> None:
    if not is_url(path):  # object stores have no folders
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    if not is_url(path):
        if os.path.exists(path):
            os.remove(path)
        return
    fs, p = filesystem(path)
    with contextlib.suppress(FileNotFoundError):  # no such bucket (one request: a missing key is no error)
        fs.rm_file(p)


def rmtree(path: str) -> None:
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = filesystem(path)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(p, recursive=True)


def check_writable(folder: str) -> None:
    """Create `folder` (on a disk) and write and delete a probe in it: raises OSError when it cannot be written."""
    makedirs(folder)
    probe = join(folder, f".probe-{socket.gethostname()}-{os.getpid()}")
    write_atomically(probe, b"")
    remove(probe)


def write_atomically(path: str, data: bytes | str) -> None:
    """Whole or absent: a local temporary renamed into place, or one PUT to an object store."""
    data = data.encode() if isinstance(data, str) else data
    if is_url(path):
        fs, p = filesystem(path)
        fs.pipe_file(p, data)
        return
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"  # unique across the nodes of a cluster
    try:
        with builtins.open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_temporaries(*folders: str) -> None:
    """Delete `*.tmp-*` files a killed run left in local folders (object stores never hold partial objects)."""
    for folder in folders:
        if not is_url(folder):
            for path in globlib.glob(os.path.join(folder, "*.tmp-*")):
                os.remove(path)


class HashingReader:
    """A read-only file object that feeds everything read through sha256: one pass both uses and checks the bytes."""

    def __init__(self, f):
        self.f, self.digest, self.bytes = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> str:
        """Read the rest; the sha256 of everything, as hex."""
        while self.read(1 << 22):
            pass
        return self.digest.hexdigest()


def npy_bytes(array: np.ndarray) -> bytes:
    """.npy file content; written with write_atomically (np.save hides the errno of a full disk)."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def load_npy(path: str) -> np.ndarray:
    return np.load(io.BytesIO(read_bytes(path)))


def init_worker_process() -> None:
    """Pool initializer: Ctrl-C goes to the parent, which stops the pool and removes half-written files."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_worker()


def tune_worker() -> None:
    """What every shard worker process needs, in a local pool or on a Dask worker (idempotent, cheap):
    - one image at a time: torch's resize would otherwise start a thread per core in each worker process (set
      now if torch is imported, else through the variable its OpenMP runtime reads when imported, on the first
      resize);
    - glibc's malloc as in a plain process. Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, and
      setting any malloc threshold turns off glibc's dynamic mmap threshold: every image-sized buffer (over
      128 KiB) is then mmapped and unmapped again, page faults included, which slows a worker down
      (docs/benchmarks.md). Fixed thresholds above our buffers' sizes give the speed back."""
    if "torch" in sys.modules:  # verify and stats never import it
        sys.modules["torch"].set_num_threads(1)
    else:
        os.environ["OMP_NUM_THREADS"] = "1"
    global _malloc_tuned
    if _malloc_tuned or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    _malloc_tuned = True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to undo
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)


_malloc_tuned = False
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)

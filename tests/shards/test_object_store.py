"""Sources and shards on object storage, against two independent S3 servers on 127.0.0.1: moto_server and
`rclone serve s3` (the `s3` fixture runs a test on each; `moto_s3` marks a test that needs moto, and says why).

Every store command runs once as a user runs it, in a subprocess, on both servers: it must succeed without a
traceback or an asyncio "Task exception was never retrieved" (what a forked worker closing its parent's s3fs
session printed against rclone, whose connections stay open)."""

import gzip
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from servers import ROOT, s3_env
from stores import local_files, remote_files, run_clean, s3fs_, upload

import cli
import shards
from shards.convert import ShardConfig, convert
from shards.demo_data import make_sample_tree
from shards.errors import UserError
from shards.verify import find_problems

pytestmark = pytest.mark.slow


def shard(src, out, **kw):
    return convert(ShardConfig(src=str(src), out=str(out), shard_size=40, workers=2, progress=False, **kw))


def shard_cli(src, out):
    return run_clean("cli.py", "shard", "--src", str(src), "--out", str(out), "--shard-size", "40", "--workers", "2")


def test_shard_local_to_s3_is_byte_identical(sample_tree, sample_shards, s3):
    shard_cli(sample_tree, f"{s3}/wds")
    remote, local = remote_files(f"{s3}/wds"), local_files(sample_shards)
    assert sorted(remote) == sorted(local) and len(local) > 10
    for name in local:
        assert remote[name] == local[name], name
    assert find_problems(f"{s3}/wds") == []  # a fork pool of this process, which has used the store already


def test_shard_s3_to_local_is_byte_identical(sample_tree, sample_shards, s3, tmp_path):
    upload(sample_tree, f"{s3}/imagenet")
    shard_cli(f"{s3}/imagenet/", tmp_path / "wds")  # the workers, forked after the driver listed SRC, read it
    assert local_files(tmp_path / "wds") == local_files(sample_shards)


def test_tarballs_read_from_s3_by_byte_range(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tars = make_sample_tree(
        str(tmp_path / "tars"), layout="tars", num_classes=3, train_per_class=4, val_per_class=2, seed=3
    )
    upload(tars, f"{s3}/ilsvrc")
    from_s3 = shard(f"{s3}/ilsvrc", tmp_path / "from-s3")
    assert from_s3["splits"]["train"]["count"] == 12 and from_s3["splits"]["val"]["count"] == 6
    assert from_s3["splits"]["train"]["shards"][0]["count"] == 12
    shard(tars, tmp_path / "from-disk")  # the members were read by offset from the store, as from the local tars
    assert local_files(tmp_path / "from-s3") == local_files(tmp_path / "from-disk")

    # the header index of each archive is kept under its ETag: a rerun does not read the archives again
    cached = sorted((tmp_path / "cache" / "alexnet-wds" / "archives").iterdir())
    assert len(cached) == 2
    for path in cached:
        index = json.loads(gzip.decompress(path.read_bytes()))
        if not index["inner"]:  # the val archive: drop one image from its cached index
            index["files"] = [f for f in index["files"] if "00000001" not in f[0]]
            path.write_bytes(gzip.compress(json.dumps(index).encode()))
    with pytest.raises(UserError, match="labels file names 1 images that are not in"):
        shard(f"{s3}/ilsvrc", tmp_path / "again")  # the cached index is what was read


def test_resume_against_the_store_keeps_committed_shards(sample_tree, s3):
    out = f"{s3}/wds"
    first = shard(sample_tree, out)
    fs = s3fs_()
    fs.rm_file(f"{out}/.work/train/train-000003.tar.json"[len("s3://") :])  # as if killed before this commit
    result = CliRunner().invoke(cli.main, ["shard", "--src", sample_tree, "--out", out, "--shard-size", "40"])
    assert result.exit_code == 0, result.output
    assert "train: 4 of 5 shards already finished, 1 to write" in result.output
    assert shards.open(out).manifest == first


def test_verify_on_s3_names_damaged_and_missing_objects(sample_shards, s3):
    out = f"{s3}/wds"
    upload(sample_shards, out)
    assert "OK: 7 shards intact (train 192 images, val 48 images)" in run_clean("cli.py", "verify", "--shards", out)
    fs = s3fs_()
    key = f"{out}/train/train-000001.tar"[len("s3://") :]
    data = bytearray(fs.cat_file(key))
    data[5000] ^= 0xFF
    fs.pipe_file(key, bytes(data))
    fs.rm_file(f"{out}/val/val-000001.tar"[len("s3://") :])
    result = CliRunner().invoke(cli.main, ["verify", "--shards", out])
    assert result.exit_code == 1
    bad = sorted(line for line in result.output.splitlines() if line.startswith("BAD"))
    assert bad == [
        "BAD train/train-000001.tar: sha256 differs from the manifest (altered)",
        "BAD val/val-000001.tar: missing",
    ]


def test_stage_copies_checks_and_resumes(sample_shards, s3, tmp_path):
    out = f"{s3}/wds"
    upload(sample_shards, out)
    dest = tmp_path / "nvme"
    run_clean("cli.py", "stage", "--shards", out, "--to", str(dest))
    assert local_files(dest) == local_files(sample_shards)
    assert CliRunner().invoke(cli.main, ["verify", "--shards", str(dest)]).exit_code == 0
    os.truncate(dest / "train" / "train-000002.tar", 1000)  # a damaged local copy is fetched again, alone
    result = CliRunner().invoke(cli.main, ["stage", "--shards", out, "--to", str(dest)])
    assert result.exit_code == 0, result.output
    size = os.path.getsize(os.path.join(sample_shards, "train", "train-000002.tar"))
    assert f"{size / 1e6:,.1f} MB fetched" in result.output
    assert local_files(dest) == local_files(sample_shards)


def test_stage_refuses_an_object_damaged_on_the_store(sample_shards, s3, tmp_path):
    out = f"{s3}/wds"
    upload(sample_shards, out)
    key = f"{out}/val/val-000000.tar"[len("s3://") :]
    fs = s3fs_()
    fs.pipe_file(key, fs.cat_file(key)[:-512] + b"x" * 512)
    result = CliRunner().invoke(cli.main, ["stage", "--shards", out, "--to", str(tmp_path / "nvme")])
    assert result.exit_code == 2 and "val-000000.tar does not match its manifest sha256" in result.output
    assert not os.path.exists(tmp_path / "nvme" / "dataset.json")  # a half-staged copy never looks finished
    assert not list((tmp_path / "nvme").rglob("val-000000.tar*"))  # the bad copy was removed, not renamed


API_SCRIPT = """
import json, sys
import torch
import shards
ds = shards.open(sys.argv[1])
loader = torch.utils.data.DataLoader(shards.webdataset(sys.argv[1], "val"), batch_size=None, num_workers=2)
labels = sorted(label for _, label in loader)  # two forked workers share the shards out between them
shape = ds.mean_image().shape
print(json.dumps({"classes": ds.classes, "count": ds.stats.count, "mean_image": shape, "labels": labels}))
"""


def test_api_streams_from_s3(sample_shards, s3):
    out = f"{s3}/wds"
    upload(sample_shards, out)
    got = json.loads(run_clean("-c", API_SCRIPT, out))
    local = shards.open(sample_shards)
    assert got["classes"] == local.classes and got["count"] == 192 and got["mean_image"] == [256, 256, 3]
    assert got["labels"] == sorted(label for _, label in shards.webdataset(sample_shards, "val"))
    assert len(got["labels"]) == 48
    assert shards.open(out).urls("val")[0].startswith("s3://")


def test_stats_recompute_reads_s3(sample_shards, s3):
    out = f"{s3}/wds"
    upload(sample_shards, out)
    printed = run_clean("cli.py", "stats", "--shards", out, "--recompute", "--workers", "2")
    assert "training images: 192" in printed and f"written to {out}/stats.json" in printed
    recomputed = shards.open(out).stats
    assert abs(recomputed.mean - shards.open(sample_shards).stats.mean).max() < 1e-9


@pytest.mark.parametrize("s3", ["rclone"], indirect=True)  # on moto: test_streaming's fault-mix test, the same
def test_train_and_eval_read_from_s3(sample_shards, s3, tmp_path):  # commands run clean through moto and its faults
    out = f"{s3}/wds"
    upload(sample_shards, out)
    cache, run = {"XDG_CACHE_HOME": str(tmp_path / "cache")}, str(tmp_path / "run")
    train = ["train", "--shards", out, "--out", run, "--gpus", "0", "--batch-size", "8", "--max-steps", "2"]
    run_clean("cli.py", *train, "--log-every", "1", "--lr", "0.001", **cache)
    assert os.path.isfile(tmp_path / "run" / "checkpoint.pt")
    (folder,) = (tmp_path / "cache" / "alexnet-wds" / "shards").iterdir()  # the one dataset's shard cache
    cached = sorted(p.suffix for p in folder.iterdir() if p.suffix in (".tar", ".idx"))  # fetched once, by sha256
    assert cached == [".idx"] * 7 + [".tar"] * 7  # 5 train + 2 val shards (the run evaluates at its end)
    printed = run_clean(
        "cli.py",
        "eval",
        "--shards",
        out,
        "--checkpoint",
        f"{run}/checkpoint.pt",
        "--gpus",
        "0",
        "--batch-size",
        "16",
        "--json",
        **cache,
    )
    result = json.loads(printed.strip().splitlines()[-1])
    assert result["count"] == 48, printed


def test_preview_reads_s3(sample_shards, s3, tmp_path):
    out = f"{s3}/wds"
    upload(sample_shards, out)
    run_clean("cli.py", "preview", "--shards", out, "--out", str(tmp_path / "p.png"), "--n", "8")
    assert os.path.getsize(tmp_path / "p.png") > 10_000


def one_line_error(args, env):
    run = subprocess.run(
        [sys.executable, "cli.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stdout + run.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in run.stderr, run.stderr
    return lines[0]


@pytest.mark.parametrize("s3", ["rclone"], indirect=True)
def test_a_range_with_the_whole_objects_checksum_is_one_line(sample_shards, s3, monkeypatch):
    """rclone serve s3 1.75 sends the whole object's checksum with a byte range: without the setting for such a
    store, the line names the object, says what botocore found, and names the setting."""
    from s3fs import S3FileSystem

    from shards import io as store

    out = f"{s3}/wds"
    upload(sample_shards, out)
    monkeypatch.delenv("AWS_RESPONSE_CHECKSUM_VALIDATION")
    S3FileSystem.clear_instance_cache()
    url = f"{out}/train/train-000000.tar"
    assert len(store.read_bytes(url)) == os.path.getsize(f"{sample_shards}/train/train-000000.tar")  # whole: fine
    with pytest.raises(store.StoreError) as e:
        store.read_bytes(url, 512, 1024)
    assert str(e.value).startswith(f"reading {url} failed: Expected checksum ")
    assert "AWS_RESPONSE_CHECKSUM_VALIDATION=when_required" in str(e.value) and "verify" not in str(e.value)


def test_missing_bucket_is_one_line(sample_tree, s3_endpoint):
    # one server is enough for the words of these lines (botocore's and ours); moto's endpoint stands for any
    env = {**os.environ, **s3_env(s3_endpoint)}
    line = one_line_error(["shard", "--src", sample_tree, "--out", "s3://no-such-bucket/wds"], env)
    assert "cannot write to --out s3://no-such-bucket/wds" in line and "bucket does not exist" in line
    line = one_line_error(["shard", "--src", "s3://no-such-bucket/imagenet", "--out", "/tmp/x"], env)
    assert "--src s3://no-such-bucket/imagenet does not exist" in line


def test_missing_credentials_is_one_line(sample_tree, s3_endpoint, tmp_path):
    env = {
        k: v
        for k, v in {**os.environ, **s3_env(s3_endpoint)}.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE")
    }
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    line = one_line_error(["verify", "--shards", "s3://some-bucket/wds"], env)
    assert "no credentials for the object store" in line and "AWS_ACCESS_KEY_ID" in line


def test_s3_url_without_s3fs_is_one_line(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "s3fs.py").write_text("raise ImportError('No module named s3fs')\n")  # as if not installed
    env = {**os.environ, "PYTHONPATH": f"{blocked}:{ROOT}"}
    line = one_line_error(["verify", "--shards", "s3://some-bucket/wds"], env)
    assert "s3:// needs s3fs" in line and "pip install 'alexnet-wds[s3]'" in line


def test_out_on_a_read_only_prefix_is_one_line(sample_tree):
    """A server that enforces IAM after its first 4 requests: a user who may read the bucket but write only rw/.
    moto only: rclone serve s3 has no IAM policies."""
    import json

    import boto3
    from servers import start_moto, stop

    proc, endpoint = start_moto(env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        admin = {**os.environ, **s3_env(endpoint)}
        session = boto3.session.Session(
            aws_access_key_id="admin", aws_secret_access_key="admin", region_name="us-east-1"
        )
        session.client("s3", endpoint_url=endpoint).create_bucket(Bucket="corp-shards")
        iam = session.client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="reader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:*"],
                    "Resource": ["arn:aws:s3:::corp-shards", "arn:aws:s3:::corp-shards/rw/*"],
                },
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:ListBucket"],
                    "Resource": ["arn:aws:s3:::corp-shards/*"],
                },
            ],
        }
        iam.put_user_policy(UserName="reader", PolicyName="read-only-but-rw", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        env = {**admin, "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        line = one_line_error(["shard", "--src", sample_tree, "--out", "s3://corp-shards/ro/wds"], env)
    finally:
        stop(proc)
    assert line == "error: cannot write to --out s3://corp-shards/ro/wds: Access Denied"

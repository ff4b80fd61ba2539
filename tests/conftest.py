"""Shared fixtures: small ImageNet-shaped trees from real photographs, and shards made from them."""

from __future__ import annotations

import os

import pytest

from shards.convert import ShardConfig, convert
from shards.demo_data import make_sample_tree

SAMPLE = dict(num_classes=8, train_per_class=24, val_per_class=6, seed=0)
SAMPLE_SHARD_SIZE = 40  # 192 train -> 5 shards (40 x 4 + 32); 48 val -> 2 shards (40 + 8): uneven on purpose


# The files whose tests run whole training processes go first: `make test` hands files to its parallel workers
# in collection order (pytest-xdist --dist loadfile), and one of these last would leave the other workers idle.
LONG_FIRST = ("trainer/test_preempt.py", "bench/test_gpu_check.py", "pipelines/test_streaming.py", "trainer/")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.path.as_posix()
        return next((i for i, part in enumerate(LONG_FIRST) if f"/tests/{part}" in path), len(LONG_FIRST))

    items.sort(key=rank)  # stable: within a file, and among the rest, the usual order
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_tree(tmp_path_factory) -> str:
    """ImageFolder layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (8 classes, 24 + 6 images each)."""
    return make_sample_tree(str(tmp_path_factory.mktemp("imagenet")), **SAMPLE)


@pytest.fixture(scope="session")
def sample_shards(sample_tree, tmp_path_factory) -> str:
    """A finished shard directory of `sample_tree` (read-only for tests: copy it before changing it)."""
    out = os.path.join(str(tmp_path_factory.mktemp("wds")), "imagenet-wds")
    convert(ShardConfig(src=sample_tree, out=out, shard_size=SAMPLE_SHARD_SIZE, workers=2, progress=False))
    return out


@pytest.fixture(scope="session")
def default_shards(sample_tree, tmp_path_factory) -> str:
    """`sample_tree` sharded with the default shard sizes (no --shard-size): read-only for tests."""
    out = os.path.join(str(tmp_path_factory.mktemp("wds-default")), "imagenet-wds")
    convert(ShardConfig(src=sample_tree, out=out, workers=2, progress=False))
    return out


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto_server on a free loopback port, for the whole session."""
    from servers import start_moto, stop

    proc, endpoint = start_moto()
    yield endpoint
    stop(proc)


@pytest.fixture(scope="session")
def rclone_endpoint(tmp_path_factory):
    """`rclone serve s3` over a temporary folder on a free loopback port, for the whole session."""
    from servers import start_rclone, stop

    proc, endpoint = start_rclone(str(tmp_path_factory.mktemp("rclone")))
    yield endpoint
    stop(proc)


@pytest.fixture(scope="session")
def faulty_store():
    """moto behind the seeded fault layer (servers.FaultLayer), for the whole session; rates set per test."""
    from servers import start_faulty_moto

    store = start_faulty_moto(seed=0)
    yield store
    store.close()


def fresh_bucket(endpoint: str, monkeypatch, request, suffix: str = f"-{os.getpid()}", **env: str) -> str:
    """The standard AWS environment pointing at `endpoint` (and `env`), and a new bucket there: 's3://BUCKET',
    named after the test (and `suffix`)."""
    import re

    import fsspec
    from s3fs import S3FileSystem
    from servers import s3_env

    for key, value in {**s3_env(endpoint), **env}.items():
        monkeypatch.setenv(key, value)
    S3FileSystem.clear_instance_cache()  # a cached instance keeps the endpoint of the environment it was made in
    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + suffix
    fsspec.filesystem("s3", use_listings_cache=False).mkdir(bucket)
    return f"s3://{bucket}"


# rclone serve s3 1.75 sends the whole object's x-amz-checksum-crc32 with a byte range (S3 does not; MinIO and
# Ceph stopped doing it), and botocore and DALI's AWS SDK check the range against it: its users must set this
# (docs/object-storage.md). test_object_store.py shows the line a user gets without it.
RCLONE_ENV = {"AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}


@pytest.fixture(params=["moto", "rclone"])
def s3(request, monkeypatch):
    """A fresh bucket on each of two independent S3 servers in turn, moto_server (Python, a new connection per
    request) and `rclone serve s3` (Go, keep-alive connections), with the AWS environment pointing at it."""
    if request.param == "moto":
        return fresh_bucket(request.getfixturevalue("s3_endpoint"), monkeypatch, request)
    return fresh_bucket(request.getfixturevalue("rclone_endpoint"), monkeypatch, request, **RCLONE_ENV)


@pytest.fixture
def moto_s3(s3_endpoint, monkeypatch, request):
    """A fresh bucket on moto_server only: for a test that needs what only moto has, which it says beside it."""
    return fresh_bucket(s3_endpoint, monkeypatch, request)


@pytest.fixture
def faulty_s3(faulty_store, monkeypatch, request):
    """A fresh bucket behind the fault layer, with the AWS environment pointing at it and all rates 0 and counts
    cleared: `.url` ('s3://BUCKET'), `.store` (servers.FaultyStore: configure(**rates), counts(), ...)."""
    from types import SimpleNamespace

    faulty_store.configure(latency=0, slowdown=0, internal=0, reset=0, short=0, match="")
    # the same name in every run: the faults drawn for its keys are the same in every run too
    url = fresh_bucket(faulty_store.endpoint, monkeypatch, request, suffix="")
    faulty_store.reset_counts()
    return SimpleNamespace(url=url, store=faulty_store)


@pytest.fixture(scope="session")
def dask_cluster():
    """A Dask scheduler and two single-thread workers as subprocesses on 127.0.0.1."""
    from servers import DaskCluster

    cluster = DaskCluster(workers=2)
    yield cluster
    cluster.close()

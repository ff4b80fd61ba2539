"""Shared fixtures: small ImageNet-shaped trees from real photographs, and shards made from them."""

from __future__ import annotations

import os

import pytest

from shards.convert import ShardConfig, convert
from shards.demo_data import make_sample_tree

SAMPLE = dict(num_classes=8, train_per_class=24, val_per_class=6, seed=0)
SAMPLE_SHARD_SIZE = 40  # 192 train -> 5 shards (40 x 4 + 32); 48 val -> 2 shards (40 + 8): uneven on purpose


def pytest_collection_modifyitems(config, items):
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
    """A real S3-compatible server (moto_server) on a free loopback port, for the whole session."""
    from servers import start_moto, stop

    proc, endpoint = start_moto()
    yield endpoint
    stop(proc)


@pytest.fixture
def s3(s3_endpoint, monkeypatch, request):
    """The standard AWS environment pointing at the local server, and a fresh bucket: returns 's3://BUCKET'."""
    import re

    import fsspec
    from servers import s3_env

    for key, value in s3_env(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + f"-{os.getpid()}"
    fs = fsspec.filesystem("s3", use_listings_cache=False)
    fs.mkdir(bucket)
    return f"s3://{bucket}"


@pytest.fixture(scope="session")
def dask_cluster():
    """A Dask scheduler and two single-thread workers as subprocesses on 127.0.0.1."""
    from servers import DaskCluster

    cluster = DaskCluster(workers=2)
    yield cluster
    cluster.close()

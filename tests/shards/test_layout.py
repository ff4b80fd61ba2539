"""Default shard sizes every reader can split, and the compact partial sums of the training shards."""

import os

import numpy as np
import pytest

import shards
from shards.convert import ShardConfig, convert
from shards.layout import chunk, compact_sum_bytes, default_shard_count, load_sum


@pytest.mark.parametrize(
    "count, shards_, largest",
    [(0, 0, 0), (10, 1, 10), (48, 3, 16), (192, 12, 16), (1040, 64, 17), (50_000, 64, 782), (1_281_167, 1282, 1000)],
)
def test_default_chunks(count, shards_, largest):
    chunks = chunk(list(range(count)), None)
    assert len(chunks) == shards_ and max(map(len, chunks), default=0) == largest
    assert [i for c in chunks for i in c] == list(range(count))  # every item once, in order
    assert max(map(len, chunks), default=0) - min(map(len, chunks), default=0) <= 1
    if count:
        assert default_shard_count(count) == shards_


def test_explicit_shard_size_still_wins():
    assert [len(c) for c in chunk(list(range(95)), 40)] == [40, 40, 15]


def test_default_run_gives_every_split_enough_shards(default_shards, sample_tree, tmp_path):
    ds = shards.open(default_shards)
    assert ds.manifest["params"]["shard_size"] is None
    assert ds.shard_counts("train") == [16] * 12 and ds.shard_counts("val") == [16] * 3
    again = convert(ShardConfig(src=sample_tree, out=str(tmp_path / "again"), workers=1, progress=False))
    assert again["splits"] == ds.manifest["splits"]  # byte-identical, 1 worker vs 2


def test_two_worker_dataloader_over_val_with_default_empty_check(default_shards):
    import torch
    import webdataset as wds

    ds = shards.open(default_shards)
    dataset = wds.WebDataset(ds.urls("val"), shardshuffle=False).to_tuple("__key__", "cls")  # default empty_check
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2)
    keys = [k for batch_keys, _ in loader for k in batch_keys]
    assert len(keys) == len(set(keys)) == ds.count("val") == 48


def test_compact_partial_sum_round_trips_and_is_small(default_shards, tmp_path):
    rng = np.random.default_rng(0)
    for images in (16, 1000):
        image_sum = (
            rng.integers(0, 256, (images, 256, 256, 3), np.uint8).sum(0, dtype=np.uint32)
            if images < 100
            else np.full((256, 256, 3), 127 * images, np.uint32) + rng.integers(0, 5000, (256, 256, 3), np.uint32)
        )
        path = tmp_path / f"{images}.sum.npz"
        path.write_bytes(compact_sum_bytes(image_sum))
        restored = load_sum(str(path))
        assert restored.dtype == np.uint32 and (restored == image_sum).all()
        assert os.path.getsize(path) < 0.6 * image_sum.nbytes  # was a 768 KiB .npy, whatever the shard size


def test_partial_sums_written_before_the_raw_low_plane_still_load(tmp_path):
    """A run resumed after an upgrade merges the partial sums its first part wrote, every plane deflated."""
    import zlib

    image_sum = np.random.default_rng(1).integers(0, 40 * 255, (256, 256, 3), np.uint32)
    planes = image_sum.astype(np.uint16).view(np.uint8).reshape(-1, 2).T.copy()
    path = tmp_path / "old.sum.npz"
    with open(path, "wb") as f:
        np.savez(
            f,
            shape=np.array(image_sum.shape),
            itemsize=np.array(2),
            planes=np.frombuffer(zlib.compress(planes.tobytes(), 1), np.uint8),
        )
    restored = load_sum(str(path))
    assert restored.dtype == np.uint32 and (restored == image_sum).all()

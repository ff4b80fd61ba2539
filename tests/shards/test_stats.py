"""Statistics: exact partial-sum merges, and agreement with plain NumPy over the decoded training pixels."""

import io
import json
import os
import shutil

import hard_cases as hc
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
import shards
from shards.stats import PixelSums, finalize


def decoded_training_pixels(root):
    import tarfile

    images = []
    for url in shards.open(root).urls("train"):
        with tarfile.open(url) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")))
    return np.stack(images)


def numpy_stats(images):
    x = images.reshape(-1, 3).astype(np.float64)
    cov = np.cov((x / 255.0).T, bias=True)
    eigval, eigvec = np.linalg.eigh(cov)
    return x.mean(0), x.std(0), eigval[::-1], eigvec[:, ::-1]


def assert_matches_numpy(stats, images):
    mean, std, eigval, eigvec = numpy_stats(images)
    assert stats.count == len(images) and stats.pixels == images.shape[0] * 256 * 256
    np.testing.assert_allclose(stats.mean, mean, atol=0.05)
    np.testing.assert_allclose(stats.std, std, rtol=0.005)
    np.testing.assert_allclose(stats.eigval, eigval, rtol=0.01)
    assert list(stats.eigval) == sorted(stats.eigval, reverse=True)
    for i in range(3):
        assert abs(float(stats.eigvec[:, i] @ eigvec[:, i])) >= 0.999


@pytest.mark.slow
def test_stats_written_while_sharding_match_numpy_over_decoded_pixels(sample_shards):
    images = decoded_training_pixels(sample_shards)
    ds = shards.open(sample_shards)
    assert_matches_numpy(ds.stats, images)
    mean_image = ds.mean_image()
    assert mean_image.shape == (256, 256, 3) and mean_image.dtype == np.float32
    np.testing.assert_allclose(mean_image, images.mean(0), atol=1e-3)


def test_recompute_from_shards(sample_shards, tmp_path):
    root = shutil.copytree(sample_shards, tmp_path / "copy")
    before = shards.open(root).stats
    os.remove(root / "stats.json")
    result = CliRunner().invoke(cli.main, ["stats", "--shards", str(root), "--recompute", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "eigval" in result.output and "mean" in result.output
    after = shards.open(root).stats
    assert_matches_numpy(after, decoded_training_pixels(root))
    for field in ("mean", "std", "cov", "eigval", "eigvec"):  # both decode the same JPEGs with the same decoder
        np.testing.assert_allclose(getattr(after, field), getattr(before, field), rtol=1e-12, atol=1e-15)


def test_partial_sums_merge_exactly_in_any_order():
    sizes = [(64, 48), (48, 64), (40, 40), (90, 30), (300, 260)]  # the last over 66,051 pixels: wider sums
    photos = [np.asarray(hc.photo(size)) for size in sizes]
    parts = []
    for p in photos:
        s = PixelSums()
        s.add(p)
        parts.append(s)
    forward, backward = PixelSums(), PixelSums()
    for s in parts:
        forward = forward.merge(s)
    for s in reversed(parts):
        backward = backward.merge(s)
    assert forward.to_json() == backward.to_json()
    x = np.concatenate([p.reshape(-1, 3) for p in photos]).astype(np.int64)
    assert forward.total == x.sum(0).tolist() and forward.outer == (x.T @ x).tolist()  # integers, exact
    stats = finalize(forward)
    np.testing.assert_allclose(stats["mean"], x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["cov"], np.cov(x.T / 255.0, bias=True), rtol=1e-9, atol=1e-15)


def test_stats_json_is_the_documented_shape(sample_shards):
    with open(os.path.join(sample_shards, "stats.json")) as f:
        stats = json.load(f)
    assert set(stats) >= {"count", "pixels", "mean", "std", "cov", "eigval", "eigvec"}
    vec, val = np.array(stats["eigvec"]), np.array(stats["eigval"])
    np.testing.assert_allclose(np.array(stats["cov"]) @ vec, vec * val, atol=1e-10)  # column i = eigenvector i


def test_stats_without_training_split_is_a_clear_error(sample_tree, tmp_path):
    from shards.convert import ShardConfig, convert

    convert(ShardConfig(src=sample_tree, out=str(tmp_path / "v"), split="val", shard_size=40, progress=False))
    result = CliRunner().invoke(cli.main, ["stats", "--shards", str(tmp_path / "v")])
    assert result.exit_code == 2 and "no training split" in result.output


@pytest.mark.parametrize("missing", ["nowhere", "empty"])
def test_stats_before_shard(tmp_path, missing):
    root = tmp_path / missing
    if missing == "empty":
        root.mkdir()
    result = CliRunner().invoke(cli.main, ["stats", "--shards", str(root)])
    assert result.exit_code == 2 and "cli.py shard" in result.output and "Traceback" not in result.output


def test_statistics_follow_the_shards_when_the_source_grows(sample_tree, tmp_path):
    """Rerun after adding images: some shards change, the merged partials of the others are gone -> recompute."""
    from shards.convert import ShardConfig, convert

    src = shutil.copytree(sample_tree, tmp_path / "src")
    out = str(tmp_path / "wds")
    cfg = ShardConfig(src=str(src), out=out, split="train", shard_size=40, workers=2, progress=False)
    convert(cfg)
    first = shards.open(out).stats
    wnid = sorted(os.listdir(src / "train"))[0]
    for name in sorted(os.listdir(src / "train" / wnid))[:4]:
        shutil.copy(src / "train" / wnid / name, src / "train" / wnid / f"extra_{name}")
    convert(cfg)
    after = shards.open(out).stats
    assert first.count == 192 and after.count == 196
    assert_matches_numpy(after, decoded_training_pixels(out))
    result = CliRunner().invoke(cli.main, ["stats", "--shards", out])
    assert result.exit_code == 0 and "computing" not in result.output  # fresh: printed, not recomputed

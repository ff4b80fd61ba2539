"""pipelines.reference (pure NumPy) on its own, and the DALI graph held against it pixel by pixel."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import pipelines
import shards
from pipelines import reference as ref

CROP, SIZE = 227, 256


# ------------------------------------------------------------------------------------------------ pure functions
def test_crop_box_places_windows_like_dali():
    assert ref.crop_box(SIZE, SIZE, CROP, 0.0, 0.0) == (0, 0)
    assert ref.crop_box(SIZE, SIZE, CROP, 1.0, 1.0) == (29, 29)
    assert ref.center_box(SIZE, SIZE, CROP) == (15, 15)  # round half up: 14.5 -> 15
    assert ref.crop_box(300, 256, CROP, 0.25, 1.0) == (73, 7)  # (top, left): pos_y over 300 - 227, pos_x over 29
    # the pipeline draws pos = k / 29: every integer offset, exactly
    assert [ref.crop_box(SIZE, SIZE, CROP, k / 29, k / 29)[0] for k in range(30)] == list(range(30))


def test_ten_crop_boxes_are_corners_centre_and_mirrors():
    boxes = ref.ten_crop_boxes(SIZE, SIZE, CROP)
    assert len(boxes) == 10
    assert [b[:2] for b in boxes[:5]] == [(0, 0), (0, 29), (29, 0), (29, 29), (15, 15)]
    assert [b[:2] for b in boxes[5:]] == [b[:2] for b in boxes[:5]]
    assert [b[2] for b in boxes] == [False] * 5 + [True] * 5
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    views = ref.ten_crop_views(image, np.zeros(3))
    assert views.shape == (10, 3, CROP, CROP)
    np.testing.assert_array_equal(views[5], views[0][:, :, ::-1])  # a mirror flips the width axis
    np.testing.assert_array_equal(views[3], image[29:, 29:].transpose(2, 0, 1))  # bottom-right corner


def test_lighting_offset_is_eigvec_times_alpha_eigval():
    rng = np.random.default_rng(1)
    eigvec = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    eigval, alpha = np.array([0.2, 0.03, 0.002]), np.array([0.1, -0.2, 0.05])
    expected = sum(alpha[i] * eigval[i] * eigvec[:, i] for i in range(3)) * 255
    np.testing.assert_allclose(ref.lighting_offset(alpha, eigval, eigvec), expected)
    np.testing.assert_array_equal(ref.lighting_offset(np.zeros(3), eigval, eigvec), np.zeros(3))


def test_view_subtracts_mean_image_before_crop_and_flip():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    mean_image = rng.uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32)
    out = ref.view(image, 3, 7, CROP, True, mean_image, std=np.array([2.0, 4.0, 8.0]), offset=np.array([1.0, 2, 3]))
    window = image[3 : 3 + CROP, 7 : 7 + CROP].astype(np.float32) - mean_image[3 : 3 + CROP, 7 : 7 + CROP]
    expected = ((window[:, ::-1] + [1, 2, 3]) / [2, 4, 8]).transpose(2, 0, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-4)
    assert out.dtype == np.float32 and out.flags.c_contiguous


def test_random_crop_offsets_reach_every_position():
    rng = np.random.default_rng(3)
    offsets = {ref.random_crop_offsets(rng, SIZE, SIZE, CROP)[0] for _ in range(2000)}
    assert offsets == set(range(30))


def test_denormalize_inverts_view():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    mean, std = np.array([120.0, 110, 100]), np.array([60.0, 50, 40])
    out = ref.center_view(image, mean, std=std)
    np.testing.assert_array_equal(ref.denormalize(out, mean, std), image[15 : 15 + CROP, 15 : 15 + CROP])


# ------------------------------------------------------------------------------------------------ DALI == reference
def source_images(root: str, split: str, n: int) -> list[tuple[np.ndarray, int]]:
    """The first n samples of a split in shard order, decoded by PIL (the reference decoder)."""
    return [(np.asarray(image), label) for image, label in itertools.islice(shards.webdataset(root, split), n)]


@pytest.mark.parametrize("mean,std", [("channel", True), ("image", False)])
def test_dali_train_view_equals_reference(sample_shards, mean, std):
    """Same window, flip and alpha as DALI drew -> the same pixels (DALI's CPU decoder is libjpeg-turbo like PIL)."""
    ds = shards.open(sample_shards)
    loader = pipelines.build_loader(
        sample_shards,
        "train",
        batch_size=8,
        device="cpu",
        num_threads=1,
        shuffle_buffer=0,
        with_params=True,
        mean=mean,
        std=std,
    )
    images, labels, params = next(iter(loader))
    mean_values = ds.mean_image() if mean == "image" else ds.stats.mean
    for i, (image, label) in enumerate(source_images(sample_shards, "train", 8)):
        assert int(labels[i]) == label
        top, left = ref.crop_box(*image.shape[:2], CROP, float(params["crop_x"][i]), float(params["crop_y"][i]))
        offset = ref.lighting_offset(params["alpha"][i].numpy(), ds.stats.eigval, ds.stats.eigvec)
        expected = ref.view(
            image, top, left, CROP, bool(params["mirror"][i]), mean_values, ds.stats.std if std else None, offset
        )
        np.testing.assert_allclose(images[i].numpy(), expected, atol=1e-3)


def test_dali_center_and_ten_crop_equal_reference(sample_shards):
    ds = shards.open(sample_shards)
    samples = source_images(sample_shards, "val", 4)
    center = pipelines.build_loader(sample_shards, "val", batch_size=4, device="cpu", num_threads=1, mean="channel")
    ten = pipelines.build_loader(
        sample_shards, "val", batch_size=4, device="cpu", num_threads=1, mode="ten_crop", mean="image"
    )
    (c_images, c_labels), (t_images, t_labels) = next(iter(center)), next(iter(ten))
    assert t_images.shape == (4, 10, 3, CROP, CROP)
    for i, (image, label) in enumerate(samples):
        assert int(c_labels[i]) == int(t_labels[i]) == label
        np.testing.assert_allclose(c_images[i].numpy(), ref.center_view(image, ds.stats.mean), atol=1e-3)
        np.testing.assert_allclose(t_images[i].numpy(), ref.ten_crop_views(image, ds.mean_image()), atol=1e-3)


def test_dali_random_draws_have_the_papers_statistics(sample_shards):
    """Over two epochs: alpha ~ N(0, 0.1^2), flips ~ 1/2, every window offset, and the offsets actually added to
    the pixels have the covariance of the reference lighting (sigma^2 W W^T, W = eigvec * eigval * 255)."""
    ds = shards.open(sample_shards)
    loader = pipelines.build_loader(
        sample_shards,
        "train",
        batch_size=32,
        device="cpu",
        num_threads=1,
        shuffle_buffer=0,
        with_params=True,
        mean="channel",
    )
    sources = dict(_train_images_by_source(sample_shards))
    alphas, flips, xs, offsets = [], [], [], []
    for _ in range(2):
        for images, labels, p in loader:
            alphas.append(p["alpha"].numpy())
            flips.append(p["mirror"].numpy())
            xs.append(np.rint(p["crop_x"].numpy() * 29))
            for i in range(len(labels)):  # the offset DALI added = its output - the unlit reference view
                image = sources[json.loads(bytes(p["meta"][i].numpy()).decode())["source"]]
                top, left = ref.crop_box(SIZE, SIZE, CROP, float(p["crop_x"][i]), float(p["crop_y"][i]))
                unlit = ref.view(image, top, left, CROP, bool(p["mirror"][i]), ds.stats.mean)
                offsets.append((images[i].numpy() - unlit).mean(axis=(1, 2)))
    alphas, flips, xs, offsets = np.concatenate(alphas), np.concatenate(flips), np.concatenate(xs), np.array(offsets)
    assert alphas.shape == (2 * 192, 3)
    assert abs(alphas.mean()) < 0.015 and abs(alphas.std() - 0.1) < 0.01
    assert 0.4 < flips.mean() < 0.6
    assert set(xs.astype(int)) <= set(range(30)) and {0, 29} <= set(xs.astype(int))
    w = ds.stats.eigvec * ds.stats.eigval[None, :] * 255
    expected_cov = 0.1**2 * w @ w.T
    cov = np.cov(offsets.T)
    assert np.abs(cov - expected_cov).max() < 0.35 * np.abs(expected_cov).max()
    np.testing.assert_allclose(cov[0, 0], expected_cov[0, 0], rtol=0.35)


def _train_images_by_source(root: str):
    """(source path from the json component, PIL-decoded image) of every training sample."""
    import io

    import webdataset as wds
    from PIL import Image

    for sample in wds.WebDataset(shards.open(root).urls("train"), shardshuffle=False, empty_check=False):
        yield json.loads(sample["json"])["source"], np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))


@pytest.mark.gpu
def test_gpu_views_match_cpu_within_decoder_tolerance(sample_shards):
    """nvJPEG's IDCT differs from libjpeg-turbo by a few levels per pixel; the windows must be the same."""
    kw = dict(batch_size=8, num_threads=2, mean="channel", with_params=True)
    cpu = pipelines.build_loader(sample_shards, "val", device="cpu", **kw)
    gpu = pipelines.build_loader(sample_shards, "val", device="cuda", **kw)
    (c, cl, _), (g, gl, _) = next(iter(cpu)), next(iter(gpu))
    assert g.is_cuda and gl.is_cuda and torch.equal(cl, gl.cpu())
    diff = (g.cpu() - c).abs()
    assert diff.mean() < 1.5 and diff.max() < 40

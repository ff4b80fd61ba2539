"""The AlexNet input pipeline as a DALI graph (Krizhevsky et al. 2012, Sec. 2 and 4.1), defined once for CPU and GPU.

Stages, each one small function: the batch from `pipelines.source` (JPEG bytes, labels, random view
parameters) -> decode -> views (random crop + flip + lighting for
training; centre crop; ten crops) -> mean subtraction and layout, fused into `fn.crop_mirror_normalize`.
Layout: CHW on the CPU; HWC on the GPU, which the loader hands out as a channels_last NCHW view
(`permute(0, 3, 1, 2)`, no copy).
`pipelines/reference.py` is the plain NumPy version of the same arithmetic; tests hold the two together.
"""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from .config import PipelineConfig

OUTPUTS = ("images", "labels")
PARAM_OUTPUTS = ("crop_x", "crop_y", "mirror", "alpha")  # with_params, train mode: the random draws per image
META_BYTES = 512  # with_params: the sample's json component, space-padded to a fixed size (a batch is one tensor)
DALI_DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16, "bfloat16": types.FLOAT}  # bf16: cast by torch


@pipeline_def
def alexnet_pipeline(source, cfg: PipelineConfig, norm: dict, gpu: bool, with_params: bool = False):
    """One graph for every mode and device. `source` (pipelines.source.BatchSource) hands over each batch's
    encoded JPEGs, labels and random view parameters; `norm` holds the mean/std/lighting constants."""
    names = source_outputs(cfg, with_params)
    batch = dict(zip(names, fn.external_source(source, num_outputs=len(names), batch=True), strict=True))
    images = decode(batch["jpegs"], cfg, gpu)
    if norm["mean_image"] is not None:
        # Sec. 2: the mean image is subtracted before cropping, so every window sees its own part of the mean.
        # (One fused uint8 - float op; cropping the mean image with the same draws and subtracting after the crop
        # adds two float passes over the window: measured slower, see docs/benchmarks.md.)
        images = images - types.Constant(norm["mean_image"], device=images.device)  # uint8 - float32 -> float32
    layout = "HWC" if gpu else "CHW"
    if cfg.mode == "train":
        offset = lighting_offset(batch["alpha"], norm["lighting"])
        out = crop_normalize(images, cfg, norm, layout, batch["crop_x"], batch["crop_y"], batch["mirror"], offset)
    elif cfg.mode == "center":
        out = crop_normalize(images, cfg, norm, layout, 0.5, 0.5, 0)
    else:
        out = ten_crop_normalize(images, cfg, norm, layout)
    labels = batch["labels"]
    return (out, labels.gpu() if gpu else labels, *(batch[name] for name in names[2:] if with_params))


def source_outputs(cfg: PipelineConfig, with_meta: bool) -> tuple[str, ...]:
    """What the source hands over per batch, in this order (see pipelines.source.BatchSource)."""
    return ("jpegs", "labels") + (PARAM_OUTPUTS if cfg.mode == "train" else ()) + (("meta",) if with_meta else ())


def draw_views(rng: np.random.Generator, count: int, cfg: PipelineConfig, image_size: int) -> list[np.ndarray]:
    """Sec. 4.1: a uniformly random crop window, a mirror with p=0.5, and alpha ~ N(0, sigma^2) per component.

    crop_pos k/n with n = image - crop puts the window's corner exactly at pixel k (DALI rounds k/n * n), so each
    of the n+1 offsets is equally likely. Drawn here, per batch from a seeded generator, rather than by DALI's
    random operators: a batch is then a pure function of (seed, rank, epoch, batch), which is what makes a resume
    exact without DALI's pipeline checkpoints.
    """
    n = max(image_size - cfg.crop, 1)
    crop_x = (rng.integers(0, n + 1, count) / n).astype(np.float32)
    crop_y = (rng.integers(0, n + 1, count) / n).astype(np.float32)
    mirror = (rng.random(count) < cfg.flip_prob).astype(np.int32)
    alpha = (rng.normal(0.0, 1.0, (count, 3)) * cfg.lighting_std).astype(np.float32)  # lighting_std 0: off
    return [crop_x, crop_y, mirror, alpha]


def decode(jpegs, cfg: PipelineConfig, gpu: bool):
    """HWC uint8 RGB: nvJPEG (+ the hardware decoder where there is one) on a GPU, libjpeg-turbo on the CPU.

    jpeg_fancy_upsampling: chroma upsampled as libjpeg-turbo does by default, so GPU pixels match the CPU's.
    """
    if gpu:
        return fn.decoders.image(
            jpegs,
            device="mixed",
            output_type=types.RGB,
            hw_decoder_load=cfg.hw_decoder_load,
            jpeg_fancy_upsampling=True,
        )
    return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)


def lighting_offset(alpha, lighting: np.ndarray):
    """Sec. 4.1: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T to every pixel; `lighting` = eigvec * eigval * 255.

    coord_transform computes M @ x for one 3-vector "point" x = alpha, giving the per-image RGB offset.
    """
    point = fn.reshape(alpha, shape=[1, 3])
    return fn.reshape(fn.coord_transform(point, M=lighting.astype(np.float32).ravel().tolist()), shape=[3])


def crop_normalize(images, cfg: PipelineConfig, norm: dict, layout: str, crop_x, crop_y, mirror, offset=None):
    """One fused pass: crop, mirror, (x + offset - mean) / std, HWC -> layout, cast.

    CMN computes (x - mean) / std, so the lighting offset enters as a per-image mean of `mean - offset`.
    """
    mean = norm["channel_mean"]
    if offset is not None:
        mean = types.Constant(np.asarray(mean, np.float32)) - offset
    return fn.crop_mirror_normalize(
        images,
        crop=(cfg.crop, cfg.crop),
        crop_pos_x=crop_x,
        crop_pos_y=crop_y,
        mirror=mirror,
        mean=mean,
        std=norm["channel_std"],
        dtype=DALI_DTYPES[cfg.dtype],
        output_layout=layout,
    )


def ten_crop_normalize(images, cfg: PipelineConfig, norm: dict, layout: str):
    """Sec. 4.1 test time: the four corner and the centre windows, then the same five mirrored -> [10, ...].

    The order is `reference.ten_crop_boxes` (top-left, top-right, bottom-left, bottom-right, centre).
    """
    corners = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5)]
    views = [crop_normalize(images, cfg, norm, layout, x, y, mirror) for mirror in (0, 1) for x, y in corners]
    return fn.stack(*views, axis=0)


def normalization(cfg: PipelineConfig, stats, mean_image: np.ndarray | None) -> dict:
    """The constants the graph needs, from stats.json / mean_image.npy, as plain arrays (0-255 scale)."""
    std = np.asarray(stats.std, np.float32) if cfg.std else np.ones(3, np.float32)
    if cfg.mean == "image":
        channel_mean = np.zeros(3, np.float32)  # the mean image itself is subtracted before the crop
        mean_image = np.ascontiguousarray(mean_image, dtype=np.float32)
    else:
        channel_mean, mean_image = np.asarray(stats.mean, np.float32), None
    lighting = np.asarray(stats.eigvec, np.float64) * np.asarray(stats.eigval, np.float64)[None, :] * 255.0
    return {
        "channel_mean": channel_mean.tolist(),
        "channel_std": std.tolist(),
        "mean_image": mean_image,
        "lighting": lighting,
    }

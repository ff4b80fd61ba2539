"""The AlexNet input pipeline as a DALI graph (Krizhevsky et al. 2012, Sec. 2 and 4.1), defined once for CPU and GPU.

Stages, each one small function: read (jpg + int32 label) -> decode -> views (random crop + flip + lighting for
training; centre crop; ten crops) -> mean subtraction and layout, fused into `fn.crop_mirror_normalize`.
Layout: CHW on the CPU; HWC on the GPU, which the loader hands out as a channels_last NCHW view
(`permute(0, 3, 1, 2)`, no copy).
`pipelines/reference.py` is the plain NumPy version of the same arithmetic; tests hold the two together.
"""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from shards import format as fmt

from .config import PipelineConfig
from .shard_files import SplitFiles

READER = "reader"
OUTPUTS = ("images", "labels")
PARAM_OUTPUTS = ("crop_x", "crop_y", "mirror", "alpha")  # with_params, train mode: the random draws per image
META_BYTES = 512  # with_params: the sample's json component, space-padded to a fixed size (a batch is one tensor)
DALI_DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16, "bfloat16": types.FLOAT}  # bf16: cast by torch


@pipeline_def(enable_checkpointing=True)
def alexnet_pipeline(
    files: SplitFiles, cfg: PipelineConfig, norm: dict, rank: int, world_size: int, gpu: bool, with_params: bool = False
):
    """One graph for every mode and device; `norm` holds mean/std/lighting constants (see `normalization`)."""
    jpegs, labels, meta = read_samples(files, cfg, rank, world_size, with_params)
    images = decode(jpegs, cfg, gpu)
    if norm["mean_image"] is not None:
        # Sec. 2: the mean image is subtracted before cropping, so every window sees its own part of the mean.
        # (One fused uint8 - float op. Cropping the mean image with the same draws and subtracting it after the
        # crop was slower on the CPU: 3-4% in `bench loader`, 3-14% in the pipeline alone - it adds two float
        # passes over the window, and on a GPU more memory traffic per image than this op.)
        images = images - types.Constant(norm["mean_image"], device=images.device)  # uint8 - float32 -> float32
    layout = "HWC" if gpu else "CHW"
    if cfg.mode == "train":
        crop_x, crop_y, mirror, alpha = random_view_params(cfg, files.image_size)
        out = crop_normalize(
            images, cfg, norm, layout, crop_x, crop_y, mirror, lighting_offset(alpha, norm["lighting"])
        )
        params = (crop_x, crop_y, mirror, alpha) if with_params else ()
    elif cfg.mode == "center":
        out, params = crop_normalize(images, cfg, norm, layout, 0.5, 0.5, 0), ()
    else:
        out, params = ten_crop_normalize(images, cfg, norm, layout), ()
    return (out, labels.gpu() if gpu else labels, *((meta,) if with_params else ()), *params)


def read_samples(files: SplitFiles, cfg: PipelineConfig, rank: int, world_size: int, with_meta: bool = False):
    """Raw JPEG bytes, int64 labels (and the json metadata) of this rank's part of the split.

    The label comes from the 4-byte `.lbl` component: DALI reads the ASCII `.cls` as ragged bytes.
    pad_last_batch=True: the reader's epoch ends on a batch boundary (the loader masks or drops the pad), so
    loader epochs and reader epochs stay aligned. Training shuffles through a seeded buffer and moves each rank
    to the next part every epoch (stick_to_shard=False); evaluation reads its part in order, every epoch the same.
    """
    exts = [fmt.IMAGE_EXT, fmt.LABEL_I32_EXT] + [fmt.META_EXT] * with_meta
    dtypes = [types.UINT8, types.INT32, types.UINT8]
    jpegs, labels, *meta = fn.readers.webdataset(
        paths=list(files.urls),
        index_paths=list(files.index_paths),
        ext=exts,
        dtypes=dtypes[: len(exts)],
        missing_component_behavior="error",
        name=READER,
        shard_id=rank,
        num_shards=world_size,
        pad_last_batch=True,
        random_shuffle=not cfg.evaluation and cfg.shuffle_buffer > 1,
        initial_fill=max(cfg.shuffle_buffer, 1),
        stick_to_shard=cfg.evaluation,
    )
    labels = fn.cast(fn.reshape(labels, shape=[]), dtype=types.INT64)
    if not meta:
        return jpegs, labels, None
    # ragged json bytes -> a fixed size, so that a batch converts to one tensor
    return (
        jpegs,
        labels,
        fn.slice(meta[0], start=[0], shape=[META_BYTES], axes=[0], out_of_bounds_policy="pad", fill_values=32),
    )


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


def random_view_params(cfg: PipelineConfig, image_size: int):
    """Sec. 4.1: a uniformly random crop window, a mirror with p=0.5, and alpha ~ N(0, sigma^2) per component.

    crop_pos k/n with n = image - crop puts the window's corner exactly at pixel k (DALI rounds k/n * n), so
    each of the n+1 offsets is equally likely; a continuous U(0,1) would halve the odds of the two edges.
    """
    n = max(image_size - cfg.crop, 1)
    offsets = [k / n for k in range(n + 1)]
    crop_x = fn.random.uniform(values=offsets)
    crop_y = fn.random.uniform(values=offsets)
    mirror = fn.random.coin_flip(probability=cfg.flip_prob)
    alpha = fn.random.normal(shape=[3], stddev=cfg.lighting_std if cfg.lighting_std > 0 else 1.0)
    if cfg.lighting_std == 0:  # lighting off; the draw stays so the RNG streams do not shift
        alpha = alpha * 0.0
    return crop_x, crop_y, mirror, alpha


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

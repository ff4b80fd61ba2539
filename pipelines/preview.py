"""`cli.py preview`: a grid of augmented training crops with their labels - what the network sees."""

from __future__ import annotations

import math
import os

import numpy as np

import shards

from .loader import build_loader
from .reference import denormalize


def write_preview(shards_dir: str, out: str, count: int = 32, seed: int = 0, columns: int = 8, cache=None) -> str:
    """Run the training pipeline on the CPU, undo the normalisation, and save a labelled grid PNG."""
    from shards.errors import UserError

    if count < 1:
        raise UserError(f"--n must be at least 1 (got {count})")
    ds = shards.open(shards_dir)
    count = min(count, ds.count("train"))
    # The paper's training pipeline (mean image, lighting, flips); with_params to undo the mean image exactly.
    loader = build_loader(
        shards_dir,
        split="train",
        batch_size=count,
        device="cpu",
        seed=seed,
        with_params=True,
        shuffle_buffer=min(1024, ds.count("train")),
        cache=cache,
    )
    images, labels, params = next(iter(loader))
    mean_image = ds.mean_image()
    tiles = [
        denormalize(image.numpy(), window_mean(mean_image, params, i, image.shape[-1]))
        for i, image in enumerate(images)
    ]
    from shards.classnames import names_of

    class_names = names_of(ds.manifest)  # "tench", not n01440764 (the wnid when no name is known)
    names = [class_names[int(label)] for label in labels]
    captions = [
        f"{int(label)} {name}" + (" (flipped)" if int(params["mirror"][i]) else "")
        for i, (label, name) in enumerate(zip(labels, names, strict=True))
    ]
    return save_grid(tiles, captions, out, columns)


def window_mean(mean_image: np.ndarray, params: dict, i: int, crop: int) -> np.ndarray:
    """The part of the mean image under sample i's crop window, mirrored like the crop (to add it back)."""
    from .reference import crop_box

    h, w = mean_image.shape[:2]
    top, left = crop_box(h, w, crop, float(params["crop_x"][i]), float(params["crop_y"][i]))
    window = mean_image[top : top + crop, left : left + crop]
    return window[:, ::-1] if int(params["mirror"][i]) else window


def save_grid(tiles: list[np.ndarray], captions: list[str], out: str, columns: int = 8) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile, caption in zip(axes.flat, tiles, captions, strict=False):
        ax.imshow(tile)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(
        "training crops: random 227x227 window, mirror p=0.5, PCA lighting (Krizhevsky et al. 2012)", fontsize=9
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out

"""The AlexNet augmentations in plain NumPy (Krizhevsky et al. 2012, Sec. 2 and 4.1): the reference for the
DALI graph in `augment.py` (tests compare the two pixel by pixel) and the baseline of `cli.py bench loader`.

Pure functions on HWC uint8 RGB images on the 0-255 scale; every random draw is an explicit argument or
comes from the `numpy.random.Generator` passed in. Window placement follows DALI's rounding (see crop_box).
"""

from __future__ import annotations

import numpy as np


def crop_box(height: int, width: int, crop: int, pos_x: float, pos_y: float) -> tuple[int, int]:
    """(top, left) of a crop x crop window at relative position pos in [0, 1] (0 = top/left edge, 1 = the other).

    DALI places the corner at round-half-up(pos * (size - crop)); so does this (the centre of 256 -> 227 is 15,
    where torchvision's round-half-even gives 14).
    """
    top = int(np.floor(np.float32(pos_y) * np.float32(height - crop) + np.float32(0.5)))
    left = int(np.floor(np.float32(pos_x) * np.float32(width - crop) + np.float32(0.5)))
    return top, left


def center_box(height: int, width: int, crop: int) -> tuple[int, int]:
    return crop_box(height, width, crop, 0.5, 0.5)


def ten_crop_boxes(height: int, width: int, crop: int) -> list[tuple[int, int, bool]]:
    """Sec. 4.1 test time: (top, left, mirror) of the four corner windows and the centre, then the same mirrored.

    Order: top-left, top-right, bottom-left, bottom-right, centre; views 5-9 are views 0-4 flipped.
    """
    boxes = [crop_box(height, width, crop, x, y) for x, y in ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5))]
    return [(top, left, mirror) for mirror in (False, True) for top, left in boxes]


def random_crop_offsets(rng: np.random.Generator, height: int, width: int, crop: int) -> tuple[int, int]:
    """Sec. 4.1: a window drawn uniformly from all (size - crop + 1)^2 positions."""
    return int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))


def lighting_offset(alpha: np.ndarray, eigval: np.ndarray, eigvec: np.ndarray) -> np.ndarray:
    """Sec. 4.1 PCA lighting: the RGB offset `eigvec @ (alpha * eigval)` on the 0-255 scale.

    eigval/eigvec are those of the [0,1]-scaled RGB covariance (stats.json), column i = eigenvector i.
    """
    return np.asarray(eigvec, np.float64) @ (np.asarray(alpha, np.float64) * np.asarray(eigval, np.float64)) * 255.0


def draw_alpha(rng: np.random.Generator, sigma: float = 0.1) -> np.ndarray:
    """alpha ~ N(0, sigma^2), one per principal component, drawn once per image (Sec. 4.1: sigma = 0.1)."""
    return rng.normal(0.0, sigma, size=3)


def subtract_mean(image: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """float32 image minus a per-channel mean [3] or the per-pixel mean image [H, W, 3] (Sec. 2)."""
    return image.astype(np.float32) - np.asarray(mean, np.float32)


def crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    return image[top : top + size, left : left + size]


def mirror(image: np.ndarray) -> np.ndarray:
    return image[:, ::-1]


def to_chw(image: np.ndarray, std: np.ndarray | None = None, offset: np.ndarray | None = None) -> np.ndarray:
    """(image + offset) / std, HWC -> CHW float32 (the layout PyTorch convolutions take)."""
    out = image.astype(np.float32, copy=False)
    if offset is not None:
        out = out + np.asarray(offset, np.float32)
    if std is not None:
        out = out / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def view(
    image: np.ndarray,
    top: int,
    left: int,
    size: int,
    flip: bool,
    mean: np.ndarray,
    std: np.ndarray | None = None,
    offset: np.ndarray | None = None,
) -> np.ndarray:
    """One network input: mean subtracted before cropping (so a mean image lines up), crop, flip, lighting, CHW."""
    out = crop(subtract_mean(image, mean), top, left, size)
    return to_chw(mirror(out) if flip else out, std, offset)


def train_view(
    image: np.ndarray,
    rng: np.random.Generator,
    mean: np.ndarray,
    eigval: np.ndarray,
    eigvec: np.ndarray,
    crop_size: int = 227,
    flip_prob: float = 0.5,
    lighting_std: float = 0.1,
    std: np.ndarray | None = None,
) -> np.ndarray:
    """Sec. 4.1 training input: random window, mirror with p=0.5, PCA lighting, mean subtracted -> [3, C, C]."""
    top, left = random_crop_offsets(rng, image.shape[0], image.shape[1], crop_size)
    flip = bool(rng.random() < flip_prob)
    offset = lighting_offset(draw_alpha(rng, lighting_std), eigval, eigvec)
    return view(image, top, left, crop_size, flip, mean, std, offset)


def center_view(image: np.ndarray, mean: np.ndarray, crop_size: int = 227, std: np.ndarray | None = None):
    top, left = center_box(image.shape[0], image.shape[1], crop_size)
    return view(image, top, left, crop_size, False, mean, std)


def ten_crop_views(image: np.ndarray, mean: np.ndarray, crop_size: int = 227, std: np.ndarray | None = None):
    """[10, 3, C, C] in `ten_crop_boxes` order; the evaluator averages the softmax over axis 1 of the batch."""
    boxes = ten_crop_boxes(image.shape[0], image.shape[1], crop_size)
    return np.stack([view(image, top, left, crop_size, flip, mean, std) for top, left, flip in boxes])


def denormalize(chw: np.ndarray, mean: np.ndarray, std: np.ndarray | None = None) -> np.ndarray:
    """Back to a viewable HWC uint8 image: x * std + mean (a mean image must already be cropped/flipped)."""
    image = chw.astype(np.float32).transpose(1, 2, 0)
    if std is not None:
        image = image * np.asarray(std, np.float32)
    return np.clip(np.rint(image + np.asarray(mean, np.float32)), 0, 255).astype(np.uint8)

"""Training-set statistics, the maths only: per-channel mean/std, RGB covariance and its PCA (AlexNet lighting),
mean image. No I/O: stats_command.py reads and writes stats.json and runs `cli.py stats`.

Partial sums are exact integers (merged as Python ints), so merging the sums of many shards in any order gives
bit-identical results. Sec. 4.1 of Krizhevsky et al. 2012: PCA "on the set of RGB pixel values throughout the
ImageNet training set".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import UserError


@dataclass
class PixelSums:
    """Sufficient statistics of a set of RGB images: counts, sum and sum of outer products of pixels."""

    images: int = 0
    pixels: int = 0
    total: list = field(default_factory=lambda: [0, 0, 0])  # sum of R, G, B (ints)
    outer: list = field(default_factory=lambda: [[0] * 3 for _ in range(3)])  # sum of x x^T (ints)
    image_sum: np.ndarray | None = None  # per-pixel sum, HWC

    @classmethod
    def zero(cls, size: int, mean_image: bool) -> PixelSums:
        # uint32 per-pixel sums hold 16.8M images of 255: any shard; merges widen to uint64
        return cls(image_sum=np.zeros((size, size, 3), np.uint32) if mean_image else None)

    def add(self, rgb: np.ndarray) -> None:
        gram, sums = gram_and_sums(rgb)
        self.images += 1
        self.pixels += rgb.size // 3
        self.total = [a + b for a, b in zip(self.total, sums, strict=True)]
        self.outer = [[a + b for a, b in zip(ra, rb, strict=True)] for ra, rb in zip(self.outer, gram, strict=True)]
        if self.image_sum is not None:
            np.add(self.image_sum, rgb, out=self.image_sum)

    def merge(self, other: PixelSums) -> PixelSums:
        image_sum = None
        if self.image_sum is not None and other.image_sum is not None:
            image_sum = self.image_sum.astype(np.uint64) + other.image_sum
        return PixelSums(
            self.images + other.images,
            self.pixels + other.pixels,
            [a + b for a, b in zip(self.total, other.total, strict=True)],
            [[a + b for a, b in zip(ra, rb, strict=True)] for ra, rb in zip(self.outer, other.outer, strict=True)],
            image_sum,
        )

    def to_json(self) -> dict:
        return {"images": self.images, "pixels": self.pixels, "sum": self.total, "outer": self.outer}

    @classmethod
    def from_json(cls, d: dict, image_sum: np.ndarray | None = None) -> PixelSums:
        return cls(d["images"], d["pixels"], list(d["sum"]), [list(r) for r in d["outer"]], image_sum)


PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))  # the distinct entries of x x^T


def gram_and_sums(rgb: np.ndarray) -> tuple[list[list[int]], list[int]]:
    """Exact sum of x x^T (3x3) and of x (3) over the pixels of an RGB uint8 image, as Python ints.

    Integer arithmetic on contiguous channel planes: a product of two uint8 values fits uint16 (255 * 255 < 2**16)
    and the sum of 66,051 of them fits uint32, a 256x256 image's 65,536 products included (uint64 for larger
    images). float64 BLAS would be exact too, but its 3 x n by n x 3 product is slower (docs/benchmarks.md).
    """
    n = rgb.size // 3
    planes = np.ascontiguousarray(rgb.reshape(n, 3).T, dtype=np.uint16)  # R, G, B rows
    products = np.empty((len(PAIRS), n), np.uint16)
    for row, (a, b) in zip(products, PAIRS, strict=True):
        np.multiply(planes[a], planes[b], out=row)
    wide = np.uint32 if n * 255 * 255 < 2**32 else np.uint64
    rr, gg, bb, rg, rb, gb = np.add.reduce(products, axis=1, dtype=wide).tolist()
    sums = np.add.reduce(planes, axis=1, dtype=np.uint64).tolist()
    return [[rr, rg, rb], [rg, gg, gb], [rb, gb, bb]], sums


def finalize(sums: PixelSums) -> dict:
    """stats.json content: mean/std on the 0-255 scale, cov of [0,1]-scaled RGB, eigval (desc) and eigvec."""
    if sums.pixels == 0:
        raise UserError("no training pixels: statistics need a non-empty training split")
    n = sums.pixels
    mean = np.array(sums.total, np.float64) / n
    second = np.array(sums.outer, np.float64) / n
    cov255 = second - np.outer(mean, mean)
    cov = cov255 / 255.0**2
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    eigvec = eigvec * np.where(eigvec.sum(axis=0) < 0, -1.0, 1.0)  # deterministic sign: components sum >= 0
    return {
        "count": sums.images,
        "pixels": n,
        "mean": mean.tolist(),
        "std": np.sqrt(np.diag(cov255)).tolist(),
        "cov": cov.tolist(),
        "eigval": eigval.tolist(),
        "eigvec": eigvec.tolist(),
    }


def mean_image(sums: PixelSums) -> np.ndarray:
    """The paper's mean image (Sec. 2: "subtracting the mean activity over the training set from each pixel")."""
    return (sums.image_sum.astype(np.float64) / max(sums.images, 1)).astype(np.float32)

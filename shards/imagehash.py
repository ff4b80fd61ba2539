"""Per-image fingerprints computed in the shard worker from the 256x256 pixels it already has.

`digest`: the exact content: blake2b-64 of the image's JPEG bytes in the shard. The decoded pixels are a function
of those bytes and the encoder is deterministic (same pixels in, same bytes out), so equal digests = identical
decoded 256x256 images, and the ~23 KB JPEG is several times fewer bytes to hash than the 196 KB of pixels
(costs: docs/benchmarks.md, `python -m bench.worker_cost`).
`phash`: a 64-bit perceptual hash (DCT hash): the image as 32x32 luma (mean of 8x8 pixel blocks: an exact,
antialiased reduction of 256x256), its 2-D DCT-II, the lowest 8x8 frequencies, each bit = coefficient > their
median. Re-encoding, resizing by 10-20% or a slightly different framing flip few bits; different pictures differ
in about half of them. Both as 16 hex characters.
"""

from __future__ import annotations

import hashlib

import numpy as np

HASH_SIZE = 8  # 8x8 low frequencies -> 64 bits
SMALL = 32  # the DCT is taken of a 32x32 reduction
LUMA = np.array([299, 587, 114], np.int64)  # ITU-R 601 weights x 1000: integer luma, the same on every machine


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))


_DCT_LOW = _dct_matrix(SMALL)[:HASH_SIZE]  # only the rows of the low frequencies are ever needed
_DCT_LOW_T = np.ascontiguousarray(_DCT_LOW.T)


def digest(jpeg: bytes) -> str:
    return hashlib.blake2b(jpeg, digest_size=8).hexdigest()


def phash(pixels: np.ndarray) -> str:
    """DCT hash of a SIDE x SIDE RGB image (SIDE = 256 for the shards; any multiple of 32 works)."""
    side = pixels.shape[0]
    if pixels.shape != (side, side, 3) or side % SMALL:
        raise ValueError(f"phash needs a square RGB image with a side divisible by {SMALL}, got {pixels.shape}")
    step = side // SMALL
    rows = np.add.reduce(pixels.reshape(SMALL, step, side * 3), axis=1, dtype=np.uint16)  # 8 rows: <= 2040
    # 32x32 block sums of luma x 1000: integer products and sums < 2**53, so exact in float64 in any order
    luma = rows.reshape(SMALL, SMALL, step * 3).astype(np.float64) @ _luma_weights(step)
    low = (_DCT_LOW @ luma @ _DCT_LOW_T).reshape(-1)  # the 8x8 lowest frequencies
    ranked = np.sort(low)
    return np.packbits(low > (ranked[31] + ranked[32]) / 2).tobytes().hex()  # > median: 32 ones, 32 zeros


_WEIGHTS: dict[int, np.ndarray] = {}


def _luma_weights(step: int) -> np.ndarray:
    if step not in _WEIGHTS:
        _WEIGHTS[step] = np.tile(LUMA, step).astype(np.float64)  # R, G, B weights of `step` interleaved pixels
    return _WEIGHTS[step]


def image_hashes(jpeg: bytes, pixels: np.ndarray) -> dict:
    """The sample json fields: {"digest": 16 hex, "phash": 16 hex} of a shard image (its JPEG and decoded pixels)."""
    return {"digest": digest(jpeg), "phash": phash(pixels)}

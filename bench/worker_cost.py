"""What each step of the shard worker costs per image, and the alternatives measured against them.

    python -m bench.worker_cost [--count IMAGES]

CPU time of one process (not wall time: this machine's neighbours take turns on its cores), best of 3 passes,
over the same ImageNet-like JPEGs (shards.demo_data, 400 by default), read from memory. The figures of
docs/benchmarks.md come from here.
"""

from __future__ import annotations

import tempfile
import time

import click
import numpy as np
from PIL import Image

from shards import io as store
from shards.demo_data import make_sample_tree
from shards.imagehash import digest, phash
from shards.sources import find_splits
from shards.stats import gram_and_sums
from shards.transform import center_crop, decode_jpeg, decode_rgb, encode_jpeg, resize_and_center_crop
from shards.transform import resize_shorter_side as pil_resize
from shards.writer import ShardTask, build_shard, tar_header, tarfile_header


def best_ms(fn, inputs, repeats: int = 3) -> float:
    """CPU milliseconds per input, best of `repeats` passes."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for x in inputs:
            fn(x)
        best = min(best, time.process_time() - start)
    return best / len(inputs) * 1e3


def float64_blas_gram(rgb: np.ndarray) -> np.ndarray:
    x = rgb.reshape(-1, 3).astype(np.float64)
    return x.T @ x  # exact too (sums < 2**53)


def headers(make) -> None:
    for ext in ("jpg", "cls", "lbl", "json"):  # four members per sample
        make(f"n01440764_10026.{ext}", 23_000)


@click.command()
@click.option("--count", type=int, default=400, show_default=True, help="ImageNet-like JPEGs to time.")
def main(count: int) -> None:
    store.tune_worker()  # as in a shard worker: one torch thread
    with tempfile.TemporaryDirectory() as scratch:
        src = make_sample_tree(scratch, train_per_class=-(-count // 8), val_per_class=0)
        items = find_splits(src, "train", None)["train"][:count]
        datas = [it.read() for it in items]
        decoded = [decode_rgb(d, 256)[0] for d in datas]
        resized = [resize_and_center_crop(rgb, 256) for rgb in decoded]
        jpegs = [encode_jpeg(r, 90) for r in resized]
        pixels = [decode_jpeg(j) for j in jpegs]
        task = ShardTask("train", 0, tuple(items), (0,) * len(items), scratch, scratch, 256, 90, "bicubic", True)
        build_shard(task)  # warm-up
        # the whole worker: files, transform, statistics, hashes, tar, index, writes
        worker = best_ms(lambda t: build_shard(t), [task]) / len(items)
    pil = [Image.fromarray(rgb) for rgb in decoded]
    mean_image_sum = np.zeros((256, 256, 3), np.uint32)
    rows = [
        ("decode (libjpeg-turbo, DCT-scaled when >= 2x)", best_ms(lambda d: decode_rgb(d, 256), datas)),
        ("resize + centre crop: torch antialiased uint8", best_ms(lambda r: resize_and_center_crop(r, 256), decoded)),
        ("  alternative: PIL resize, then crop", best_ms(lambda im: center_crop(pil_resize(im, 256), 256), pil)),
        ("encode 256x256 (libjpeg-turbo)", best_ms(lambda r: encode_jpeg(r, 90), resized)),
        ("decode the written JPEG back (statistics)", best_ms(decode_jpeg, jpegs)),
        ("pixel sums: integer channel planes", best_ms(gram_and_sums, pixels)),
        ("  alternative: float64 BLAS X^T X", best_ms(float64_blas_gram, pixels)),
        (
            "per-pixel mean-image sum (uint32 += uint8)",
            best_ms(lambda p: np.add(mean_image_sum, p, out=mean_image_sum), pixels),
        ),
        ("4 tar headers: tarfile's header, filled in", best_ms(lambda _: headers(tar_header), pixels)),
        ("  alternative: a tarfile.TarInfo each", best_ms(lambda _: headers(tarfile_header), pixels)),
        ("digest (blake2b-64 of the JPEG)", best_ms(digest, jpegs)),
        ("phash (DCT hash of the 32x32 luma)", best_ms(phash, pixels)),
    ]
    print(f"shard worker, CPU ms per image, {len(items)} ImageNet-like JPEGs, best of 3")
    for label, ms in rows:
        print(f"  {label:48} {ms:7.3f}")
    print(f"  {'writer.build_shard, everything included':48} {worker:7.3f}")


if __name__ == "__main__":
    main()

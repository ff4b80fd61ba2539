"""What the duplicate fingerprints cost in the shard worker, per image, against the rest of the worker's work.

    python -m bench.hash_cost [--images 400]

Times, on one core over the same ImageNet-like JPEGs (shards.demo_data), the per-image work of writer.build_shard
without the fingerprints (transform: decode, resize, encode, decode back; exact pixel sums; tar member bytes)
and the fingerprints alone (digest, phash), best of 3 passes each.
"""

from __future__ import annotations

import tempfile
import time

import click

from shards.demo_data import make_sample_tree
from shards.imagehash import digest, phash
from shards.io import init_worker_process
from shards.sources import find_splits
from shards.stats import PixelSums
from shards.transform import transform
from shards.writer import TarBuilder, sample_components


def best_of(fn, inputs, repeats=3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for x in inputs:
            fn(x)
        best = min(best, time.perf_counter() - start)
    return best / len(inputs) * 1e3  # ms per image


@click.command()
@click.option("--images", type=int, default=400, show_default=True)
def main(images: int) -> None:
    init_worker_process()  # as in a shard worker: one torch thread
    with tempfile.TemporaryDirectory() as scratch:
        src = make_sample_tree(scratch, train_per_class=-(-images // 8), val_per_class=0)
        datas = [it.read() for it in find_splits(src, "train", None)["train"][:images]]
    outputs = [transform(d) for d in datas]
    jpegs, pixels = [j for j, _, _ in outputs], [p for _, p, _ in outputs]

    def worker(data):
        jpeg, px, (w, h) = transform(data)
        PixelSums.zero(256, True).add(px)
        TarBuilder().add("k", sample_components("k", jpeg, 0, {"wnid": "n0", "width": w, "height": h}))

    rest = best_of(worker, datas)
    rows = [
        ("shard worker per image, without fingerprints", rest),
        ("digest (blake2b-64 of the JPEG bytes)", best_of(digest, jpegs)),
        ("phash (DCT hash, 32x32 luma)", best_of(phash, pixels)),
    ]
    for label, ms in rows:
        print(f"{label:48} {ms:8.3f} ms  {100 * ms / rest:6.2f}%")
    total = rows[1][1] + rows[2][1]
    print(f"{'fingerprints together':48} {total:8.3f} ms  {100 * total / rest:6.2f}% of the worker's time")


if __name__ == "__main__":
    main()

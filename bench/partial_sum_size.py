"""Size of a training shard's partial mean-image sum in OUT/.work/train while a run lasts: the plain .npy written
before, and layout.compact_sum_bytes now, for shards of 16 to 1000 ImageNet-like images (shards.demo_data).

    python -m bench.partial_sum_size
"""

from __future__ import annotations

import io
import random
import tempfile
import time

import numpy as np

from shards.demo_data import make_sample_tree
from shards.layout import compact_sum_bytes
from shards.sources import find_splits
from shards.transform import transform


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        src = make_sample_tree(scratch, train_per_class=125, val_per_class=0)
        items = find_splits(src, "train", None)["train"]
        random.Random(0).shuffle(items)  # a training shard mixes classes
        pixels = [transform(it.read())[1] for it in items[:1000]]
    for count in (16, 64, 250, 1000):
        image_sum = np.zeros((256, 256, 3), np.uint32)
        for p in pixels[:count]:
            image_sum += p
        buf = io.BytesIO()
        np.save(buf, image_sum)
        start = time.perf_counter()
        compact = compact_sum_bytes(image_sum)
        ms = (time.perf_counter() - start) * 1e3
        print(
            f"{count:5d} images: .npy {len(buf.getvalue()):9,} bytes   compact {len(compact):9,} bytes "
            f"({100 * len(compact) / len(buf.getvalue()):.0f}%, {ms:.1f} ms)"
        )


if __name__ == "__main__":
    main()

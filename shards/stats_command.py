"""stats.json and mean_image.npy on disk, and `cli.py stats`: written at the end of `shard` from the shards' exact
partial sums (stats.py does the maths), recomputed from the decoded training shards when stale or asked.
"""

from __future__ import annotations

import hashlib
import json
import tarfile

import numpy as np

from . import format as fmt
from . import io as store
from .duplicates import print_summary as print_duplicate_summary
from .errors import UserError
from .progress import progress_bar
from .stats import PixelSums, finalize, mean_image


def shards_digest(shards: list[dict]) -> str:
    """Identifies the training shards statistics were computed from (their sha256 in order)."""
    return hashlib.sha256("\n".join(s["sha256"] for s in shards).encode()).hexdigest()


def current_stats(root: str, digest: str) -> dict | None:
    """stats.json if it was computed from exactly these shards (and the mean image is there), else None."""
    try:
        stats = store.read_json(store.join(root, fmt.STATS))
    except (OSError, ValueError):
        return None
    fresh = stats.get("shards_digest") == digest and store.isfile(store.join(root, fmt.MEAN_IMAGE))
    return stats if fresh else None


def write_stats(root: str, sums: PixelSums, digest: str) -> dict:
    stats = {**finalize(sums), "shards_digest": digest}
    store.write_atomically(store.join(root, fmt.STATS), json.dumps(stats, indent=2) + "\n")
    if sums.image_sum is not None:
        store.write_atomically(store.join(root, fmt.MEAN_IMAGE), store.npy_bytes(mean_image(sums)))
    return stats


def shard_pixel_sums(args: tuple[str, int]) -> PixelSums:
    """Decode every image of one shard and sum its pixels (for `stats --recompute`), with the decoder that
    sharding used for its own statistics."""
    from .transform import decode_jpeg

    path, size = args
    sums = PixelSums.zero(size, mean_image=True)
    with store.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:  # one sequential read
        for member in tar:
            if member.name.endswith("." + fmt.IMAGE_EXT):
                sums.add(decode_jpeg(tar.extractfile(member).read()))
    return sums


def recompute_stats(root: str, workers: int) -> dict:
    """Statistics from the decoded training shards, in parallel over shards."""
    import multiprocessing as mp

    from .api import ShardSet

    shard_set = ShardSet(root)
    size = shard_set.manifest["params"]["size"]
    total = PixelSums.zero(size, mean_image=True)
    tasks = [(url, size) for url in shard_set.urls("train")]
    with (
        mp.get_context("fork").Pool(max(1, min(workers, len(tasks))), initializer=store.init_worker_process) as pool,
        progress_bar(len(tasks), "stats", "shard") as bar,
    ):
        for part in pool.imap(shard_pixel_sums, tasks):
            total = total.merge(part)
            bar.update()
    return write_stats(root, total, shards_digest(shard_set.shards("train")))


def format_table(stats: dict) -> str:
    rows = [
        f"training images: {stats['count']:,}   pixels: {stats['pixels']:,}",
        f"{'':10}{'R':>10}{'G':>10}{'B':>10}   (0-255 scale)",
        f"{'mean':10}" + "".join(f"{v:10.3f}" for v in stats["mean"]),
        f"{'std':10}" + "".join(f"{v:10.3f}" for v in stats["std"]),
        "PCA of RGB ([0,1] scale), AlexNet lighting: eigvec @ (alpha * eigval), alpha ~ N(0, 0.1^2)",
        f"{'':10}{'eigval':>10}   eigvec (R, G, B)",
    ]
    vecs = np.array(stats["eigvec"])
    for i, val in enumerate(stats["eigval"]):
        rows.append(f"{'pc' + str(i + 1):10}{val:10.5f}   " + " ".join(f"{v:+.4f}" for v in vecs[:, i]))
    return "\n".join(rows)


def stats_command(root: str, recompute: bool = False, workers: int = 1) -> dict:
    """`cli.py stats`: print stats.json as a table (recomputing it from the shards when asked or missing)."""
    from .api import ShardSet

    shard_set = ShardSet(root)  # clear error when the directory is not a finished shard directory
    if "train" not in shard_set.splits:
        raise UserError(
            f"{root} has no training split: statistics are computed over training images "
            f"(cli.py shard --src IMAGENET --out {root} --split train)"
        )
    path = store.join(shard_set.root, fmt.STATS)
    stats = None if recompute else current_stats(root, shards_digest(shard_set.shards("train")))
    if stats is None:  # asked, missing, or computed from other shards than the manifest lists now
        print(f"computing statistics from the decoded training shards of {root} ...")
        stats = recompute_stats(root, workers)
    print(format_table(stats))
    print_duplicate_summary(shard_set.manifest)
    print(f"written to {path}")
    return stats

"""`cli.py verify`: every shard against the manifest (size, sha256, samples, DALI index); extras and leftovers.

Each shard is read once, as a stream: the bytes go through sha256 and tarfile's member walk together, so a shard on
an object store costs one sequential GET. Nothing here imports torch.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tarfile

from . import dali_index
from . import format as fmt
from . import io as store
from .api import ShardSet
from .progress import progress_bar


def check_shard(args: tuple[str, dict]) -> str | None:
    """None when the shard matches its manifest entry, else the reason it does not."""
    path, entry = args
    try:
        size = store.size(path)
    except FileNotFoundError:
        return "missing"
    if size != entry["bytes"]:
        return f"size {size} bytes, manifest says {entry['bytes']} (truncated or altered)"
    images, tar_error = 0, None
    with store.open(path, "rb") as f:
        stream = store.HashingReader(f, path)  # a store's failure mid-read names the shard
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                images = sum(m.name.endswith("." + fmt.IMAGE_EXT) for m in tar)
        except tarfile.TarError as e:
            tar_error = e
        sha256 = stream.drain()
    if sha256 != entry["sha256"]:
        return "sha256 differs from the manifest (altered)"
    if tar_error is not None:
        return f"unreadable tar: {tar_error}"
    if images != entry["count"]:
        return f"{images} images, manifest says {entry['count']}"
    index = dali_index.index_name(path)
    try:
        text = store.read_bytes(index).decode()
    except FileNotFoundError:
        return f"index {store.basename(index)} missing (DALI needs it)"
    problem = dali_index.problem(text, entry["count"], required=fmt.COMPONENTS)
    if problem:
        return f"index {store.basename(index)} does not match the shard: {problem}"
    return None


def find_problems(root: str, workers: int = os.cpu_count() or 1) -> list[tuple[str, str]]:
    """[(shard path, problem)] over every split of the manifest, plus shards the manifest does not list."""
    shard_set = ShardSet(root)
    root = shard_set.root
    jobs = [
        (url, e)
        for split in shard_set.splits
        for url, e in zip(shard_set.urls(split), shard_set.shards(split), strict=True)
    ]
    problems = []
    with (
        mp.get_context("fork").Pool(max(1, min(workers, len(jobs))), initializer=store.init_worker_process) as pool,
        progress_bar(len(jobs), "verify", "shard") as bar,
    ):
        for (path, _), problem in zip(jobs, pool.imap(check_shard, jobs), strict=True):
            bar.update()
            if problem:
                problems.append((path, problem))
    listed = {path for path, _ in jobs}
    for split in fmt.SPLITS:
        for name in sorted(store.list_sizes(store.join(root, split))):
            path = store.join(root, split, name)
            if name.endswith(".tar") and path not in listed:
                problems.append((path, "extra shard, not in the manifest"))
            elif ".tmp-" in name:
                problems.append((path, "unfinished temporary file from an interrupted run (rerun `cli.py shard`)"))
    return problems


def verify_command(root: str) -> bool:
    shard_set = ShardSet(root)
    problems = find_problems(root)
    total = sum(len(shard_set.shards(s)) for s in shard_set.splits)
    for path, problem in problems:
        print(f"BAD {path[len(shard_set.root) + 1 :]}: {problem}")
    if problems:
        print(
            f"{len(problems)} problem(s) in {root}: delete the bad shards and rerun `cli.py shard` with the "
            "same arguments to rewrite them"
        )
        return False
    counts = ", ".join(f"{s} {shard_set.count(s):,} images" for s in shard_set.splits)
    print(f"OK: {total} shards intact ({counts})")
    return True

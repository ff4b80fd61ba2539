"""`cli.py verify`: every shard against the manifest (size, sha256, samples, DALI index); extras and leftovers."""
from __future__ import annotations

import glob
import hashlib
import multiprocessing as mp
import os
import tarfile

from tqdm import tqdm

from . import format as fmt
from .api import ShardSet
from .writer import init_worker_process


def check_shard(args: tuple[str, dict]) -> str | None:
    """None when the shard matches its manifest entry, else the reason it does not."""
    path, entry = args
    if not os.path.isfile(path):
        return "missing"
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        return f"size {size} bytes, manifest says {entry['bytes']} (truncated or altered)"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != entry["sha256"]:
        return "sha256 differs from the manifest (altered)"
    try:
        with tarfile.open(path) as tar:
            images = sum(m.name.endswith("." + fmt.IMAGE_EXT) for m in tar)
    except tarfile.TarError as e:
        return f"unreadable tar: {e}"
    if images != entry["count"]:
        return f"{images} images, manifest says {entry['count']}"
    index = fmt.index_name(path)
    if not os.path.isfile(index):
        return f"index {os.path.basename(index)} missing (DALI needs it)"
    with open(index) as f:
        header = f.readline().split()
    if header[:1] != ["v1.2"] or header[1:2] != [str(entry["count"])]:
        return f"index {os.path.basename(index)} does not match the shard ({' '.join(header)})"
    return None


def find_problems(root: str, workers: int = os.cpu_count() or 1) -> list[tuple[str, str]]:
    """[(shard path, problem)] over every split of the manifest, plus shards the manifest does not list."""
    shard_set = ShardSet(root)
    jobs = [(os.path.join(root, split, e["name"]), e) for split in shard_set.splits for e in shard_set.shards(split)]
    problems = []
    with mp.get_context("fork").Pool(max(1, min(workers, len(jobs))), initializer=init_worker_process) as pool, \
            tqdm(total=len(jobs), desc="verify", unit="shard") as bar:
        for (path, _), problem in zip(jobs, pool.imap(check_shard, jobs)):
            bar.update()
            if problem:
                problems.append((path, problem))
    listed = {path for path, _ in jobs}
    for split in fmt.SPLITS:
        for path in sorted(glob.glob(os.path.join(root, split, "*.tar"))):
            if path not in listed:
                problems.append((path, "extra shard, not in the manifest"))
        for path in sorted(glob.glob(os.path.join(root, split, "*.tmp-*"))):
            problems.append((path, "unfinished temporary file from an interrupted run (rerun `cli.py shard`)"))
    return problems


def verify_command(root: str) -> bool:
    shard_set = ShardSet(root)
    problems = find_problems(root)
    total = sum(len(shard_set.shards(s)) for s in shard_set.splits)
    for path, problem in problems:
        print(f"BAD {os.path.relpath(path, root)}: {problem}")
    if problems:
        print(f"{len(problems)} problem(s) in {root}: delete the bad shards and rerun `cli.py shard` with the "
              "same arguments to rewrite them")
        return False
    counts = ", ".join(f"{s} {shard_set.count(s):,} images" for s in shard_set.splits)
    print(f"OK: {total} shards intact ({counts})")
    return True

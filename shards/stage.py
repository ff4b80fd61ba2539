"""`cli.py stage --shards URL --to DIR`: a parallel, resumable copy of a shard directory to local disk.

Every tar is checked against the manifest's sha256 on the way (streamed through the hash while it is written) and
renamed into place only when whole; files already staged and intact are kept. The manifest is written last, so a
half-staged directory never looks finished, and the result passes `cli.py verify`.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

from . import dali_index
from . import format as fmt
from . import io as store
from .api import ShardSet
from .errors import UserError
from .progress import progress_bar

SIDE_FILES = (fmt.STATS, fmt.MEAN_IMAGE, fmt.TIMM_INFO, "README.md")


def stage(shards: str, to: str, workers: int = 16) -> int:
    """Copy the shard directory `shards` (a URL or a path) to `to`; returns the number of bytes fetched."""
    shard_set = ShardSet(shards)
    to = os.path.abspath(to)
    jobs = []  # (source, destination, size, sha256 or None)
    for split in shard_set.splits:
        remote_sizes = store.list_sizes(store.join(shard_set.root, split))
        os.makedirs(os.path.join(to, split), exist_ok=True)
        for entry in shard_set.shards(split):
            index = dali_index.index_name(entry["name"])
            for name, size, sha in (
                (entry["name"], entry["bytes"], entry["sha256"]),
                (index, remote_sizes.get(index, -1), None),
            ):
                jobs.append((store.join(shard_set.root, split, name), os.path.join(to, split, name), size, sha))
    top = store.list_sizes(shard_set.root)
    jobs += [
        (store.join(shard_set.root, name), os.path.join(to, name), top[name], None)
        for name in SIDE_FILES
        if name in top
    ]
    store.remove_temporaries(to, *(os.path.join(to, s) for s in shard_set.splits))
    fetched = 0
    with ThreadPoolExecutor(max(1, workers)) as pool, progress_bar(len(jobs), "stage", "file") as bar:
        for n in pool.map(_copy, jobs):
            fetched += n
            bar.update()
    store.write_atomically(os.path.join(to, fmt.MANIFEST), store.read_bytes(store.join(shard_set.root, fmt.MANIFEST)))
    print(
        f"staged {shard_set.root} -> {to}: {len(jobs) + 1} files, {fetched / 1e6:,.1f} MB fetched (files already "
        f"there and intact were kept); `cli.py verify --shards {to}` checks it"
    )
    return fetched


def _copy(job: tuple[str, str, int, str | None]) -> int:
    source, dest, size, sha = job
    if _intact(dest, size, sha):
        return 0
    try:
        with store.open(source, "rb") as src, store.atomic_file(dest) as out:
            stream = store.HashingReader(src, source)
            shutil.copyfileobj(stream, out, 1 << 22)
            digest = stream.drain()  # at the end already: the sha256 of what was copied
            if sha is not None and digest != sha:  # raised inside the block: the copy is removed, never renamed
                raise UserError(
                    f"{source} does not match its manifest sha256 (damaged on the store): run "
                    f"`cli.py verify --shards {store.dirname(store.dirname(source))}`"
                )
    except FileNotFoundError:
        raise UserError(f"{source} is missing on the store: run `cli.py verify` on it") from None
    return stream.bytes


def _intact(path: str, size: int, sha: str | None) -> bool:
    if not os.path.isfile(path) or os.path.getsize(path) != size:
        return False
    if sha is None:
        return True
    with open(path, "rb") as f:
        return store.HashingReader(f).drain() == sha

"""What the pipeline will read: the split's shards and index files, checked up front, and each rank's part.

Checks happen here, before anything is read, so a foreign or damaged shard directory is one clear error naming the
shard and sample (a reader would fail later, deep in a worker thread, or read an empty label).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import shards
from shards import dali_index
from shards import format as fmt
from shards import io as store
from shards.errors import UserError

REQUIRED = (fmt.IMAGE_EXT, fmt.LABEL_I32_EXT)  # the pipeline reads jpg and the int32 label (never ASCII .cls)


@dataclass(frozen=True)
class SplitFiles:
    root: str
    split: str
    urls: tuple[str, ...]
    index_paths: tuple[str, ...]  # local files, also for shards on a store (fetched once into the local cache)
    entries: tuple[dict, ...]  # the shards' manifest entries: name, count, bytes, sha256
    image_size: int  # side of the stored square images (manifest params; 256 in the paper)

    @property
    def shard_counts(self) -> tuple[int, ...]:
        return tuple(int(e["count"]) for e in self.entries)

    @property
    def count(self) -> int:
        return sum(self.shard_counts)

    @property
    def bytes(self) -> int:
        return sum(int(e["bytes"]) for e in self.entries)

    @property
    def remote(self) -> bool:
        return store.is_url(self.root)


def split_files(root: str, split: str, index_cache: str | None = None) -> SplitFiles:  # index_cache: for a store
    """The split's shards from the manifest, every one with a readable .idx that lists jpg and lbl per sample.

    The small .idx files of shards on an object store are fetched once (concurrently) into the folder
    `index_cache` (the shard cache's), named by the shard's sha256 so a rewritten shard never meets a stale index."""
    ds = shards.open(root)
    entries = [e for e in ds.shards(split) if e["count"] > 0]  # nothing to read in an empty tar: leave it out
    if not entries:
        raise UserError(f"{root}: the '{split}' split has no samples")
    urls = [store.join(ds.root, split, e["name"]) for e in entries]
    present = store.list_sizes(store.join(ds.root, split))
    for url, entry in zip(urls, entries, strict=True):
        index = dali_index.index_name(url)
        if entry["name"] not in present:
            raise UserError(
                f"{url} is missing: run `cli.py verify --shards {ds.root}` and rerun `cli.py shard` to rewrite it"
            )
        if dali_index.index_name(entry["name"]) not in present:
            raise UserError(
                f"{url} has no DALI index {store.basename(index)}: make it with "
                f"`wds2idx {url} {index}` (from nvidia-dali) or rerun `cli.py shard`"
            )
    indexes = [dali_index.index_name(url) for url in urls]
    if store.is_url(ds.root):
        indexes = _local_indexes(indexes, entries, index_cache)
    for url, index, entry in zip(urls, indexes, entries, strict=True):
        check_shard_files(url, index, entry["count"])
    size = int(ds.manifest.get("params", {}).get("size", 256))
    return SplitFiles(ds.root, split, tuple(urls), tuple(indexes), tuple(entries), size)


def _local_indexes(urls: list[str], entries: list[dict], folder: str) -> list[str]:
    """Local copies of the .idx objects, named by their shard's sha256; the missing ones in one concurrent batch."""
    paths = [os.path.join(folder, e["sha256"] + ".idx") for e in entries]
    missing = {url: path for url, path in zip(urls, paths, strict=True) if not os.path.isfile(path)}
    if missing:
        os.makedirs(folder, exist_ok=True)
        fetched = store.read_many(list(missing))
        for url, path in missing.items():
            if url not in fetched:
                raise UserError(f"{url} is missing on the store: rerun `cli.py shard` to rewrite it")
            store.write_atomically(path, fetched[url])
    return paths


def check_shard_files(url: str, index: str, count: int) -> None:
    """The shard's DALI index covers every sample with a jpg and a 4-byte int32 label (never ASCII .cls)."""
    with open(index) as f:
        text = f.read()
    problem = dali_index.problem(text, count, required=REQUIRED, sizes={fmt.LABEL_I32_EXT: 4})
    if problem is None:
        return
    if problem.startswith("sample"):
        raise UserError(
            f"{url}: {problem}; the pipeline reads the jpg and the label from .{fmt.LABEL_I32_EXT} "
            "(4-byte int32): rewrite these shards with `cli.py shard`"
        )
    raise UserError(
        f"{index} does not describe {url} ({problem}): the index is stale or foreign, rewrite it with "
        f"`wds2idx {url} {index}` or rerun `cli.py shard`"
    )


def rank_range(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """Samples [start, end) of the split that DALI's reader gives shard `rank` of `world_size` (its formula)."""
    return count * rank // world_size, count * (rank + 1) // world_size

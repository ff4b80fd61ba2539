"""What the DALI reader will read: the split's shards and index files, checked up front, and each rank's part.

Checks happen here, before DALI starts, so a foreign or damaged shard directory is one clear error naming the
shard and sample (DALI would fail later, deep in a worker thread, or read an empty label).
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
    index_paths: tuple[str, ...]
    shard_counts: tuple[int, ...]
    image_size: int  # side of the stored square images (manifest params; 256 in the paper)

    @property
    def count(self) -> int:
        return sum(self.shard_counts)


def split_files(root: str, split: str) -> SplitFiles:
    """The split's shards from the manifest, every one with a readable .idx that lists jpg and lbl per sample.

    Shards on an object store are read by DALI where they are (s3:// paths); their small .idx files are fetched
    once into a local cache, named by the shard's sha256 so a rewritten shard never meets a stale index."""
    ds = shards.open(root)
    entries = [e for e in ds.shards(split) if e["count"] > 0]  # DALI cannot index an empty tar: leave it out
    if not entries:
        raise UserError(f"{root}: the '{split}' split has no samples")
    urls = [store.join(ds.root, split, e["name"]) for e in entries]
    present = store.list_sizes(store.join(ds.root, split))
    indexes = []
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
        indexes.append(_local_index(index, entry) if store.is_url(index) else index)
    for url, index, entry in zip(urls, indexes, entries, strict=True):
        check_shard_files(url, index, entry["count"])
    size = int(ds.manifest.get("params", {}).get("size", 256))
    return SplitFiles(ds.root, split, tuple(urls), tuple(indexes), tuple(e["count"] for e in entries), size)


def _local_index(url: str, entry: dict) -> str:
    path = os.path.join(store.cache_dir("idx"), entry["sha256"] + ".idx")
    if not os.path.isfile(path):
        os.makedirs(store.cache_dir("idx"), exist_ok=True)
        store.write_atomically(path, store.read_bytes(url))
    return path


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


def rank_counts(count: int, world_size: int) -> list[int]:
    """Samples per reader shard; they differ by at most one."""
    return [end - start for start, end in (rank_range(count, r, world_size) for r in range(world_size))]


def jpeg_records(files: SplitFiles, start: int, stop: int):
    """(shard path, key, offset, size) of the jpg of split samples [start, stop), read from the .idx files."""
    first = 0
    for url, index_path, count in zip(files.urls, files.index_paths, files.shard_counts, strict=True):
        lo, hi = max(start, first), min(stop, first + count)
        if lo < hi:
            with open(index_path) as f:
                index = dali_index.parse(f.read())
            for number in range(lo - first, hi - first):
                jpg = index.sample(number)[fmt.IMAGE_EXT]
                yield url, index.key(number), jpg.offset, jpg.size
        first += count


def find_bad_jpeg(files: SplitFiles, start: int, stop: int) -> str | None:
    """'shard: sample KEY (reason)' for the first jpg in [start, stop) that PIL cannot decode, else None.

    Only used after DALI failed to decode a batch, to name the culprit (DALI's error does not).
    """
    import io

    from PIL import Image

    for url, key, offset, size in jpeg_records(files, start, stop):
        data = store.read_bytes(url, offset, offset + size)
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception as e:  # noqa: BLE001 - any decode failure is the answer we are looking for
            return f"{url}: sample '{key}' ({type(e).__name__}: {e})"
    return None

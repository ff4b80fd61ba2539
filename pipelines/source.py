"""What the DALI reader will read: the split's shards and index files, checked up front, and each rank's part.

Checks happen here, before DALI starts, so a foreign or damaged shard directory is one clear error naming the
shard and sample (DALI would fail later, deep in a worker thread, or read an empty label).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import shards
from shards import format as fmt
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
    """The split's shards from the manifest, every one with a readable .idx that lists jpg and lbl per sample."""
    ds = shards.open(root)
    # a shard whose every input was unreadable holds no sample: DALI cannot index an empty tar, so leave it out
    kept = [(u, i, c) for u, i, c in zip(ds.urls(split), ds.index_paths(split), ds.shard_counts(split)) if c > 0]
    urls, idx, counts = (list(column) for column in zip(*kept)) if kept else ([], [], [])
    if not urls or sum(counts) == 0:
        raise UserError(f"{root}: the '{split}' split has no samples")
    for url, index, count in zip(urls, idx, counts):
        check_shard_files(url, index, count)
    size = int(ds.manifest.get("params", {}).get("size", 256))
    return SplitFiles(ds.root, split, tuple(urls), tuple(idx), tuple(counts), size)


def check_shard_files(url: str, index: str, count: int) -> None:
    """The tar exists, and its DALI index (v1.2: `ext offset size name` per component) covers every sample."""
    if not os.path.isfile(url):
        raise UserError(f"{url} is missing: run `cli.py verify --shards {os.path.dirname(os.path.dirname(url))}` "
                        "and rerun `cli.py shard` to rewrite it")
    if not os.path.isfile(index):
        raise UserError(f"{url} has no DALI index {os.path.basename(index)}: make it with "
                        f"`wds2idx {url} {index}` (from nvidia-dali) or rerun `cli.py shard`")
    with open(index) as f:
        lines = f.read().splitlines()
    header = lines[0].split() if lines else []
    if len(header) != 2 or not header[0].startswith("v1.") or not header[1].isdigit():
        raise UserError(f"{index} is not a DALI webdataset index (first line {lines[:1]}): rewrite it with "
                        f"`wds2idx {url} {index}`")
    if int(header[1]) != count or len(lines) - 1 != count:
        raise UserError(f"{index} lists {len(lines) - 1} samples but the manifest says {url} has {count}: "
                        f"the index is stale, rewrite it with `wds2idx {url} {index}`")
    stride = 4 if header[0] >= "v1.2" else 3  # v1.2 lists `ext offset size name` per component, v1.1 no name
    check_index_line(url, lines[1], 0, stride)  # the label's size: a foreign int64/ASCII label shows in every sample
    text = "\n" + "\n".join(lines[1:])  # an `ext` field starts a line or follows a space; names hold no spaces
    if all(text.count(f" {ext} ") + text.count(f"\n{ext} ") == count for ext in REQUIRED):
        return  # fast path (about a second for ImageNet's 1.28M samples); else find and name the first bad sample
    for number, line in enumerate(lines[1:]):
        check_index_line(url, line, number, stride)


def check_index_line(url: str, line: str, number: int, stride: int = 4) -> None:
    """One sample of an index: both components present, and the label exactly 4 bytes (one int32)."""
    fields = line.split()
    exts = fields[0::stride]
    label = fields[stride * exts.index(fmt.LABEL_I32_EXT) + 2] if fmt.LABEL_I32_EXT in exts else None
    if fmt.IMAGE_EXT in exts and label == "4":
        return
    key = fields[3].split(".", 1)[0] if stride == 4 and len(fields) > 3 else f"number {number}"
    missing = [ext for ext in REQUIRED if ext not in exts]
    if missing:
        raise UserError(f"{url}: sample '{key}' has no .{' / .'.join(missing)} component (it has "
                        f"{', '.join(exts) or 'none'}); the pipeline reads the label from .{fmt.LABEL_I32_EXT} "
                        "(4-byte int32): rewrite these shards with `cli.py shard`")
    raise UserError(f"{url}: sample '{key}' has a .{fmt.LABEL_I32_EXT} of {label} bytes, not one 4-byte int32: "
                    "rewrite these shards with `cli.py shard`")


def rank_range(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """Samples [start, end) of the split that DALI's reader gives shard `rank` of `world_size` (its formula)."""
    return count * rank // world_size, count * (rank + 1) // world_size


def rank_counts(count: int, world_size: int) -> list[int]:
    """Samples per reader shard; they differ by at most one."""
    return [end - start for start, end in (rank_range(count, r, world_size) for r in range(world_size))]


def jpeg_records(files: SplitFiles, start: int, stop: int):
    """(shard path, key, offset, size) of the jpg of split samples [start, stop), read from the .idx files."""
    first = 0
    for url, index, count in zip(files.urls, files.index_paths, files.shard_counts):
        lo, hi = max(start, first), min(stop, first + count)
        if lo < hi:
            with open(index) as f:
                lines = f.read().splitlines()
            stride = 4 if lines[0] >= "v1.2" else 3
            for number in range(lo - first, hi - first):
                fields = lines[1 + number].split()
                at = stride * fields[0::stride].index(fmt.IMAGE_EXT)
                key = fields[at + 3].split(".", 1)[0] if stride == 4 else f"number {number}"
                yield url, key, int(fields[at + 1]), int(fields[at + 2])
        first += count


def find_bad_jpeg(files: SplitFiles, start: int, stop: int) -> str | None:
    """'shard: sample KEY (reason)' for the first jpg in [start, stop) that PIL cannot decode, else None.

    Only used after DALI failed to decode a batch, to name the culprit (DALI's error does not).
    """
    import io

    from PIL import Image

    for url, key, offset, size in jpeg_records(files, start, stop):
        with open(url, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception as e:  # noqa: BLE001 - any decode failure is the answer we are looking for
            return f"{url}: sample '{key}' ({type(e).__name__}: {e})"
    return None

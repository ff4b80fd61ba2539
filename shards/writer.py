"""Write one shard: a reproducible WebDataset tar, its DALI index, and the partial statistics of its pixels.

Runs inside a worker: a local pool process or a Dask worker, the same function either way. A shard is built in
memory and written whole (renamed into place on a disk, one PUT to an object store), so a crash or a full disk
never leaves a shard that looks finished; its record, written last, is the commit marker.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from dataclasses import dataclass

from . import dali_index
from . import format as fmt
from . import io as store
from .imagehash import image_hashes
from .layout import compact_sum_bytes, partial_image_path, record_path
from .sources import Item
from .stats import PixelSums
from .transform import MISSING_EOI, BadImage, add_missing_eoi, transform

TAR_MTIME = 0  # fixed owner, mode and time: same inputs + seed -> byte-identical shards


@dataclass(frozen=True)
class ShardTask:
    split: str
    index: int
    items: tuple[Item, ...]
    labels: tuple[int, ...]
    folder: str  # OUT/<split> (a local path or a URL)
    work: str  # OUT/.work/<split>: per-shard records and partial sums
    size: int
    quality: int
    resample: str
    mean_image: bool  # training split: pixel sums for the statistics and the mean image

    @property
    def name(self) -> str:
        return fmt.shard_name(self.split, self.index)

    def plan_digest(self) -> str:
        """Identifies what goes into this shard, so a resumed run only keeps shards of the same plan."""
        text = "\n".join(f"{it.key} {it.source} {label}" for it, label in zip(self.items, self.labels, strict=True))
        return hashlib.sha256(text.encode()).hexdigest()


def tarfile_header(name: str, size: int) -> bytes:
    """tarfile's USTAR header of a regular file with a fixed owner, mode and time."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, TAR_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT)


_EMPTY_HEADER = tarfile_header("", 0)
SIZE, CHKSUM = slice(124, 136), slice(148, 156)  # fields of a USTAR header


def tar_header(name: str, size: int) -> bytes:
    """The same bytes as tarfile_header (tested), several times faster: tarfile's header of an empty nameless member
    with the name, size and checksum filled in. A TarInfo per member (four per sample) cost more than hashing
    the sample's JPEG (docs/benchmarks.md)."""
    encoded = name.encode(tarfile.ENCODING, "surrogateescape")  # as TarInfo.tobuf encodes it
    if len(encoded) > 100 or size >= 8**11:  # a name that tarfile splits into a prefix, or a size it refuses
        return tarfile_header(name, size)
    header = bytearray(_EMPTY_HEADER)
    header[: len(encoded)] = encoded
    header[SIZE] = b"%011o\0" % size
    header[CHKSUM] = b" " * 8  # the checksum is taken with its own field as spaces
    header[CHKSUM.start : CHKSUM.start + 7] = b"%06o\0" % sum(header)
    return bytes(header)


def sample_components(key: str, jpeg: bytes, label: int, meta: dict) -> list[tuple[str, bytes]]:
    """(extension, bytes) of one sample, in fmt.COMPONENTS order."""
    return [
        (fmt.IMAGE_EXT, jpeg),
        (fmt.LABEL_EXT, str(label).encode("ascii")),
        (fmt.LABEL_I32_EXT, struct.pack("<i", label)),
        (fmt.META_EXT, json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()),
    ]


class TarBuilder:
    """Accumulates samples into tar bytes and the matching DALI index."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.samples: list[list[tuple[str, int, int, str]]] = []

    def add(self, key: str, components: list[tuple[str, bytes]]) -> None:
        sample = []
        for ext, data in components:
            name = f"{key}.{ext}"
            self.buf.write(tar_header(name, len(data)))
            sample.append((ext, self.buf.tell(), len(data), name))
            self.buf.write(data)
            self.buf.write(b"\0" * (-len(data) % tarfile.BLOCKSIZE))  # USTAR pads each member to 512 bytes
        self.samples.append(sample)

    def finish(self) -> tuple[bytes, str]:
        self.buf.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # end-of-archive marker
        data = self.buf.getvalue()
        data += b"\0" * (-len(data) % tarfile.RECORDSIZE)  # as tarfile and GNU tar pad
        return data, dali_index.format_index(self.samples)


def build_shard(task: ShardTask, progress=None) -> dict:
    """Transform every item of the task, write tar + idx (+ partial sums), return the shard's record."""
    store.tune_worker()  # a Dask worker runs no pool initializer
    builder, skipped, repaired = TarBuilder(), [], []
    sums = PixelSums.zero(task.size, mean_image=True) if task.mean_image else None  # statistics: training only
    fingerprints = []  # [key, digest, phash] per sample, for the duplicate report (duplicates.py)
    for item, label in zip(task.items, task.labels, strict=True):
        try:
            jpeg, pixels, (width, height), repair = transform_or_repair(item.read(), task)
        except BadImage as e:
            skipped.append({"path": item.source, "reason": str(e)})
        else:
            if repair:
                repaired.append({"path": item.source, "reason": repair})
            meta = {"wnid": item.wnid, "source": item.source, "width": width, "height": height}
            meta.update(image_hashes(jpeg, pixels))  # "digest", "phash"
            fingerprints.append([item.key, meta["digest"], meta["phash"]])
            builder.add(item.key, sample_components(item.key, jpeg, label, meta))
            if sums is not None:
                sums.add(pixels)
        if progress is not None:
            with progress.get_lock():
                progress.value += 1
    data, index = builder.finish()
    count = len(task.items) - len(skipped)
    record = {
        "name": task.name,
        "count": count,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "skipped": skipped,
        "repaired": repaired,
        "plan": task.plan_digest(),
    }
    if sums is not None:
        record["sums"] = sums.to_json()
    record["fingerprints"] = fingerprints  # duplicate report (duplicates.py)
    tar_path = store.join(task.folder, task.name)
    if task.mean_image:  # the bulky side file first: a full disk then stops us before the shard appears
        store.write_atomically(partial_image_path(task.work, task.name), compact_sum_bytes(sums.image_sum))
    store.write_atomically(dali_index.index_name(tar_path), index)
    store.write_atomically(tar_path, data)  # whole or absent
    # the record is the commit marker: written last; a shard without one is redone by the next run
    store.write_atomically(record_path(task.work, task.name), json.dumps(record))
    return record


def transform_or_repair(data: bytes, task: ShardTask):
    """transform()'s outputs and None; or, for an input whose only fault is a missing end-of-image marker, the
    outputs of the repaired input and the reason (transform.add_missing_eoi). BadImage for anything else."""
    try:
        return *transform(data, task.size, task.quality, task.resample), None
    except BadImage:
        repaired = add_missing_eoi(data)
        if repaired is None:
            raise
        return *transform(repaired, task.size, task.quality, task.resample), MISSING_EOI


def finished_records(tasks: list[ShardTask]) -> dict[int, dict]:
    """{task index: record} of the shards a previous run finished with the same plan whose files are still whole.
    One listing and one batch of reads, however many shards (resuming against an object store)."""
    if not tasks:
        return {}
    records = store.read_many([record_path(t.work, t.name) for t in tasks])
    files = store.list_sizes(tasks[0].folder)
    finished = {}
    for task in tasks:
        try:
            record = json.loads(records[record_path(task.work, task.name)])
            if (
                record.get("plan") == task.plan_digest()
                and files.get(task.name) == record["bytes"]
                and dali_index.index_name(task.name) in files
            ):
                finished[task.index] = record
        except (KeyError, ValueError):
            pass
    return finished

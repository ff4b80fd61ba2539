"""Write one shard: a reproducible WebDataset tar, its DALI index, and the partial statistics of its pixels.

Runs inside a worker process. A shard is built in memory, written under a temporary name and renamed
only when whole, so a crash or a full disk never leaves a shard that looks finished.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tarfile
from dataclasses import dataclass

import numpy as np

from . import format as fmt
from .sources import Item
from .imagehash import image_hashes
from .layout import compact_sum_bytes
from .stats import PixelSums
from .transform import BadImage, transform

TAR_MTIME = 0  # fixed owner, mode and time: same inputs + seed -> byte-identical shards


@dataclass(frozen=True)
class ShardTask:
    split: str
    index: int
    items: tuple[Item, ...]
    labels: tuple[int, ...]
    folder: str      # OUT/<split>
    work: str        # OUT/.work/<split>: per-shard records and partial sums
    size: int
    quality: int
    resample: str
    mean_image: bool  # accumulate the per-pixel sum (training split)

    @property
    def name(self) -> str:
        return fmt.shard_name(self.split, self.index)

    def plan_digest(self) -> str:
        """Identifies what goes into this shard, so a resumed run only keeps shards of the same plan."""
        text = "\n".join(f"{it.key} {it.source} {label}" for it, label in zip(self.items, self.labels))
        return hashlib.sha256(text.encode()).hexdigest()


def init_worker_process() -> None:
    """Pool initializer: Ctrl-C goes to the parent, which stops the pool and removes half-written files;
    one image at a time per process (torch's resize), the parallelism comes from the processes."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def tar_member(name: str, data: bytes) -> tuple[bytes, int]:
    """USTAR header + data + padding for one member; returns (bytes, header length)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    padding = b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    return header + data + padding, len(header)


def sample_components(key: str, jpeg: bytes, label: int, meta: dict) -> list[tuple[str, bytes]]:
    """(extension, bytes) of one sample, in fmt.COMPONENTS order."""
    return [
        (fmt.IMAGE_EXT, jpeg),
        (fmt.LABEL_EXT, str(label).encode("ascii")),
        (fmt.LABEL_I32_EXT, struct.pack("<i", label)),
        (fmt.META_EXT, json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()),
    ]


class TarBuilder:
    """Accumulates samples into tar bytes and the matching DALI index lines (format v1.2)."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.index_lines: list[str] = []

    def add(self, key: str, components: list[tuple[str, bytes]]) -> None:
        fields = []
        for ext, data in components:
            name = f"{key}.{ext}"
            member, header_len = tar_member(name, data)
            fields += [ext, str(self.buf.tell() + header_len), str(len(data)), name]
            self.buf.write(member)
        self.index_lines.append(" ".join(fields))

    def finish(self) -> tuple[bytes, str]:
        self.buf.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # end-of-archive marker
        data = self.buf.getvalue()
        data += b"\0" * (-len(data) % tarfile.RECORDSIZE)  # as tarfile and GNU tar pad
        index = f"v1.2 {len(self.index_lines)}\n" + "".join(line + "\n" for line in self.index_lines)
        return data, index


def write_atomically(path: str, data: bytes | str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def build_shard(task: ShardTask, progress=None) -> dict:
    """Transform every item of the task, write tar + idx (+ partial sums), return the shard's record."""
    builder, sums, skipped = TarBuilder(), PixelSums.zero(task.size, task.mean_image), []
    fingerprints = []  # issue 10: [key, digest, phash] per sample, for the duplicate report (duplicates.py)
    for item, label in zip(task.items, task.labels):
        try:
            jpeg, pixels, (width, height) = transform(item.read(), task.size, task.quality, task.resample)
        except BadImage as e:
            skipped.append({"path": item.source, "reason": str(e)})
        else:
            meta = {"wnid": item.wnid, "source": item.source, "width": width, "height": height}
            meta.update(image_hashes(jpeg, pixels))  # issue 10: "digest", "phash"
            fingerprints.append([item.key, meta["digest"], meta["phash"]])
            builder.add(item.key, sample_components(item.key, jpeg, label, meta))
            sums.add(pixels)
        if progress is not None:
            with progress.get_lock():
                progress.value += 1
    data, index = builder.finish()
    count = len(task.items) - len(skipped)
    record = {"name": task.name, "count": count, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
              "skipped": skipped, "plan": task.plan_digest(), "sums": sums.to_json()}
    record["fingerprints"] = fingerprints  # issue 10
    tar_path = os.path.join(task.folder, task.name)
    if task.mean_image:  # the bulky side file first: a full disk then stops us before the shard appears
        write_atomically(partial_image_path(task.work, task.name), compact_sum_bytes(sums.image_sum))
    write_atomically(fmt.index_name(tar_path), index)
    write_atomically(tar_path, data)  # whole or absent: renamed into place only when complete
    # the record is the commit marker: written last; a shard without one is redone by the next run
    write_atomically(record_path(task.work, task.name), json.dumps(record))
    return record


def npy_bytes(array: np.ndarray) -> bytes:
    """.npy file content; written with write_atomically (np.save hides the errno of a full disk)."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def record_path(work: str, name: str) -> str:
    return os.path.join(work, name + ".json")


def partial_image_path(work: str, name: str) -> str:
    return os.path.join(work, name + ".sum.npz")  # layout.compact_sum_bytes


def finished_record(task: ShardTask) -> dict | None:
    """The record of a shard a previous run finished with the same plan, if its files are still whole."""
    try:
        with open(record_path(task.work, task.name)) as f:
            record = json.load(f)
        tar_path = os.path.join(task.folder, task.name)
        if (record.get("plan") == task.plan_digest() and os.path.getsize(tar_path) == record["bytes"]
                and os.path.isfile(fmt.index_name(tar_path))):
            return record
    except (OSError, ValueError, KeyError):
        pass
    return None

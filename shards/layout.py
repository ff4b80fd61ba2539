"""How a split is cut into shards; where the writer keeps its bookkeeping, and the compact on-disk form of the
per-shard partial mean-image sums.

Default (no --shard-size): at most MAX_SHARD_SIZE samples per shard, and at least min(MIN_SHARDS, count // 16)
shards per split, so every reader can give each of its workers (and each rank) shards of its own: 48 validation
images -> 3 shards of 16, 50,000 -> 64 shards of 781-782, 1,281,167 -> 1282 shards of 999-1000. Sizes in a split
differ by at most one. A function of the number of inputs only, so a resumed run plans the same shards.
"""

from __future__ import annotations

import io
import zlib

import numpy as np

from . import io as store

MAX_SHARD_SIZE = 1000
MIN_SHARDS = 64
MIN_SAMPLES_PER_SHARD = 16


def default_shard_count(count: int) -> int:
    return max(1, -(-count // MAX_SHARD_SIZE), min(MIN_SHARDS, count // MIN_SAMPLES_PER_SHARD))


def chunk(items: list, shard_size: int | None) -> list[list]:
    """The split's shards: fixed `shard_size` chunks (the last one shorter), or the balanced default."""
    if shard_size:
        return [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    n = default_shard_count(len(items))
    bounds = [len(items) * i // n for i in range(n + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def work_dir(out: str, split: str) -> str:
    """OUT/.work/<split>: the writer's bookkeeping (not part of the format): one record per finished shard, the
    commit marker, and the shard's partial mean-image sum until the statistics are merged."""
    return store.join(out, ".work", split)


def record_path(work: str, name: str) -> str:
    return store.join(work, name + ".json")


def partial_image_path(work: str, name: str) -> str:
    return store.join(work, name + ".sum.npz")  # compact_sum_bytes


def compact_sum_bytes(image_sum: np.ndarray) -> bytes:
    """The per-pixel uint32 sum of a shard, small: the smallest unsigned dtype that holds it, its bytes split
    into planes and the planes above the lowest deflated (the high bytes of neighbouring pixels are nearly
    equal), about a third of the 768 KiB .npy. The lowest plane is stored as it is: it is noise, which deflate
    never shrank and which took half of the time (sizes and times: docs/benchmarks.md,
    `python -m bench.partial_sum_size`)."""
    dtype = np.uint8 if image_sum.max(initial=0) < 2**8 else np.uint16 if image_sum.max() < 2**16 else np.uint32
    values = np.ascontiguousarray(image_sum, dtype=dtype)
    planes = values.view(np.uint8).reshape(-1, values.itemsize).T.copy()  # byte plane 0, 1, ... (little-endian)
    buf = io.BytesIO()
    np.savez(
        buf,
        shape=np.array(image_sum.shape),
        itemsize=np.array(values.itemsize),
        low=planes[0],
        high=np.frombuffer(zlib.compress(planes[1:].tobytes(), 1), np.uint8),
    )
    return buf.getvalue()


def load_sum(path: str) -> np.ndarray:
    """The uint32 per-pixel sum written by compact_sum_bytes (or by the versions before it, which deflated every
    plane into `planes`: a run resumed after an upgrade)."""
    with np.load(io.BytesIO(store.read_bytes(path))) as loaded:
        itemsize, shape = int(loaded["itemsize"]), tuple(int(v) for v in loaded["shape"])
        if "low" in loaded:
            high = np.frombuffer(zlib.decompress(loaded["high"].tobytes()), np.uint8)
            planes = np.concatenate([loaded["low"], high]).reshape(itemsize, -1)
        else:
            planes = np.frombuffer(zlib.decompress(loaded["planes"].tobytes()), np.uint8).reshape(itemsize, -1)
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}[itemsize]
    return np.ascontiguousarray(planes.T).view(dtype).reshape(shape).astype(np.uint32)

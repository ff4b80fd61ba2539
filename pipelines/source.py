"""Which samples each batch holds, and their bytes: the epoch plan, the shard window, and the source DALI reads.

The plan (`EpochPlan`) is a pure function of (seed, rank, epoch): the same batches whether the shards are on a local
disk, streamed from a store or read from the cache, and an exact resume is just "start at batch b of epoch e".
- Each rank reads its own part of the split, samples [start, end) (`shard_files.rank_range`; parts differ by at most
  one sample), every epoch the same part: a node fetches and caches only its ranks' shards.
- Training: the shards of the part in a random order, then the samples mixed within consecutive blocks of
  `shuffle_buffer` samples; `floor(smallest part / B)` batches, so every rank steps the same number of times (a few
  samples at random are left out of each epoch). The writer already shuffled the split across shards.
- Evaluation: the part in order, every epoch the same, padded to `ceil(largest part / B)` batches with repeats of its
  last sample whose label is -1: over all ranks every image counts exactly once.

`ShardWindow` holds the shards the next batches read: pinned in the node's `ShardCache` (fetched ahead of use, in the
plan's order, with bounded concurrency) for a store, opened in place for a local folder. `BatchSource` is the
callable `fn.external_source` calls once per batch: the encoded JPEG bytes, the labels and the random view
parameters of the next batch.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from nvidia.dali.tensors import TensorCPU

from shards import dali_index
from shards import format as fmt
from shards.cache import Pin, ShardCache

from .augment import META_BYTES, draw_views
from .config import PipelineConfig
from .shard_files import SplitFiles, rank_range


@dataclass(frozen=True)
class EpochPlan:
    counts: tuple[int, ...]  # samples per shard, in manifest order
    batch_size: int
    rank: int
    world_size: int
    seed: int
    evaluation: bool
    shuffle: int  # training: samples mixed at a time (<= 1: the part in order)

    @cached_property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def part(self, rank: int | None = None) -> tuple[int, int]:
        return rank_range(int(self.starts[-1]), self.rank if rank is None else rank, self.world_size)

    @cached_property
    def part_sizes(self) -> list[int]:
        return [end - start for start, end in (self.part(r) for r in range(self.world_size))]

    @property
    def batches(self) -> int:
        """Batches per epoch, equal on every rank."""
        if self.evaluation:
            return -(-max(self.part_sizes) // self.batch_size)
        return min(self.part_sizes) // self.batch_size

    @property
    def real(self) -> int:
        """Samples of this rank's part: in evaluation the positions from here on are padding (label -1)."""
        start, end = self.part()
        return end - start

    def shard_of(self, samples: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, samples, side="right") - 1

    def order(self, epoch: int) -> np.ndarray:
        """Split-wide sample numbers of this rank's epoch, `batches * batch_size` of them."""
        start, end = self.part()
        n = self.batches * self.batch_size
        samples = np.arange(start, end, dtype=np.int64)
        if self.evaluation:
            return np.concatenate([samples, np.full(max(0, n - len(samples)), end - 1, np.int64)])[:n]
        if self.shuffle > 1:
            rng = np.random.default_rng([self.seed, self.rank, epoch])
            shard_rank = rng.permutation(len(self.counts))  # the shards in a random order ...
            samples = samples[np.argsort(shard_rank[self.shard_of(samples)], kind="stable")]
            block = np.arange(len(samples)) // self.shuffle  # ... then mixed within blocks of `shuffle` samples
            samples = samples[np.lexsort((rng.random(len(samples)), block))]
        return samples[:n]

    def max_shards_per_batch(self) -> int:
        """At most how many shards one batch reads (and one more ahead): what a loader must hold at once."""
        mixed = max(self.shuffle, 1) if not self.evaluation else 1
        return min(len(self.counts), -(-(mixed + self.batch_size) // max(1, min(self.counts))) + 2)

    def schedule(self, epoch: int) -> list[tuple[int, int]]:
        """[(shard, last batch that reads it)] in the order the epoch first reads them."""
        shards = self.shard_of(self.order(epoch))
        unique, first = np.unique(shards, return_index=True)
        _, from_end = np.unique(shards[::-1], return_index=True)
        last = (len(shards) - 1 - from_end) // self.batch_size
        return [(int(unique[i]), int(last[i])) for i in np.argsort(first)]


class ShardReader:
    """One local tar, memory-mapped, with its samples' component offsets from the .idx."""

    def __init__(self, path: str, index_path: str):
        with open(index_path) as f:
            self.index = dali_index.parse(f.read())
        offsets = dali_index.component_table(self.index, (fmt.IMAGE_EXT, fmt.LABEL_I32_EXT, fmt.META_EXT))
        self.places = offsets[fmt.IMAGE_EXT].tolist()  # [(offset, size)] of each jpg: plain ints are fastest here
        self.meta = offsets[fmt.META_EXT].tolist()
        with open(path, "rb") as f:
            # MAP_POPULATE: the pages mapped in one call (a fault per page costs more than the copy DALI makes)
            self.map = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
        label_bytes = offsets[fmt.LABEL_I32_EXT][:, :1] + np.arange(4)  # the 4 bytes of every .lbl (a copy)
        self.labels = np.frombuffer(self.map, np.uint8)[label_bytes].view("<i4")[:, 0].astype(np.int64)

    def key(self, i: int) -> str:
        return self.index.key(i)

    def jpeg(self, i: int) -> np.ndarray:
        offset, size = self.places[i]
        return np.frombuffer(self.map, np.uint8, size, offset)

    def json(self, i: int) -> bytes:
        offset, size = self.meta[i]
        return self.map[offset : offset + size]

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a batch still refers to its bytes: unmapped with the last reference
            self.map.close()


class ShardWindow:
    """The shards the coming batches read, made ready ahead of use in the plan's order and released after their
    last batch: in a worker thread each is pinned in the cache (fetched and checked, for a store) and memory-mapped,
    so the reader's thread only picks it up. `cache` None: a local shard directory, read in place."""

    def __init__(self, files: SplitFiles, plan: EpochPlan, cache: ShardCache | None, budget: int, concurrency: int):
        self.files, self.plan, self.cache, self.budget = files, plan, cache, budget
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="shards")
        self.lookahead = 2 * concurrency
        self.ready: dict[int, Future] = {}  # shard -> Future of (Pin or None, ShardReader)
        self.last_use: dict[int, tuple[int, int]] = {}  # shard -> (epoch, batch) of its last read
        self.queue: list[tuple[int, int, int]] = []  # (epoch, shard, last batch) not made ready yet, in order
        self.planned = -1  # the last epoch whose schedule is in the queue

    def readers_for(self, epoch: int, batch: int, shards) -> dict[int, ShardReader]:
        """Readers of `shards` (what batch `batch` of `epoch` reads); prepares ahead and releases what is done."""
        for shard in [s for s, last in self.last_use.items() if last < (epoch, batch)]:
            self._release(shard)
        self.planned = max(self.planned, epoch - 1)  # a resume starts at its epoch
        while self.planned < epoch + 1:  # this epoch's and the next one's order: fetching runs across the boundary
            self.planned += 1
            self.queue += [(self.planned, s, last) for s, last in self.plan.schedule(self.planned)]
        self.queue = [q for q in self.queue if (q[0], q[2]) >= (epoch, batch)]
        self._prepare_ahead(epoch, batch, set(shards))
        return {shard: self.reader(shard) for shard in shards}

    def _prepare_ahead(self, epoch: int, batch: int, now: set[int]) -> None:
        ahead = sum(1 for s in self.ready if s not in now and self.last_use[s] >= (epoch, batch))
        while self.queue:
            when, shard, last = self.queue[0]
            if shard in self.ready:  # read again later on: keep it until then
                self.last_use[shard] = max(self.last_use[shard], (when, last))
                self.queue.pop(0)
                continue
            needed_now = shard in now
            if not needed_now and (ahead >= self.lookahead or self._held_bytes() + self._size(shard) > self.budget):
                return
            self.queue.pop(0)
            self.ready[shard] = self.pool.submit(self._prepare, shard)
            self.last_use[shard] = (when, last)
            ahead += not needed_now

    def _prepare(self, shard: int) -> tuple[Pin | None, ShardReader]:
        url, entry = self.files.urls[shard], self.files.entries[shard]
        pin = self.cache.pin(url, entry["bytes"], entry["sha256"]) if self.cache else None
        try:
            return pin, ShardReader(pin.path if pin else url, self.files.index_paths[shard])
        except BaseException:
            if pin:
                pin.release()
            raise

    def reader(self, shard: int) -> ShardReader:
        """The shard's reader, waiting for it if need be (and raising its fetch's error); also after its batches are
        done (naming a bad JPEG after a failed batch), or before it was planned (the first batch after a resume)."""
        if shard not in self.ready:
            self.ready[shard] = self.pool.submit(self._prepare, shard)
            self.last_use.setdefault(shard, (0, 0))
        return self.ready[shard].result()[1]

    def _release(self, shard: int) -> None:
        future = self.ready.pop(shard, None)
        self.last_use.pop(shard, None)
        if future is not None:
            future.add_done_callback(_close)

    def _size(self, shard: int) -> int:
        return int(self.files.entries[shard]["bytes"])

    def _held_bytes(self) -> int:
        return sum(self._size(s) for s in self.ready) if self.cache else 0

    def close(self) -> None:
        for shard in list(self.ready):
            self._release(shard)
        self.pool.shutdown(wait=True, cancel_futures=True)


def _close(future: Future) -> None:
    if not future.cancelled() and future.exception() is None:
        pin, reader = future.result()
        reader.close()
        if pin:
            pin.release()


class BatchSource:
    """`fn.external_source`'s callable: each call returns the next batch of the plan, epoch after epoch.

    Outputs, in `augment.source_outputs` order: jpegs (list of uint8 arrays), labels int64 [B] (-1 = evaluation
    padding), in train mode the view parameters crop_x, crop_y, mirror, alpha, and with `with_meta` each sample's
    json, space-padded to META_BYTES.
    `recent` keeps the samples of the last batches handed out, to name a JPEG that DALI could not decode.
    """

    def __init__(self, plan: EpochPlan, window: ShardWindow, cfg: PipelineConfig, image_size: int, with_meta: bool):
        self.plan, self.window, self.cfg, self.image_size, self.with_meta = plan, window, cfg, image_size, with_meta
        self.first = 0  # the batch (counted over all epochs) that iteration 0 of the pipeline reads
        self._order = (None, None)  # (epoch, its order)
        self.recent: list[tuple[np.ndarray, np.ndarray]] = []  # (shards, samples in them) of the last batches

    def start_at(self, epoch: int, batch: int) -> None:
        self.first = epoch * self.plan.batches + batch

    def __call__(self, iteration: int):
        """The batch of pipeline iteration `iteration` (DALI passes it: the source keeps no position of its own)."""
        epoch, batch = divmod(self.first + iteration, self.plan.batches)
        if self._order[0] != epoch:
            self._order = (epoch, self.plan.order(epoch))
        size = self.plan.batch_size
        positions = np.arange(batch * size, (batch + 1) * size)
        samples = self._order[1][positions]
        shards = self.plan.shard_of(samples)
        readers = self.window.readers_for(epoch, batch, sorted(set(shards.tolist())))
        local = samples - self.plan.starts[shards]
        # DALI tensors wrapping the mapped bytes: external_source takes them as they are (a numpy array it would
        # check and wrap itself, sample by sample, in this thread); it copies them into its buffers when fed
        jpegs = [TensorCPU(readers[shard].jpeg(i)) for shard, i in zip(shards.tolist(), local.tolist(), strict=True)]
        labels = np.empty(size, np.int64)
        for shard, reader in readers.items():
            here = shards == shard
            labels[here] = reader.labels[local[here]]
        if self.plan.evaluation:
            labels[positions >= self.plan.real] = -1  # the padding
        self.recent = (self.recent + [(shards, local)])[-(self.cfg.prefetch + 2) :]
        out = [jpegs, labels]
        if self.cfg.mode == "train":
            rng = np.random.default_rng([self.plan.seed, self.plan.rank, epoch, batch, 1])
            out += draw_views(rng, size, self.cfg, self.image_size)
        if self.with_meta:
            metas = [readers[s].json(i)[:META_BYTES].ljust(META_BYTES) for s, i in zip(shards, local, strict=True)]
            out.append(np.frombuffer(b"".join(metas), np.uint8).reshape(size, META_BYTES))
        return out

    def find_bad_jpeg(self) -> str | None:
        """'shard: sample KEY (reason)' for the first JPEG of the last batches handed out that PIL cannot decode.
        Only used after DALI failed to decode a batch, to name the culprit (DALI's error does not)."""
        from PIL import Image

        for shards, local in self.recent:
            for shard, i in zip(shards.tolist(), local.tolist(), strict=True):
                reader = self.window.reader(shard)
                url, key, jpeg = self.window.files.urls[shard], reader.key(i), bytes(reader.jpeg(i))
                try:
                    with Image.open(io.BytesIO(jpeg)) as image:
                        image.load()
                except Exception as e:  # noqa: BLE001 - any decode failure is the answer we are looking for
                    return f"{url}: sample '{key}' ({type(e).__name__}: {e})"
        return None


def loader_budget(limit: int, dataset_bytes: int) -> int:
    """Bytes one loader may pin. All of the limit when the whole dataset fits (nothing is ever evicted); else a share
    such that the ranks on this node, with a train and a val loader each, always fit together (the launcher's
    LOCAL_WORLD_SIZE; 1 outside one): no rank then waits for room that a rank waiting for it in a collective holds."""
    if dataset_bytes <= limit:
        return limit
    return limit // (2 * max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))

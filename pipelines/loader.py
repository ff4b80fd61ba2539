"""`build_loader`: the DALI pipeline wrapped as a PyTorch iterable with an exact length, shared by every rank.

Epochs (`pipelines.source.EpochPlan`). Each rank reads its own part of the split, every epoch the same part:
- training (mode "train"): `len = floor(smallest part / B)` batches, the part's shards in a random order and the
  samples mixed within blocks of `shuffle_buffer`; a few samples at random sit out each epoch;
- evaluation ("center", "ten_crop"): `len = ceil(largest part / B)`, the part in order, padded with repeats of its
  last sample carrying label -1, so real labels cover every image exactly once over all ranks: evaluators drop
  labels < 0.

Where the bytes come from. A local shard directory is read in place (memory-mapped). A shard directory on an object
store (s3://, gs://, any fsspec URL) streams: whole shards are fetched ahead of use, in the plan's order, into a
bounded node-local cache (`shards.cache`), each checked against its sha256 before any sample of it is decoded.
Either way the same seed gives the same batches.

Iteration and resume. `iter(loader)` yields the rest of the current epoch (a whole epoch, `len()` batches, unless a
previous iteration stopped early or a state was loaded); the epoch ends when an iteration is exhausted. Every batch
is a pure function of (seed, rank, epoch, batch) - its samples and its random crops, flips and lighting - so
`state_dict()` is just {format, the settings it depends on, epoch, batch}, and `load_state_dict(state)` on a loader
built with the same arguments continues with exactly the batches the saved loader had not yet yielded.
"""

from __future__ import annotations

import os

import torch

import shards
from shards import cache as shard_cache
from shards import io as store
from shards.errors import UserError

from .augment import OUTPUTS, alexnet_pipeline, normalization, source_outputs
from .config import PipelineConfig, make_config
from .shard_files import SplitFiles, split_files
from .source import BatchSource, EpochPlan, ShardWindow, loader_budget

STATE_FORMAT = "pipelines.loader/2"


def build_loader(
    root: str,
    split: str = "train",
    batch_size: int = 128,
    device: str = "cuda",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    state: dict | None = None,
    with_params: bool = False,
    cache: shard_cache.CacheConfig | None = None,
    **options,
) -> DaliLoader:
    """An iterable of `(images, labels)`: images [B,3,C,C] (mode ten_crop: [B,10,3,C,C]) mean-subtracted on
    `device`, labels int64 [B] (-1 = padding, evaluation modes only); `len()` batches per epoch on every rank.

    options: PipelineConfig fields (mode, mean, std, dtype, lighting_std, flip_prob, crop, shuffle_buffer,
    num_threads, prefetch, hw_decoder_load). state: a `state_dict()` to resume from (the same as calling
    `load_state_dict` before iterating). cache: where and how much a shard directory on a store is cached
    (`shards.cache.CacheConfig`; ignored for a local one). with_params: yield `(images, labels, params)` where params
    (CPU tensors) holds `meta` (each sample's json component, space-padded uint8 [B, 512]) and, in train mode, the
    random draws `crop_x`, `crop_y` (window position in [0, 1]), `mirror` and `alpha` [B, 3] - for tests and the
    preview.
    """
    cfg = make_config(split, **options)
    device = resolve_device(device)
    if batch_size < 1 or not 0 <= rank < world_size:
        raise UserError(
            f"batch_size={batch_size}, rank={rank}, world_size={world_size}: need batch_size >= 1 "
            "and 0 <= rank < world_size"
        )
    ds = shards.open(root)
    cache = cache or shard_cache.CacheConfig()
    store_cache = shard_cache.open_cache(ds, cache) if store.is_url(ds.root) else None
    files = split_files(root, split, store_cache.folder if store_cache else None)
    if files.count < world_size:
        raise UserError(f"{world_size} ranks but the '{split}' split has only {files.count} images: use fewer ranks")
    if cfg.crop > files.image_size:
        raise UserError(f"crop={cfg.crop} is larger than the {files.image_size}x{files.image_size} images of {root}")
    mean_image = ds.mean_image() if cfg.mean == "image" else None
    if mean_image is not None and mean_image.shape != (files.image_size, files.image_size, 3):
        raise UserError(
            f"{root}/mean_image.npy has shape {mean_image.shape}, the images are "
            f"{files.image_size}x{files.image_size}x3: recompute it with `cli.py stats --recompute`"
        )
    norm = normalization(cfg, ds.stats, mean_image)
    plan = EpochPlan(files.shard_counts, batch_size, rank, world_size, seed, cfg.evaluation, cfg.shuffle_buffer)
    window = open_window(files, plan, ds, store_cache, cache.fetch_concurrency)
    loader = DaliLoader(files, cfg, norm, plan, window, device, with_params)
    if state is not None:
        loader.load_state_dict(state)
    return loader


def open_window(files: SplitFiles, plan: EpochPlan, ds, store_cache, concurrency: int) -> ShardWindow:
    """The loader's shard window: in place for a local directory; through the node's cache for a store."""
    if store_cache is None:
        return ShardWindow(files, plan, None, 0, 1)  # local: 2 shards mapped ahead, by one thread
    budget = loader_budget(store_cache.limit, shard_cache.dataset_bytes(ds))
    need = min(plan.max_shards_per_batch() * max(int(e["bytes"]) for e in files.entries), files.bytes)
    if need > budget:
        size = shard_cache.format_size
        raise UserError(
            f"--cache-limit {size(store_cache.limit)} is too small for {files.root}: each loader must hold "
            f"{size(need)} of shards at once, and a train and a val loader per process on this node share the "
            f"limit: use at least --cache-limit {size(-(-store_cache.limit * need // budget))}"
        )
    return ShardWindow(files, plan, store_cache, budget, concurrency)


def resolve_device(device) -> torch.device:
    """The device DALI works on: the CPU, or a CUDA device with its index ('cuda' = torch's current one)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise UserError(f"device={device!r}: the loader runs on 'cuda' or 'cpu'")
    if not torch.cuda.is_available():
        raise UserError(
            f"device={device!r} but no CUDA GPU is visible (torch.cuda.is_available() is False): "
            "use device='cpu' (--device cpu / --gpus 0)"
        )
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise UserError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda", index)


class DaliLoader:
    """See the module docstring for the epoch, padding and resume contract."""

    def __init__(
        self,
        files: SplitFiles,
        cfg: PipelineConfig,
        norm: dict,
        plan: EpochPlan,
        window: ShardWindow,
        device: torch.device,
        with_params: bool = False,
    ):
        self.files, self.cfg, self.norm, self.plan, self.window = files, cfg, norm, plan, window
        self.batch_size, self.rank, self.world_size, self.seed = plan.batch_size, plan.rank, plan.world_size, plan.seed
        self.device, self.gpu, self.with_params = device, device.type == "cuda", with_params
        self.source = BatchSource(plan, window, cfg, files.image_size, with_params)
        self.batches = plan.batches
        self.epoch, self.batch = 0, 0  # position: batches consumed in the current epoch
        self._iterator = None
        self._token = None  # the live iteration; a new iter() retires the previous one

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        token = self._token = object()
        iterator = self._dali()
        while self.batch < self.batches and token is self._token:
            out = self._next(iterator)
            self.batch += 1
            yield self._finish_batch(out)
        if token is self._token:
            self.epoch, self.batch = self.epoch + 1, 0

    def _finish_batch(self, out: dict):
        images, labels = out["images"], out["labels"]
        if self.gpu:  # DALI wrote [..., H, W, C]: hand out the NCHW view of it, which is channels_last, no copy
            images = images.movedim(-1, -3)
        if self.cfg.dtype == "bfloat16":
            images = images.to(torch.bfloat16)
        if self.with_params:
            return images, labels, {k: v for k, v in out.items() if k not in OUTPUTS}
        return images, labels

    def close(self) -> None:
        """Release the shards this loader holds in the cache (also when it is garbage collected or the process
        ends: the pins are file locks)."""
        self._iterator = None
        self.window.close()

    # ------------------------------------------------------------------------------------------- DALI
    def _dali(self):
        """The DALI iterator, built on first use, reading from the loader's position on."""
        if self._iterator is None:
            from nvidia.dali.plugin.pytorch import DALIGenericIterator

            self.source.start_at(self.epoch, self.batch)
            pipe = alexnet_pipeline(
                self.source,
                self.cfg,
                self.norm,
                self.gpu,
                self.with_params,
                batch_size=self.batch_size,
                num_threads=self.num_threads(),
                prefetch_queue_depth=self.cfg.prefetch,
                device_id=self.device.index if self.gpu else None,
            )
            names = OUTPUTS + (source_outputs(self.cfg, True)[2:] if self.with_params else ())
            try:  # size=-1: the source never ends; epochs are counted here, not by DALI
                self._iterator = DALIGenericIterator([pipe], list(names), size=-1)
            except RuntimeError as e:
                raise self._error(e) from None
        return self._iterator

    def _next(self, iterator) -> dict:
        try:
            return next(iterator)[0]
        except RuntimeError as e:
            self._iterator = None  # DALI's pipeline is invalid after an error
            raise self._error(e) from None

    def _error(self, e: Exception) -> UserError:
        detail = "\n".join(line for line in str(e).splitlines() if line.strip() and "C++ context" not in line)
        culprit = self.source.find_bad_jpeg() if "decoders" in detail else None
        where = f"bad image {culprit}" if culprit else detail
        return UserError(
            f"reading the {self.files.split} shards of {self.files.root} failed (rank {self.rank}, "
            f"epoch {self.epoch}, batch {self.batch}): {where}"
        )

    def num_threads(self) -> int:
        if self.cfg.num_threads:
            return self.cfg.num_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(8, cores) if self.gpu else max(1, cores // self.world_size)

    # ------------------------------------------------------------------------------------------- resume
    def _identity(self) -> dict:
        return {
            "split": self.files.split,
            "mode": self.cfg.mode,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "count": self.files.count,
            "shuffle_buffer": self.cfg.shuffle_buffer,
        }

    def state_dict(self) -> dict:
        """Plain str/int (torch.load(weights_only=True) reads it back)."""
        return {"format": STATE_FORMAT, **self._identity(), "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        if found != STATE_FORMAT:
            raise UserError(f"not a loader state of this version (format {found!r}, expected {STATE_FORMAT!r})")
        mine = self._identity()
        differ = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if differ:
            said = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in differ.items())
            raise UserError(
                f"the loader state was saved with other settings ({said}): resume with the same "
                "shards, split, mode, ranks, batch size and seed"
            )
        self._iterator, self._token = None, None
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

"""`build_loader`: the DALI pipeline wrapped as a PyTorch iterable with an exact length, shared by every rank.

Epochs. Each rank's DALI reader reads its part of the split (`shard_files.rank_range`; parts differ by at most one
sample). With pad_last_batch DALI repeats a part's last sample until every rank's reader epoch has
`ceil(largest part / B)` batches. Every rank must run the same number of batches:
- training (mode "train"): `len = floor(smallest part / B)` batches; the rest of the reader epoch is read and
  dropped (at most two batches), so every epoch starts on a reader epoch and the ranks never overlap in one;
- evaluation ("center", "ten_crop"): `len = ceil(largest part / B)`, the whole reader epoch; the padding
  repeats carry label -1, so real labels cover every image exactly once over all ranks: evaluators drop
  labels < 0.

Iteration and resume. `iter(loader)` yields the rest of the current epoch (a whole epoch, `len()` batches,
unless a previous iteration stopped early or a state was loaded); the epoch ends when an iteration is exhausted.
`state_dict()` -> {str: str|int|bytes}: the epoch, batches consumed in it, and DALI's pipeline checkpoint
(reader position, shuffle buffer and RNG states). `load_state_dict(state)` on a loader built with the same
arguments makes the next `iter()` continue with exactly the batches the saved loader had not yet yielded.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

import shards
from shards.errors import UserError

from .augment import OUTPUTS, PARAM_OUTPUTS, alexnet_pipeline, normalization
from .config import PipelineConfig, make_config
from .shard_files import SplitFiles, find_bad_jpeg, rank_counts, rank_range, split_files

STATE_FORMAT = "pipelines.loader/1"


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
    **options,
) -> DaliLoader:
    """An iterable of `(images, labels)`: images [B,3,C,C] (mode ten_crop: [B,10,3,C,C]) mean-subtracted on
    `device`, labels int64 [B] (-1 = padding, evaluation modes only); `len()` batches per epoch on every rank.

    options: PipelineConfig fields (mode, mean, std, dtype, lighting_std, flip_prob, crop, shuffle_buffer,
    num_threads, prefetch, hw_decoder_load). state: a `state_dict()` to resume from (the same as calling
    `load_state_dict` before iterating). with_params: yield `(images, labels, params)` where params (CPU tensors)
    holds `meta` (each sample's json component, space-padded uint8 [B, 512]) and, in train mode, the random
    draws `crop_x`, `crop_y` (window position in [0, 1]), `mirror` and `alpha` [B, 3] - for tests and the preview.
    """
    cfg = make_config(split, **options)
    device = resolve_device(device)
    if batch_size < 1 or not 0 <= rank < world_size:
        raise UserError(
            f"batch_size={batch_size}, rank={rank}, world_size={world_size}: need batch_size >= 1 "
            "and 0 <= rank < world_size"
        )
    files = split_files(root, split)
    if files.count < world_size:
        raise UserError(f"{world_size} ranks but the '{split}' split has only {files.count} images: use fewer ranks")
    if cfg.crop > files.image_size:
        raise UserError(f"crop={cfg.crop} is larger than the {files.image_size}x{files.image_size} images of {root}")
    ds = shards.open(root)
    mean_image = ds.mean_image() if cfg.mean == "image" else None
    if mean_image is not None and mean_image.shape != (files.image_size, files.image_size, 3):
        raise UserError(
            f"{root}/mean_image.npy has shape {mean_image.shape}, the images are "
            f"{files.image_size}x{files.image_size}x3: recompute it with `cli.py stats --recompute`"
        )
    norm = normalization(cfg, ds.stats, mean_image)
    loader = DaliLoader(files, cfg, norm, batch_size, device, rank, world_size, seed, with_params)
    if state is not None:
        loader.load_state_dict(state)
    return loader


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


def pipeline_seed(seed: int, rank: int) -> int:
    """Same seed -> same crops, flips, lighting and shuffle; every rank its own stream."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0] & 0x7FFFFFFF)


class DaliLoader:
    """See the module docstring for the epoch, padding and resume contract."""

    def __init__(
        self,
        files: SplitFiles,
        cfg: PipelineConfig,
        norm: dict,
        batch_size: int,
        device: torch.device,
        rank: int,
        world_size: int,
        seed: int,
        with_params: bool = False,
    ):
        self.files, self.cfg, self.norm, self.batch_size = files, cfg, norm, batch_size
        self.device, self.gpu = device, device.type == "cuda"
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.with_params = with_params
        self.parts = rank_counts(files.count, world_size)  # samples of each reader part
        # pad_last_batch: DALI pads every part to the batches of the largest one, so all ranks' reader epochs
        # have the same length; evaluation yields all of it, training the whole batches of the smallest part.
        self.reader_batches = math.ceil(max(self.parts) / batch_size)
        self.batches = self.reader_batches if cfg.evaluation else min(self.parts) // batch_size
        self.epoch, self.batch = 0, 0  # position: batches consumed in the current epoch
        self._checkpoint: bytes | None = None  # restore from this when the pipeline is (re)built
        self._iterator = None
        self._token = None  # the live iteration; a new iter() retires the previous one

    def __len__(self) -> int:
        return self.batches

    # ------------------------------------------------------------------------------------------- epochs
    def part_size(self, epoch: int) -> int:
        """Samples this rank's reader reads in `epoch`: training moves every rank on by one part per epoch."""
        part = self.rank if self.cfg.evaluation else (self.rank + epoch) % self.world_size
        return self.parts[part]

    def __iter__(self):
        token = self._token = object()
        iterator = self._dali()
        while self.batch < self.batches and token is self._token:
            out = self._next(iterator)
            self.batch += 1
            yield self._finish_batch(out, self.batch - 1)
        if token is self._token:
            self._end_epoch(iterator)

    def _finish_batch(self, out: dict, t: int):
        images, labels = out["images"], out["labels"]
        if self.gpu:  # DALI wrote [..., H, W, C]: hand out the NCHW view of it, which is channels_last, no copy
            images = images.movedim(-1, -3)
        if self.cfg.dtype == "bfloat16":
            images = images.to(torch.bfloat16)
        real = self.part_size(self.epoch) - t * self.batch_size  # samples of this rank's part in batch t
        if self.cfg.evaluation and real < self.batch_size:
            labels = labels.clone()
            labels[max(real, 0) :] = -1  # the reader's pad: repeats of the part's last sample
        if self.with_params:
            return images, labels, {k: v for k, v in out.items() if k not in OUTPUTS}
        return images, labels

    def _end_epoch(self, iterator) -> None:
        """Training: read and drop the rest of the reader epoch, so the next epoch starts on its boundary."""
        for _ in range(self.reader_batches - self.batch):
            self._next(iterator)
        self.epoch, self.batch = self.epoch + 1, 0

    # ------------------------------------------------------------------------------------------- DALI
    def _dali(self):
        """The DALI iterator, built on first use (restored from a loaded checkpoint, if any)."""
        if self._iterator is None:
            from nvidia.dali.plugin.pytorch import DALIGenericIterator

            pipe = alexnet_pipeline(
                self.files,
                self.cfg,
                self.norm,
                self.rank,
                self.world_size,
                self.gpu,
                self.with_params,
                batch_size=self.batch_size,
                num_threads=self.num_threads(),
                prefetch_queue_depth=self.cfg.prefetch,
                device_id=self.device.index if self.gpu else None,
                seed=pipeline_seed(self.seed, self.rank),
                checkpoint=self._checkpoint,
            )
            names = OUTPUTS + (self.param_names() if self.with_params else ())
            try:  # size=-1 and no reader_name: the reader loops forever; epochs are counted here, not by DALI
                self._iterator = DALIGenericIterator([pipe], list(names), size=-1)
            except RuntimeError as e:
                raise self._error(e) from None
            self._checkpoint = None
        return self._iterator

    def _next(self, iterator) -> dict:
        try:
            return next(iterator)[0]
        except RuntimeError as e:
            self._iterator = None  # DALI's pipeline is invalid after an error
            raise self._error(e) from None

    def _error(self, e: Exception) -> UserError:
        detail = "\n".join(line for line in str(e).splitlines() if line.strip() and "C++ context" not in line)
        culprit = self._find_culprit() if "decoders" in detail else None
        where = (
            f"bad image {culprit}"
            if culprit
            else f"{detail}\nFind damaged shards with `cli.py verify --shards {self.files.root}`"
        )
        return UserError(
            f"reading the {self.files.split} shards of {self.files.root} failed (rank {self.rank}, "
            f"epoch {self.epoch}, batch {self.batch}): {where}"
        )

    def _find_culprit(self) -> str | None:
        """DALI does not say which JPEG it could not decode: look near the failed batch in this rank's part.

        A batch in flight is at most `prefetch` batches ahead, and shuffling moves a sample by at most the
        shuffle buffer, so the culprit lies in this window of the reader epoch (checked with PIL, about 1 ms each).
        """
        part = self.rank if self.cfg.evaluation else (self.rank + self.epoch) % self.world_size
        start, end = rank_range(self.files.count, part, self.world_size)
        spread = (self.cfg.prefetch + 2) * self.batch_size + (0 if self.cfg.evaluation else self.cfg.shuffle_buffer)
        lo = max(start, start + self.batch * self.batch_size - spread)
        return find_bad_jpeg(self.files, lo, min(end, start + self.batch * self.batch_size + spread))

    def param_names(self) -> tuple[str, ...]:
        return ("meta",) + (PARAM_OUTPUTS if self.cfg.mode == "train" else ())

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
        }

    def state_dict(self) -> dict:
        """Plain str/int/bytes (torch.load(weights_only=True) reads it back)."""
        # never iterated: the start (or a loaded state not yet used)
        checkpoint = self._iterator.checkpoints()[0] if self._iterator is not None else self._checkpoint or b""
        return {
            "format": STATE_FORMAT,
            **self._identity(),
            "epoch": self.epoch,
            "batch": self.batch,
            "dali": bytes(checkpoint),
        }

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
        self._checkpoint = bytes(state["dali"]) or None

"""`cli.py bench loader`: images/s of the DALI training loader against the plain PyTorch path, in the same run.

Baseline: `shards.webdataset` (PIL decode) + `torch.utils.data.DataLoader` with as many workers as DALI has
threads, applying `reference.train_view` - the same augmentations in NumPy. Both deliver float32 NCHW batches
on `device`. Honest timing (airbench): warm-up batches are excluded, and the device is synchronised around the
measured span.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

import shards
from pipelines import reference
from pipelines.loader import build_loader, resolve_device
from shards.errors import UserError

from .timing import endless, report_rates, sync

WARMUP_BATCHES = 5


def bench_loader(
    shards: str,
    device: str = "cpu",
    batch_size: int = 128,
    workers: int | None = None,
    batches: int = 50,
    json_out: str | None = None,
    mean: str = "image",
    hw_decoder_load: float | None = None,
    baseline: bool = True,
    warmup: int = WARMUP_BATCHES,
) -> dict:
    """workers: DALI threads and DataLoader workers (default: all cores). hw_decoder_load: the share of JPEGs
    for the GPU's hardware decoder (--device cuda; None: the loader's default). baseline=False: DALI only."""
    workers = workers or os.cpu_count() or 1
    if batches < 1 or batch_size < 1 or workers < 1:
        raise UserError("--batches, --batch-size and --workers must be at least 1")
    if hw_decoder_load is not None and not 0 <= hw_decoder_load <= 1:
        raise UserError(f"--hw-decoder-load must lie in [0, 1] (got {hw_decoder_load})")
    dev = resolve_device(device)  # a clear error when cuda is asked for and absent
    dali = build_loader(
        shards,
        split="train",
        batch_size=batch_size,
        device=dev,
        num_threads=workers,
        mean=mean,
        hw_decoder_load=hw_decoder_load,
    )
    dali_s = time_batches(endless(dali), batches, warmup, dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({workers} threads/workers)"
    result = {
        "device": name,
        "batch_size": batch_size,
        "batches": batches,
        "warmup_batches": warmup,
        "workers": workers,
        "mean": mean,
        "hw_decoder_load": dali.cfg.hw_decoder_load,
        "dali_images_per_s": batches * batch_size / dali_s,
    }
    rows = [("DALI (pipelines.build_loader)", result["dali_images_per_s"], "")]
    if baseline:
        plain = reference_loader(shards, batch_size, workers, mean)
        ref_s = time_batches((to_device(b, dev) for b in plain), batches, warmup, dev)
        result["reference_images_per_s"] = batches * batch_size / ref_s
        result["speedup"] = result["dali_images_per_s"] / result["reference_images_per_s"]
        rows.append(("reference (webdataset + DataLoader + NumPy)", result["reference_images_per_s"], ""))
    return report_rates(
        f"bench loader: training pipeline, batch {batch_size}, {batches} timed batches after {warmup} warm-up, "
        f"{name}, mean {mean}" + (f", hw_decoder_load {dali.cfg.hw_decoder_load}" if dev.type == "cuda" else ""),
        rows,
        [f"speedup {result['speedup']:.2f}x"] if baseline else [],
        result,
        json_out,
    )


def time_batches(batches_iter, batches: int, warmup: int, device: torch.device) -> float:
    """Seconds for `batches` batches after `warmup` untimed ones (the device synchronised at both ends)."""
    for _ in range(warmup):
        next(batches_iter)
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        images, labels = next(batches_iter)
    sync(device)
    return time.perf_counter() - start


def to_device(batch, device: torch.device):
    images, labels = batch
    return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


class ReferenceTransform:
    """Picklable per-sample map for DataLoader workers: PIL image -> reference.train_view, label."""

    def __init__(self, shards_dir: str, mean: str, seed: int = 0):
        ds = shards.open(shards_dir)
        self.mean = ds.mean_image() if mean == "image" else ds.stats.mean
        self.eigval, self.eigvec = ds.stats.eigval, ds.stats.eigvec
        self.seed, self.rng = seed, None

    def __call__(self, sample):
        if self.rng is None:  # one stream per worker process
            info = torch.utils.data.get_worker_info()
            self.rng = np.random.default_rng([self.seed, info.id if info else 0])
        image, label = sample
        chw = reference.train_view(np.asarray(image), self.rng, self.mean, self.eigval, self.eigvec)
        return torch.from_numpy(chw), label


def reference_loader(shards_dir: str, batch_size: int, workers: int, mean: str):
    """An endless iterator of (images, labels) batches through the plain PyTorch path."""
    dataset = shards.webdataset(shards_dir, "train", shuffle=1000).map(ReferenceTransform(shards_dir, mean)).repeat()
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )
    return iter(loader)

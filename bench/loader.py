"""`cli.py bench loader`: images/s of the DALI training loader against the plain PyTorch path, in the same run.

Baseline: `shards.webdataset` (PIL decode) + `torch.utils.data.DataLoader` with as many workers as DALI has
threads, applying `reference.train_view` - the same augmentations in NumPy. Both deliver float32 NCHW batches
on `device`. Honest timing (airbench): warm-up batches are excluded, and the device is synchronised around the
measured span.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time

import numpy as np
import torch

import shards
from pipelines import reference
from pipelines.loader import build_loader, resolve_device
from shards import io as store
from shards.cache import CacheConfig
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
    cache: CacheConfig | None = None,
) -> dict:
    """workers: DALI threads and DataLoader workers (default: all cores). hw_decoder_load: the share of JPEGs
    for the GPU's hardware decoder (--device cuda; None: the loader's default). baseline=False: DALI only.
    A URL: the store streamed with a cold and then a warm cache against a local copy (see `bench_stream`)."""
    workers = workers or os.cpu_count() or 1
    if batches < 1 or batch_size < 1 or workers < 1:
        raise UserError("--batches, --batch-size and --workers must be at least 1")
    if hw_decoder_load is not None and not 0 <= hw_decoder_load <= 1:
        raise UserError(f"--hw-decoder-load must lie in [0, 1] (got {hw_decoder_load})")
    dev = resolve_device(device)  # a clear error when cuda is asked for and absent
    options = dict(batch_size=batch_size, device=dev, num_threads=workers, mean=mean, hw_decoder_load=hw_decoder_load)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({workers} threads/workers)"
    title = (
        f"bench loader: training pipeline, batch {batch_size}, {batches} timed batches after {warmup} warm-up, "
        f"{name}, mean {mean}"
    )
    result = {"device": name, "batch_size": batch_size, "batches": batches, "warmup_batches": warmup}
    result.update(workers=workers, mean=mean)
    if store.is_url(shards):
        return bench_stream(shards, options, batches, warmup, cache or CacheConfig(), title, result, json_out)
    dali = build_loader(shards, split="train", **options)
    if dev.type == "cuda":
        title += f", hw_decoder_load {dali.cfg.hw_decoder_load}"
    result.update(hw_decoder_load=dali.cfg.hw_decoder_load, dali_images_per_s=rate(dali, batches, warmup, dev))
    rows = [("DALI (pipelines.build_loader)", result["dali_images_per_s"], "")]
    if baseline:
        plain = reference_loader(shards, batch_size, workers, mean)
        ref_s = time_batches((to_device(b, dev) for b in plain), batches, warmup, dev)
        result["reference_images_per_s"] = batches * batch_size / ref_s
        result["speedup"] = result["dali_images_per_s"] / result["reference_images_per_s"]
        rows.append(("reference (webdataset + DataLoader + NumPy)", result["reference_images_per_s"], ""))
    return report_rates(title, rows, [f"speedup {result['speedup']:.2f}x"] if baseline else [], result, json_out)


def bench_stream(
    url: str, options: dict, batches: int, warmup: int, cache: CacheConfig, title: str, result: dict, json_out
) -> dict:
    """The same loader in one run: over a local copy of the store's shards (staged first, untimed), streaming from
    the store into an empty cache (cold), again from the filled cache (warm), and over the local copy once more
    (local = the mean of its two runs, so neither the first run nor the last has the order on its side). Requests
    are what this process sent to the store while each loader was built and read (retries included where the
    store's library reports them: S3), per image delivered."""
    from shards.stage import stage

    work = tempfile.mkdtemp(prefix="bench-loader-", dir=cache.cache_dir)
    try:
        local = os.path.join(work, "local-copy")
        stage(url, local)
        cached = dataclasses.replace(cache, cache_dir=os.path.join(work, "cache"))
        images = (warmup + batches) * options["batch_size"]
        local_runs = [rate(build_loader(local, split="train", **options), batches, warmup, options["device"])]
        for run in ("cold", "warm"):
            sent = store.request_counter(url)
            loader = build_loader(url, split="train", cache=cached, **options)
            result[f"{run}_images_per_s"] = rate(loader, batches, warmup, options["device"])
            stats = loader.window.cache.stats
            requests = sent() if sent else stats.requests
            result[f"{run}_requests"], result[f"{run}_bytes_fetched"] = requests, stats.bytes
            result[f"{run}_requests_per_image"] = requests / images
            loader.close()
            loader.window.cache.stats = type(stats)()  # the warm run counts its own
        local_runs.append(rate(build_loader(local, split="train", **options), batches, warmup, options["device"]))
        result.update(local_runs_images_per_s=local_runs, local_images_per_s=sum(local_runs) / 2)
        result.update(
            requests_per_image=result["cold_requests_per_image"],
            bytes_fetched=result["cold_bytes_fetched"],
            cold_vs_local=result["cold_images_per_s"] / result["local_images_per_s"],
            warm_vs_local=result["warm_images_per_s"] / result["local_images_per_s"],
            cache_limit=loader.window.cache.limit,
            fetch_concurrency=cache.fetch_concurrency,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        ("local copy (staged, read in place)", result["local_images_per_s"], "   (mean of a run before and after)"),
        ("store, cold cache", result["cold_images_per_s"], f"   {result['cold_vs_local']:.2f}x local"),
        ("store, warm cache", result["warm_images_per_s"], f"   {result['warm_vs_local']:.2f}x local"),
    ]
    footer = [
        f"cold: {result['cold_requests']} requests for {images} images ({result['cold_requests_per_image']:.4f} per "
        f"image), {result['cold_bytes_fetched'] / 1e6:,.1f} MB fetched",
        f"warm: {result['warm_requests']} requests ({result['warm_requests_per_image']:.4f} per image), "
        f"{result['warm_bytes_fetched'] / 1e6:,.1f} MB fetched",
    ]
    return report_rates(f"{title}, {url}", rows, footer, result, json_out)


def rate(loader, batches: int, warmup: int, device) -> float:
    """Images/s of `batches` batches after `warmup` untimed ones."""
    return batches * loader.batch_size / time_batches(endless(loader), batches, warmup, device)


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

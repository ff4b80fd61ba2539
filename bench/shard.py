"""`cli.py bench shard`: images/s of the sharder against a plain one-process PIL loop, in the same run; with
`--cluster ADDRESS`, the Dask cluster against the local process pool on the same images."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time

from PIL import Image

from shards.convert import ShardConfig, convert
from shards.demo_data import make_sample_tree
from shards.errors import UserError
from shards.sources import find_splits
from shards.transform import FILTERS, RESIZE_FILTER

from .timing import report_rates


def naive_convert(path: str, out_path: str, size: int = 256, quality: int = 90) -> None:
    """The loop everybody writes first: open, convert to RGB, resize the shorter side, crop the centre, save."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), FILTERS[RESIZE_FILTER])
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image.crop((left, top, left + size, top + size)).save(out_path, "JPEG", quality=quality)


def bench_shard(
    src: str | None,
    workers: int,
    limit: int = 800,
    json_out: str | None = None,
    repeats: int = 2,
    cluster: str | None = None,
) -> dict:
    """Convert the same `limit` training images both ways (`repeats` times each); print both rates and the ratio."""
    scratch = tempfile.mkdtemp(prefix="bench-shard-")
    try:
        if src is None:  # ImageNet-like: real photographs, shorter side 180-500 px
            src = make_sample_tree(os.path.join(scratch, "src"), train_per_class=-(-limit // 8), val_per_class=0)
        items = find_splits(src, "train", None)["train"][:limit]
        if not items:
            raise UserError(f"no training images under {src}")
        subset = os.path.join(scratch, "subset")
        for it in items:  # the project and the baseline read exactly the same files
            dest = os.path.join(subset, "train", it.wnid, os.path.basename(it.source))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(it.read())
        files = [os.path.join(root, n) for root, _, names in os.walk(os.path.join(subset, "train")) for n in names]
        for path in files[:8]:  # warm the page cache for both runs
            naive_convert(path, os.path.join(scratch, "warm.jpg"))

        shard_size = max(1, -(-len(files) // (workers * 4)))  # enough shards to keep every worker busy
        baseline_s, project_s = [], []
        for run in range(repeats):  # alternate the two, best of `repeats`: this machine's neighbours are noisy
            cfg = ShardConfig(
                src=subset,
                out=os.path.join(scratch, f"wds{run}"),
                split="train",
                workers=workers,
                shard_size=shard_size,
                progress=False,
            )
            start = time.perf_counter()
            if cluster:  # the baseline is the local pool: what the cluster's scheduling and transfers cost
                convert_quietly(cfg)
            else:
                baseline_dir = os.path.join(scratch, f"baseline{run}")
                os.makedirs(baseline_dir)
                for n, path in enumerate(files):
                    naive_convert(path, os.path.join(baseline_dir, f"{n}.jpg"))
            baseline_s.append(time.perf_counter() - start)
            cfg.out, cfg.cluster = os.path.join(scratch, f"cluster{run}"), cluster
            start = time.perf_counter()
            convert_quietly(cfg)
            project_s.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    result = {
        "images": len(files),
        "workers": workers,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "repeats": repeats,
        "baseline_img_s": len(files) / min(baseline_s),
        "project_img_s": len(files) / min(project_s),
    }
    result["ratio"] = result["project_img_s"] / result["baseline_img_s"]
    title = f"bench shard: {len(files)} images, {os.cpu_count()} cores, best of {repeats}"
    if cluster:
        result["cluster"] = cluster
        return report_rates(
            title,
            [
                (f"cli.py shard (local pool, {workers} processes)", result["baseline_img_s"], ""),
                (f"cli.py shard --cluster {cluster}", result["project_img_s"], ""),
            ],
            [f"cluster / local {result['ratio']:.2f}x (target: at least 0.91x, i.e. at most 10% slower)"],
            result,
            json_out,
        )
    return report_rates(
        title,
        [
            ("baseline (1 process, naive PIL)", result["baseline_img_s"], ""),
            (f"cli.py shard ({workers} workers)", result["project_img_s"], ""),
        ],
        [f"ratio {result['ratio']:.2f}x"],
        result,
        json_out,
    )


def convert_quietly(cfg: ShardConfig) -> None:
    """The full sharding run (manifest, stats, index) with its report silenced, so only the table prints."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        convert(cfg)

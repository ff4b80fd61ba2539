"""`cli.py bench shard`: images/s of the sharder against a plain one-process PIL loop, in the same run; with
`--cluster ADDRESS`, the Dask cluster against the local process pool on the same images.

Without --cluster, three things are measured on the same images, alternating, best of `repeats`:
- the plain loop (open, convert, resize, crop, save with PIL), one process;
- the libjpeg-turbo floor per core: `workers` processes over the JPEG bytes in memory, doing only the codec work
  of the transform (shards/transform.py): decode; + resize; + encode; + decoding the written JPEG back, which the
  exact statistics need (the last is `transform` itself);
- `cli.py shard` as a user runs it (a fresh process: imports, planning, the pool, manifest, statistics, duplicate
  report, card), on all the images and on one image per worker. The difference of the two is the steady state;
  what the small run takes beyond its images at that rate is the start-up (and finish) of a run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from PIL import Image

from shards import io as store
from shards.convert import ShardConfig, convert
from shards.demo_data import make_sample_tree
from shards.errors import UserError
from shards.sources import find_splits
from shards.transform import FILTERS, RESIZE_FILTER, decode_rgb, encode_jpeg, resize_and_center_crop, transform

from .timing import report_rates

SIZE, QUALITY = ShardConfig.size, ShardConfig.quality


def naive_convert(path: str, out_path: str, size: int = SIZE, quality: int = QUALITY) -> None:
    """The loop everybody writes first: open, convert to RGB, resize the shorter side, crop the centre, save."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), FILTERS[RESIZE_FILTER])
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image.crop((left, top, left + size, top + size)).save(out_path, "JPEG", quality=quality)


FLOOR_STAGES = {  # label -> the codec work per image (no statistics, hashes, tar or files)
    "decode": lambda data: decode_rgb(data, SIZE),
    "decode + resize": lambda data: resize_and_center_crop(decode_rgb(data, SIZE)[0], SIZE),
    "decode + resize + encode": lambda data: encode_jpeg(
        resize_and_center_crop(decode_rgb(data, SIZE)[0], SIZE), QUALITY
    ),
    "decode + resize + encode + decode back": lambda data: transform(data, SIZE, QUALITY),
}
_floor_inputs: list[bytes] = []  # the JPEG bytes, inherited by the forked floor processes


def _floor_share(args: tuple[str, int, int]) -> float:
    """CPU seconds of one process's share of a floor stage."""
    stage, part, parts = args
    work = FLOOR_STAGES[stage]
    start = time.process_time()
    for data in _floor_inputs[part::parts]:
        work(data)
    return time.process_time() - start


def floor_times(datas: list[bytes], workers: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of each floor stage over all of `datas`, `workers` processes in parallel, as the
    sharder's workers run."""
    global _floor_inputs
    _floor_inputs = datas
    times = {}
    with mp.get_context("fork").Pool(workers, initializer=store.init_worker_process) as pool:  # one torch thread
        pool.map(_floor_share, [(stage, 0, 64) for stage in FLOOR_STAGES])  # warm-up: first resize, caches
        for stage in FLOOR_STAGES:
            start = time.perf_counter()
            cpu = pool.map(_floor_share, [(stage, part, workers) for part in range(workers)], chunksize=1)
            times[stage] = (time.perf_counter() - start, sum(cpu))
    _floor_inputs = []
    return times


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far (Linux /proc), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (the pool's server and workers included), from /proc/PID/task/PID/children."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as f:
                todo += [int(child) for child in f.read().split()]
        except OSError:
            pass
    return tree


def run_cli_shard(src: str, out: str, workers: int, shard_size: int) -> tuple[float, float | None]:
    """(wall, CPU) seconds of `cli.py shard` in a fresh process, until it exits. CPU: all its processes, sampled
    every 20 ms from /proc (None elsewhere): wall time alone also counts the turns its neighbours take."""
    import cli

    command = [sys.executable, "-m", "cli", "shard", "--src", src, "--out", out, "--split", "train"]
    command += ["--workers", str(workers), "--shard-size", str(shard_size)]
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.abspath(cli.__file__))}
    cpu: dict[int, float] = {}
    # output to a file, not a pipe: the pool's server process keeps its copy of the descriptors open for a
    # moment after the run has exited, and reading a pipe to its end would wait for that
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        while proc.poll() is None:
            for pid in process_tree(proc.pid):
                cpu[pid] = max(cpu.get(pid, 0.0), cpu_seconds(pid))
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        time.sleep(1)  # the pool's server exits a moment after the run: not into the next measurement
        if proc.returncode:
            log.seek(0)
            raise UserError(f"cli.py shard failed in the benchmark: {log.read().decode()[-500:]}")
    return seconds, (sum(cpu.values()) if os.path.isdir("/proc/self/task") else None)


def copy_subset(items, dest: str) -> list[str]:
    """The items as files under dest/train/<wnid>/, so the project and the baseline read exactly the same files."""
    for it in items:
        path = os.path.join(dest, "train", it.wnid, os.path.basename(it.source))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(it.read())
    return sorted(os.path.join(root, n) for root, _, names in os.walk(os.path.join(dest, "train")) for n in names)


def bench_shard(
    src: str | None,
    workers: int,
    limit: int = 800,
    json_out: str | None = None,
    repeats: int = 2,
    cluster: str | None = None,
) -> dict:
    """Convert the same `limit` training images both ways (`repeats` times each); print the rates and ratios."""
    scratch = tempfile.mkdtemp(prefix="bench-shard-")
    try:
        if src is None:  # ImageNet-like: real photographs, shorter side 180-500 px
            src = make_sample_tree(os.path.join(scratch, "src"), train_per_class=-(-limit // 8), val_per_class=0)
        items = find_splits(src, "train", None)["train"][:limit]
        if not items:
            raise UserError(f"no training images under {src}")
        files = copy_subset(items, os.path.join(scratch, "subset"))
        for path in files[:8]:  # warm the page cache for both runs
            naive_convert(path, os.path.join(scratch, "warm.jpg"))
        shard_size = max(1, -(-len(files) // (workers * 4)))  # enough shards to keep every worker busy
        if cluster:
            return bench_cluster(scratch, files, workers, shard_size, repeats, cluster, json_out)
        small = copy_subset(items[:workers], os.path.join(scratch, "small"))  # one image per worker
        datas = []
        for path in files:
            with open(path, "rb") as f:
                datas.append(f.read())
        baseline, floors, small_runs, runs = [], [], [], []  # (wall, CPU) seconds of each repeat
        for run in range(repeats):  # alternating, best of `repeats`: this machine's neighbours are noisy
            wall, cpu = time.perf_counter(), time.process_time()
            os.makedirs(os.path.join(scratch, f"baseline{run}"))
            for n, path in enumerate(files):
                naive_convert(path, os.path.join(scratch, f"baseline{run}", f"{n}.jpg"))
            baseline.append((time.perf_counter() - wall, time.process_time() - cpu))
            floors.append(floor_times(datas, workers))
            out = os.path.join(scratch, f"wds{run}")
            small_runs.append(run_cli_shard(os.path.join(scratch, "small"), out + "-small", workers, 1))
            runs.append(run_cli_shard(os.path.join(scratch, "subset"), out, workers, shard_size))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report_local(len(files), len(small), workers, baseline, floors, small_runs, runs, json_out)


def best(times: list[tuple[float, float | None]]) -> tuple[float, float | None]:
    """The least wall and the least CPU seconds over repeats."""
    cpus = [cpu for _, cpu in times if cpu is not None]
    return min(wall for wall, _ in times), (min(cpus) if cpus else None)


def report_local(images, small, workers, baseline, floors, small_runs, runs, json_out) -> dict:
    """Rates from wall time (what the targets are about) and from CPU time (what the processes did, without the
    turns this machine's neighbours take): images per CPU-second is a rate per core."""
    (base_wall, base_cpu), (small_wall, small_cpu), (run_wall, run_cpu) = best(baseline), best(small_runs), best(runs)
    if run_wall - small_wall <= 0.05 * run_wall:
        print(f"note: {images} images are too few to tell the steady state from the start-up; try --limit 1000")
    steady = (images - small) / max(run_wall - small_wall, 1e-9)
    steady_cpu = (images - small) / max(run_cpu - small_cpu, 1e-9) if run_cpu and small_cpu else None
    floor = {stage: best([f[stage] for f in floors]) for stage in FLOOR_STAGES}
    floor_wall = {stage: images / wall / workers for stage, (wall, _) in floor.items()}
    floor_cpu = {stage: images / cpu for stage, (_, cpu) in floor.items()}
    full, codec = "decode + resize + encode + decode back", "decode + resize + encode"
    result = {
        "images": images,
        "workers": workers,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "repeats": len(runs),
        "baseline_img_s": images / base_wall,
        "project_img_s": steady,  # steady state
        "project_run_img_s": images / run_wall,  # the whole run, start-up included
        "startup_s": small_wall - small / steady,
        "floor_img_s_per_core": floor_wall,
        "project_img_s_per_core": steady / workers,
        "share_of_floor": steady / workers / floor_wall[full],
        "per_cpu_second": {
            "baseline": images / base_cpu,
            "project_steady": steady_cpu,
            "floor": floor_cpu,
            "share_of_floor": steady_cpu / floor_cpu[full] if steady_cpu else None,
        },
        "seconds": {"baseline": baseline, "project": runs, "project_small": small_runs},  # (wall, CPU) pairs
    }
    result["ratio"] = result["project_img_s"] / result["baseline_img_s"]
    per_cpu = lambda rate: f"   {rate:10,.1f}" if rate else ""  # noqa: E731
    rows = [
        ("baseline (1 process, naive PIL)", result["baseline_img_s"], per_cpu(images / base_cpu)),
        (f"cli.py shard ({workers} workers), whole run", result["project_run_img_s"], ""),
        (f"cli.py shard ({workers} workers), steady state", steady, per_cpu(steady_cpu)),
        ("  per worker", steady / workers, ""),
    ]
    rows += [(f"floor per core: {stage}", floor_wall[stage], per_cpu(floor_cpu[stage])) for stage in FLOOR_STAGES]
    footer = [
        "(last column: images per CPU-second, from the CPU time of the processes: a rate per core)",
        f"ratio {result['ratio']:.2f}x: steady state / baseline (target: at least 2.5x on 2 workers)",
        f"per worker: {100 * result['share_of_floor']:.0f}% of the floor with decode back, "
        f"{100 * steady / workers / floor_wall[codec]:.0f}% of decode + resize + encode (target: 85%)",
        f"start-up and finish: {result['startup_s']:.2f} s (target: under 1.5 s)",
        f"spread over {len(runs)} runs: baseline {spread(baseline)}, shard {spread(runs)}, "
        f"one image per worker {spread(small_runs)}",
    ]
    if steady_cpu:
        footer.insert(
            2,
            f"  from CPU time: {workers * steady_cpu / (images / base_cpu):.2f}x on {workers} idle cores; per core "
            f"{100 * steady_cpu / floor_cpu[full]:.0f}% of the floor with decode back, "
            f"{100 * steady_cpu / floor_cpu[codec]:.0f}% of decode + resize + encode",
        )
    title = f"bench shard: {images} images, {os.cpu_count()} cores, best of {len(runs)}"
    return report_rates(title, rows, footer, result, json_out)


def spread(times: list[tuple[float, float | None]]) -> str:
    walls = [wall for wall, _ in times]
    return f"{min(walls):.2f}-{max(walls):.2f} s" if len(walls) > 1 else f"{walls[0]:.2f} s"


def bench_cluster(scratch, files, workers, shard_size, repeats, cluster, json_out) -> dict:
    """The Dask cluster against the local pool (what the cluster's scheduling and transfers cost), in-process."""
    local_s, cluster_s = [], []
    for run in range(repeats):
        for name, address, times in (("local", None, local_s), ("cluster", cluster, cluster_s)):
            cfg = ShardConfig(
                src=os.path.join(scratch, "subset"),
                out=os.path.join(scratch, f"{name}{run}"),
                split="train",
                workers=workers,
                shard_size=shard_size,
                progress=False,
                cluster=address,
            )
            start = time.perf_counter()
            convert_quietly(cfg)
            times.append(time.perf_counter() - start)
    result = {
        "images": len(files),
        "workers": workers,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "repeats": repeats,
        "cluster": cluster,
        "baseline_img_s": len(files) / min(local_s),
        "project_img_s": len(files) / min(cluster_s),
    }
    result["ratio"] = result["project_img_s"] / result["baseline_img_s"]
    return report_rates(
        f"bench shard: {len(files)} images, {os.cpu_count()} cores, best of {repeats}",
        [
            (f"cli.py shard (local pool, {workers} processes)", result["baseline_img_s"], ""),
            (f"cli.py shard --cluster {cluster}", result["project_img_s"], ""),
        ],
        [f"cluster / local {result['ratio']:.2f}x (target: at least 0.91x, i.e. at most 10% slower)"],
        result,
        json_out,
    )


def convert_quietly(cfg: ShardConfig) -> None:
    """The full sharding run (manifest, stats, index) with its report silenced, so only the table prints."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        convert(cfg)

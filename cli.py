"""Command line: ImageNet -> WebDataset shards -> DALI -> AlexNet.

The only place that parses arguments. Each command builds its config and calls one library function; heavy
imports (torch, DALI) happen inside it. A user mistake ends here as one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys

import click

from pipelines.config import MEANS
from shards.cache import CacheConfig
from shards.convert import ShardConfig
from shards.errors import UserError, explain
from shards.format import DEFAULT_SHARDS, SPLITS
from shards.stage import stage as copy_to_disk
from trainer.config import ARCHS, BACKENDS, SCHEDULES, EvalConfig, TrainConfig


def user_errors(fn):
    """Turn a user mistake, a missing package, Ctrl-C or a full disk into one clear line and a non-zero exit
    (shards.errors.explain says which line), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (Exception, KeyboardInterrupt) as e:
            if (explained := explain(e)) is None:
                raise
            click.echo(explained[0], err=True)
            sys.exit(explained[1])

    return wrapper


def setting(owner, name: str, *decls: str, **kwargs):
    """A click option for the field `name` of the dataclass `owner` (or the parameter `name` of the function
    `owner`), with its declared default (shown in --help) and type: each setting is declared once, where the
    command takes it, and the option is named as it."""
    if dataclasses.is_dataclass(owner):
        field = next(f for f in dataclasses.fields(owner) if f.name == name)
        default, annotation = field.default, field.type
    else:
        parameter = inspect.signature(owner).parameters[name]
        default, annotation = parameter.default, parameter.annotation
    if default is False and "type" not in kwargs:
        kwargs["is_flag"] = True
    elif "type" not in kwargs:  # annotations are strings here (from __future__ import annotations): "int | None"
        kwargs["type"] = {"int": int, "float": float}.get(str(annotation).split(" |")[0], str)
    if default not in (dataclasses.MISSING, inspect.Parameter.empty):
        kwargs.setdefault("default", default)
    kwargs.setdefault("show_default", kwargs.get("default") is not None and kwargs.get("default") is not False)
    return click.option(*(decls or (f"--{name.replace('_', '-')}",)), name, **kwargs)


def cache_options(fn):
    """--cache-dir, --cache-limit and --fetch-concurrency of a command that reads shards (shards.cache.CacheConfig),
    handed over as `cache=CacheConfig(...)`."""

    @setting(
        CacheConfig,
        "cache_dir",
        help="Shards on a store (s3://, gs://) stream through a cache here, one folder per URL "
        "[default: $XDG_CACHE_HOME/alexnet-wds/shards, else ~/.cache/...].",
    )
    @setting(
        CacheConfig,
        "cache_limit",
        metavar="SIZE",
        help="Bytes the cache may hold (200GB, 500MiB, ...) [default: the dataset, at most 80% of the disk].",
    )
    @setting(CacheConfig, "fetch_concurrency", help="Shard downloads in flight per process.")
    @functools.wraps(fn)
    def wrapper(cache_dir, cache_limit, fetch_concurrency, **options):
        return fn(cache=CacheConfig(cache_dir, cache_limit, fetch_concurrency), **options)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main():
    """ImageNet -> 256x256 WebDataset shards -> DALI pipeline -> AlexNet (Krizhevsky et al. 2012)."""


# ----------------------------------------------------------------------------------------------- shards
@main.command()
@setting(
    ShardConfig,
    "src",
    required=True,
    help="ImageNet folder (train/ and/or val/) or an ILSVRC2012 *.tar archive; a path or a URL (s3://, gs://).",
)
@setting(ShardConfig, "out", help="Shard directory to write (a path or a URL).")
@setting(ShardConfig, "split", type=click.Choice(SPLITS), help="Only this split (archives: which one).")
@setting(
    ShardConfig,
    "val_labels",
    type=click.Path(),
    help="Labels for a flat val folder/tar: LOC_val_solution.csv or 'filename wnid' lines.",
)
@setting(ShardConfig, "workers", show_default=False, help="Processes [default: all cores].")
@setting(
    ShardConfig,
    "shard_size",
    help="Samples per shard (default: at most 1000, and at least min(64, N/16) shards per split).",
)
@setting(ShardConfig, "quality", type=click.IntRange(1, 100), help="JPEG quality.")
@setting(ShardConfig, "size", help="Output side (shorter side resize + centre crop).")
@setting(ShardConfig, "seed", help="Seed of the training shuffle.")
@setting(ShardConfig, "overwrite", help="Redo a split written with different parameters.")
@setting(
    ShardConfig,
    "cluster",
    metavar="ADDRESS",
    help="Run on the Dask scheduler at ADDRESS (tcp://HOST:8786) instead of local processes.",
)
@user_errors
def shard(**options):
    """Convert raw ImageNet into 256x256 WebDataset shards with manifest, index files and statistics."""
    from shards.convert import convert

    convert(ShardConfig(**options))


@main.command()
@click.option("--shards", default=DEFAULT_SHARDS, show_default=True, help="Shard directory (a path or a URL).")
@click.option("--recompute", is_flag=True, help="Decode the training shards again and recompute from pixels.")
@click.option("--workers", type=int, default=None, help="Processes for --recompute (default: all cores).")
@user_errors
def stats(shards, recompute, workers):
    """Print (and write) stats.json: per-channel mean/std and the RGB PCA of the training split."""
    from shards.stats_command import stats_command

    stats_command(shards, recompute=recompute, workers=workers or os.cpu_count())


@main.command()
@click.option("--shards", default=DEFAULT_SHARDS, show_default=True, help="Shard directory (a path or a URL).")
@user_errors
def verify(shards):
    """Check every shard against the manifest (size, sha256, sample count, index); exit 1 if any is bad."""
    from shards.verify import verify_command

    if not verify_command(shards):
        sys.exit(1)


@main.command()
@click.option("--shards", required=True, help="Shard directory to copy (usually a URL: s3://...).")
@click.option("--to", required=True, type=click.Path(), help="Local directory (e.g. on NVMe).")
@setting(copy_to_disk, "workers", help="Parallel downloads.")
@user_errors
def stage(**options):
    """Copy a shard directory to local disk: parallel, resumable, sha256-checked; the result passes verify."""
    copy_to_disk(**options)


# ----------------------------------------------------------------------------------------------- training
# Options of train/eval/bench are named as the fields of their config (or the parameters of their function),
# so each command hands its keyword arguments over unchanged.
@main.command()
@setting(TrainConfig, "shards")
@setting(TrainConfig, "out", help="Run directory.")
@setting(TrainConfig, "gpus", help="Processes, one per GPU (0 = CPU). Default: all GPUs, else CPU.")
@setting(TrainConfig, "procs", help="N CPU processes over gloo (tests the distributed path).")
@setting(TrainConfig, "epochs")
@setting(TrainConfig, "batch_size", help="Per process (paper: 128).")
@setting(
    TrainConfig,
    "lr",
    help="Learning rate [default: 0.01, the paper's; with --resume: the checkpoint's, or this value].",
)
@setting(TrainConfig, "max_steps", help="Stop after this many optimizer steps.")
@setting(
    TrainConfig,
    "resume",
    type=click.UNPROCESSED,
    is_flag=False,
    flag_value=True,
    metavar="[auto]",
    show_default=False,
    help="Continue from RUN/checkpoint.pt exactly where it stopped; `--resume auto`: continue if it exists, "
    "else start (the same command for every submission of a requeued job).",
)
@setting(
    TrainConfig,
    "stop_signal",
    metavar="SIGNAL",
    help="Also stops the run like SIGTERM and Ctrl-C (finish the step, save, exit); Slurm: --signal=USR1@120.",
)
@setting(TrainConfig, "arch", type=click.Choice(ARCHS), show_default=True)
@setting(TrainConfig, "schedule", type=click.Choice(SCHEDULES), show_default=True)
@setting(
    TrainConfig,
    "mean",
    type=click.Choice(MEANS),
    show_default=True,
    help="Subtract the mean image (the paper) or the per-channel mean.",
)
@setting(TrainConfig, "compile", help="torch.compile the model (GPU).")
@setting(TrainConfig, "seed")
@setting(TrainConfig, "step_epochs", help="--schedule step: /10 every N epochs.")
@setting(TrainConfig, "checkpoint_minutes", help="Also checkpoint this often within an epoch.")
@setting(TrainConfig, "log_every", help="Steps between log lines/JSONL rows.")
@setting(TrainConfig, "backend", type=click.Choice(BACKENDS), help="Default: nccl on GPUs, else gloo.")
@setting(TrainConfig, "workers", help="Loader threads per process (default: the loader's).")
@cache_options
@user_errors
def train(**options):
    """Train AlexNet on the shards (single process, --gpus N, --procs N or under torchrun)."""
    from trainer.train import launch

    launch(TrainConfig(**options))


@main.command(name="eval")
@setting(EvalConfig, "shards")
@setting(
    EvalConfig,
    "checkpoint",
    required=True,
    help="RUN/best.pt (the lowest validation top-1 error of the run) or RUN/checkpoint.pt (the latest).",
)
@setting(EvalConfig, "ten_crop", help="Average the softmax of 10 views (paper Sec. 4.1).")
@setting(EvalConfig, "batch_size")
@setting(EvalConfig, "gpus", help="Processes, one per GPU (0 = CPU).")
@setting(EvalConfig, "procs", help="N CPU processes over gloo.")
@setting(EvalConfig, "workers", help="Loader threads per process (default: the loader's).")
@setting(EvalConfig, "as_json", "--json", help="Also print the result as JSON.")
@cache_options
@user_errors
def evaluate(**options):
    """Top-1/top-5 error of a checkpoint on the validation split."""
    from trainer.evaluate import evaluate_command

    evaluate_command(EvalConfig(**options))


# ----------------------------------------------------------------------------------------------- looking
@main.command()
@click.option("--shards", default=DEFAULT_SHARDS, show_default=True)
@click.option("--out", default="preview.png", show_default=True)
@click.option("--n", "count", type=int, default=32, show_default=True, help="Number of crops in the grid.")
@click.option("--seed", type=int, default=0, show_default=True)
@cache_options
@user_errors
def preview(shards, out, count, seed, cache):
    """Write a grid of augmented training crops with their labels (what the network sees)."""
    from pipelines.preview import write_preview

    click.echo(f"wrote {write_preview(shards, out, count=count, seed=seed, cache=cache)}")


@main.command()
@click.option("--run", required=True, type=click.Path())
@click.option("--out", default=None, help="PNG to write (default: RUN/curves.png).")
@user_errors
def plot(**options):
    """Plot loss, top-1/top-5 error and images/s from a run's JSONL log."""
    from trainer.plot import plot_run

    click.echo(f"wrote {plot_run(**options)}")


@main.command()
@click.option("--out", default="demo-run", show_default=True, help="Folder for everything the demo makes.")
@click.option("--epochs", type=int, default=None, help="Training epochs (default: fits in a few minutes).")
@user_errors
def demo(out, epochs):
    """End to end on the embedded sample: build it, shard, stats, train, eval, preview, plot."""
    from trainer.demo import run_demo

    run_demo(out, epochs=epochs)


# ----------------------------------------------------------------------------------------------- benchmarks
@main.group()
@user_errors
def bench():
    """Throughput benchmarks, each against a baseline measured in the same run."""
    import importlib.util

    if importlib.util.find_spec("bench") is None:  # bench/ is not part of the installed package
        raise UserError("the benchmarks run from a checkout: `python cli.py bench ...` in the repository's root")


@bench.command(name="shard")
@click.option("--src", default=None, help="Image folder (default: build the embedded sample).")
@click.option("--workers", type=int, default=None, help="Processes (default: all cores).")
@click.option("--limit", type=int, default=800, show_default=True, help="Images to convert.")
@click.option(
    "--cluster",
    default=None,
    metavar="ADDRESS",
    help="Compare the Dask cluster at ADDRESS against the local pool (instead of the naive loop).",
)
@click.option("--json", "json_out", type=click.Path(), default=None, help="Also write the result as JSON.")
@user_errors
def bench_shard(workers, **options):
    """Images/s of `shard` against a plain one-process PIL loop (or, with --cluster, the local pool)."""
    from bench.shard import bench_shard as run

    run(workers=workers or os.cpu_count(), **options)


@bench.command(name="loader")
@click.option("--shards", default=DEFAULT_SHARDS, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=None, help="Threads/processes (default: all cores).")
@click.option("--batches", type=int, default=50, show_default=True, help="Timed batches (after 5 warm-up).")
@click.option(
    "--mean",
    type=click.Choice(MEANS),
    default="image",
    show_default=True,
    help="Mean subtraction: the paper's mean image, or per-channel.",
)
@click.option(
    "--hw-decoder-load",
    type=float,
    default=None,
    help="--device cuda: share of JPEGs for the hardware decoder, 0-1 (default: the loader's).",
)
@click.option(
    "--baseline/--no-baseline", default=True, show_default=True, help="Also time webdataset + DataLoader + NumPy."
)
@click.option("--json", "json_out", type=click.Path(), default=None)
@cache_options
@user_errors
def bench_loader(**options):
    """Images/s of the DALI loader against webdataset + DataLoader with the reference augmentations."""
    from bench.loader import bench_loader as run

    run(**options)


@bench.command(name="train")
@click.option("--shards", default=DEFAULT_SHARDS, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--steps", type=int, default=20, show_default=True)
@click.option("--arch", type=click.Choice(ARCHS), default=ARCHS[0], show_default=True)
@click.option("--workers", type=int, default=None, help="Loader threads (default: the loader's).")
@click.option("--compile", is_flag=True, help="torch.compile the model (the warm-up steps include compiling).")
@click.option(
    "--peak-tflops",
    type=float,
    default=None,
    help="The device's peak for the utilisation (default: known GPUs' dense bf16 peak).",
)
@click.option("--json", "json_out", type=click.Path(), default=None)
@user_errors
def bench_train(**options):
    """Training images/s and FLOP/s utilisation: model alone on synthetic input vs end to end from the shards."""
    from bench.train import bench_train as run

    run(**options)


if __name__ == "__main__":
    main()

"""`make demo` / `cli.py demo`: the whole job end to end on the embedded sample, in a few minutes on a laptop CPU.

Recipe: build a small ImageNet-shaped folder from real photographs (shards.demo_data) -> shard it -> statistics ->
train AlexNet briefly (GPU when there is one, else CPU) -> evaluate top-1/top-5 (centre and 10-crop) ->
preview grid of augmented crops -> training curves -> print where everything is.
"""

from __future__ import annotations

import os
import shutil
import time

import torch

DEMO_CLASSES = 8
DEMO_TRAIN_PER_CLASS = 40  # 320 training images: ~1 minute per epoch on a 2-core CPU
DEMO_VAL_PER_CLASS = 8
DEMO_SHARD_SIZE = 64
DEMO_LR = 1e-3


def run_demo(out: str, epochs: int | None = None) -> dict:
    from pipelines.preview import write_preview
    from shards.convert import ShardConfig, convert
    from shards.demo_data import make_sample_tree

    from .checkpoint import BEST_NAME
    from .evaluate import EvalConfig, evaluate_command
    from .plot import plot_run
    from .train import TrainConfig, launch

    started = time.time()
    gpu = torch.cuda.is_available()
    paths = {name: os.path.join(out, name) for name in ("imagenet-sample", "imagenet-wds", "run")}

    step("1/6 build an ImageNet-shaped sample from real photographs (scikit-image, matplotlib)")
    make_sample_tree(
        paths["imagenet-sample"],
        num_classes=DEMO_CLASSES,
        train_per_class=DEMO_TRAIN_PER_CLASS,
        val_per_class=DEMO_VAL_PER_CLASS,
    )

    step("2/6 shard it: 256x256 WebDataset shards, manifest, DALI index, statistics")
    convert(
        ShardConfig(src=paths["imagenet-sample"], out=paths["imagenet-wds"], shard_size=DEMO_SHARD_SIZE, overwrite=True)
    )

    step(f"3/6 train AlexNet ({'GPU' if gpu else 'CPU, a short run'})")
    shutil.rmtree(paths["run"], ignore_errors=True)  # the demo's own run: start fresh every time
    epochs = epochs or (30 if gpu else 5)
    # lr: the paper's 0.01 suits 1000 classes; with 8 the first steps overshoot (loss ~30), so 10x lower here
    launch(
        TrainConfig(
            shards=paths["imagenet-wds"],
            out=paths["run"],
            gpus=None,
            epochs=epochs,
            batch_size=32,
            lr=DEMO_LR,
            log_every=2,
            checkpoint_minutes=60,
        )
    )
    checkpoint = os.path.join(paths["run"], BEST_NAME)  # the lowest validation top-1 error, not the latest

    step("4/6 evaluate on the validation split: centre crop, then 10-crop (Sec. 4.1)")
    results = {
        "center": evaluate_command(EvalConfig(shards=paths["imagenet-wds"], checkpoint=checkpoint, batch_size=32)),
        "ten_crop": evaluate_command(
            EvalConfig(shards=paths["imagenet-wds"], checkpoint=checkpoint, batch_size=8, ten_crop=True)
        ),
    }

    step("5/6 preview grid of augmented training crops")
    preview = write_preview(paths["imagenet-wds"], os.path.join(out, "preview.png"))

    step("6/6 training curves")
    curves = plot_run(paths["run"], os.path.join(out, "curves.png"))

    minutes = (time.time() - started) / 60
    print(f"\ndone in {minutes:.1f} min. Everything is under {out}/:")
    for label, path in [
        ("raw sample", paths["imagenet-sample"]),
        ("shards", paths["imagenet-wds"]),
        ("statistics", os.path.join(paths["imagenet-wds"], "stats.json")),
        ("run (checkpoints, metrics.jsonl, config.json)", paths["run"]),
        ("preview of augmented crops", preview),
        ("training curves", curves),
    ]:
        print(f"  {label:46} {path}")
    return results


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)

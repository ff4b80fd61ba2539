"""Top-1 / top-5 error on the validation split (`cli.py eval`), and the validation pass `train` runs each epoch.

Every validation image is counted exactly once across ranks: the loader pads ranks to equal batch counts with
label -1, which `topk_correct` and the loss drop, and the sums are reduced over ranks before one `.item()`.
With `--ten-crop` the softmax of the 10 views (4 corners + centre, and their mirrors) is averaged (Sec. 4.1).
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from shards.errors import UserError

from . import distributed
from .checkpoint import load_checkpoint
from .config import EvalConfig
from .device import autocast, place_model, setup_device, to_model_input
from .distributed import DistInfo, all_reduce_sum
from .metrics import errors_from_counts, ten_crop_probs, topk_correct
from .model import build_model


@torch.no_grad()
def evaluate_loader(model: torch.nn.Module, loader, info: DistInfo, ten_crop: bool = False, stop=None) -> dict | None:
    """{'loss', 'top1_err', 'top5_err', 'count'} over the whole split, summed over ranks. `stop` (training's
    StopRequest.poll) is called after every batch on every rank; when it says stop, the pass ends: None."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, device=info.device, dtype=torch.float64)  # loss sum, count, top-1 hits, top-5 hits
    for images, labels in loader:
        labels = labels.to(info.device, non_blocking=True)
        with autocast(info.device):
            if ten_crop:
                probs = ten_crop_probs(model, images.to(info.device, non_blocking=True))
                scores = probs.clamp_min(1e-12).log()  # log of the averaged softmax: NLL of the ensemble
            else:
                scores = model(to_model_input(images, info.device)).float().log_softmax(dim=1)
        # padding (label -1) drops out without a boolean-mask selection, so the host never waits per batch
        sums[0] += F.nll_loss(scores, labels, ignore_index=-1, reduction="sum").double()
        sums[1] += (labels >= 0).sum()
        sums[2:] += topk_correct(scores, labels, (1, 5)).double()
        if stop is not None and stop():
            model.train(was_training)
            return None
    all_reduce_sum(sums, info)
    loss_sum, count, c1, c5 = sums.tolist()
    model.train(was_training)
    return {"loss": loss_sum / count if count else float("nan"), **errors_from_counts([c1, c5], count)}


def evaluate_command(cfg: EvalConfig) -> dict | None:
    """`cli.py eval`: load a checkpoint, measure top-1/top-5 error on the validation split, print it."""
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {cfg.batch_size})")
    distributed.plan_processes(cfg.gpus, cfg.procs)  # fail fast (one clear line) before any process starts
    load_checkpoint(cfg.checkpoint)
    return distributed.launch(evaluate, cfg)


def evaluate(cfg: EvalConfig, info: DistInfo) -> dict:
    import pipelines
    import shards

    state = load_checkpoint(cfg.checkpoint)
    ds = shards.open(cfg.shards)
    if state["classes"] != ds.classes:
        raise UserError(
            f"{cfg.checkpoint} was trained on {len(state['classes'])} classes that differ from the "
            f"{len(ds.classes)} classes of {cfg.shards}"
        )
    setup_device(info.device)
    model = place_model(build_model(len(ds.classes), state["config"]["arch"], weights=state["model"]), info.device)
    loader = pipelines.build_loader(
        cfg.shards,
        split="val",
        batch_size=cfg.batch_size,
        device=info.device,
        rank=info.rank,
        world_size=info.world_size,
        num_threads=cfg.workers,
        cache=cfg.cache,
        mode="ten_crop" if cfg.ten_crop else "center",
        mean=state["config"]["mean"],
    )
    result = evaluate_loader(model, loader, info, ten_crop=cfg.ten_crop)
    result.update(checkpoint=cfg.checkpoint, step=state["step"], epoch=state["epoch"], ten_crop=cfg.ten_crop)
    if info.is_primary:
        views = "10-crop" if cfg.ten_crop else "centre crop"
        print(
            f"{cfg.checkpoint} (step {state['step']}, {views}, {result['count']} images): "
            f"top-1 error {result['top1_err']:.2%}, top-5 error {result['top5_err']:.2%}, "
            f"loss {result['loss']:.4f}"
        )
        if cfg.as_json:
            print(json.dumps(result))
    return result

"""`cli.py train`: AlexNet on the shards, as in Krizhevsky, Sutskever & Hinton (2012), Sec. 5.

Reads top to bottom like nanoGPT's train.py: config -> set up rank/device -> data -> model ->
optimizer/schedule -> (resume) -> loop over epochs (train, validate, checkpoint) -> one training step.
One process per GPU (NCCL + DistributedDataParallel), N CPU processes over gloo (`--procs`), or whatever
torchrun set up (`distributed.launch`). The batch size is per process; the effective global batch is
batch_size x world size (printed at start).

No host sync per step: the loss, the non-finite check and the step count stay on the device
(`metrics.Interval`) and are reduced over ranks once per `log_every` steps; the same reduction carries rank
0's "checkpoint due" flag, so every rank agrees on when to take a time-based checkpoint.

Stopping (`preempt`): SIGTERM, SIGINT or `--stop-signal` (SIGUSR1) ends the step in flight (or the validation
pass), saves the exact state and exits with 128 + the signal; `--resume auto` continues it (docs/training.md).
One run per run folder: the process that started the run holds RUN/.lock until it ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from shards import io as store
from shards.errors import UserError

from . import distributed
from .checkpoint import (
    BEST_NAME,
    CHECKPOINT_NAME,
    check_resumable,
    keep_as_best,
    load_checkpoint,
    save_state,
    set_rng_state,
)
from .config import ARCHS, BACKENDS, MEANS, SCHEDULES, TrainConfig
from .device import autocast, place_model, setup_device, to_model_input
from .distributed import DistInfo, say
from .evaluate import evaluate_loader
from .metrics import Interval, MetricsLog, NonFiniteLoss
from .model import build_model, describe
from .preempt import RunLock, StopRequest, stop_signals
from .schedule import make_scheduler, schedule_step, set_lr

CONFIG_NAME = "config.json"
PAPER_LR = 0.01


@dataclass
class EpochState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed (all epochs)
    batch: int = 0  # batches completed in the current epoch
    val_step: int = -1  # the step of the last validation
    best_top1: float = math.inf  # the lowest validation top-1 error (RUN/best.pt)
    last_epoch_loss: float = math.nan
    last_checkpoint: float = field(default_factory=time.time)

    def done(self, max_steps: int | None) -> bool:
        return max_steps is not None and self.step >= max_steps


def launch(cfg: TrainConfig) -> None:
    """`cli.py train`: check the flags, hold RUN/.lock while every rank runs. A run stopped by a signal (saved)
    ends with exit code 128 + the signal's number, as a process killed by it would report."""
    check_config(cfg)
    os.makedirs(cfg.out, exist_ok=True)
    holder = int(os.environ.get("RANK", 0)) == 0  # the process the user started; under torchrun, global rank 0
    with RunLock(cfg.out) if holder else contextlib.nullcontext():
        if holder:
            store.remove_temporaries(cfg.out)  # a checkpoint half-written when a run was killed
        cfg = replace(cfg, resume=resume_decision(cfg))
        stopped = distributed.launch(train, cfg, forward=stop_signals(cfg.stop_signal))
    if stopped:
        raise SystemExit(128 + stopped)


def check_config(cfg: TrainConfig) -> None:
    import shards

    for name in ("epochs", "batch_size", "log_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(cfg, name)})")
    if cfg.lr is not None and not cfg.lr > 0:
        raise UserError(f"--lr must be positive (got {cfg.lr})")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise UserError(f"--max-steps must be at least 1 (got {cfg.max_steps})")
    if cfg.arch not in ARCHS or cfg.schedule not in SCHEDULES or cfg.mean not in MEANS:
        raise UserError(f"unknown --arch/--schedule/--mean: {cfg.arch}/{cfg.schedule}/{cfg.mean}")
    if cfg.backend not in (None, *BACKENDS):
        raise UserError(f"--backend must be nccl or gloo (got {cfg.backend})")
    if cfg.resume not in (True, False, "auto"):
        raise UserError(f"--resume takes no value, or auto (got {cfg.resume!r})")
    stop_signals(cfg.stop_signal)
    ds = shards.open(cfg.shards)  # a missing/foreign shard directory is a UserError with a hint
    ds.count("train"), ds.count("val")  # both splits are needed


def resume_decision(cfg: TrainConfig) -> bool:
    """Whether this run continues RUN/checkpoint.pt: --resume needs it, no --resume refuses it (a second run
    must not overwrite a first by mistake), --resume auto takes it when it is there (a requeued job)."""
    path = os.path.join(cfg.out, CHECKPOINT_NAME)
    exists = os.path.isfile(path)
    if cfg.resume is True and not exists:
        raise UserError(f"--resume: no checkpoint at {path}; drop --resume to start a new run")
    if cfg.resume is False and exists:
        raise UserError(
            f"{path} exists: pass --resume to continue that run (--resume auto: continue or start), "
            "or choose another --out"
        )
    return exists


def train(cfg: TrainConfig, info: DistInfo) -> int:
    """What every rank runs: `fit` with the stop signals caught (their handlers restored afterwards). Returns 0
    when the run finished or reached --max-steps, else the signal it stopped on (the state saved)."""
    with StopRequest(stop_signals(cfg.stop_signal), info) as stop:
        return fit(cfg, info, stop)


def fit(cfg: TrainConfig, info: DistInfo, stop: StopRequest) -> int:
    import pipelines
    import shards

    # ---- inputs, device
    classes = shards.open(cfg.shards).classes
    ckpt_path = os.path.join(cfg.out, CHECKPOINT_NAME)
    state = load_checkpoint(ckpt_path) if cfg.resume else None
    if state is not None:
        check_resumable(state, cfg, classes, info)
    restored_lr = state["optimizer"]["param_groups"][0]["lr"] if state is not None else None
    lr = cfg.lr or restored_lr or PAPER_LR
    setup_device(info.device)

    # ---- data: each rank reads its own part of every epoch
    loader_kw = dict(
        device=info.device,
        rank=info.rank,
        world_size=info.world_size,
        seed=cfg.seed,
        mean=cfg.mean,
        num_threads=cfg.workers,
        batch_size=cfg.batch_size,
        cache=cfg.cache,
    )
    train_loader = pipelines.build_loader(cfg.shards, split="train", mode="train", **loader_kw)
    val_loader = pipelines.build_loader(cfg.shards, split="val", mode="center", **loader_kw)
    if len(train_loader) == 0:
        raise UserError(
            f"--batch-size {cfg.batch_size} x {info.world_size} process(es) is more than the "
            f"{shards.open(cfg.shards).count('train')} training images: lower --batch-size"
        )

    # ---- the run folder: the resolved config, pipeline settings included
    global_batch = cfg.batch_size * info.world_size
    resolved = {
        **asdict(cfg),
        "lr": lr,
        "world_size": info.world_size,
        "device": info.device.type,
        "global_batch": global_batch,
        "num_classes": len(classes),
        "pipeline": {"train": train_loader.cfg.to_dict(), "val": val_loader.cfg.to_dict()},
    }
    log = None
    if info.is_primary:
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, CONFIG_NAME), "w") as f:
            json.dump(resolved, f, indent=2)
        say(info, "config:\n" + "\n".join(f"  {k}: {v}" for k, v in resolved.items()))
        say(
            info,
            f"{info.world_size} process(es) on {info.device.type}; batch {cfg.batch_size} per process -> "
            f"effective global batch {global_batch}, lr {lr:g} (the paper: batch 128, lr 0.01)",
        )
        log = MetricsLog(cfg.out, since=state["step"] if state is not None else 0)

    # ---- model, optimizer, schedule (the same initial weights on every rank; DDP also broadcasts rank 0's)
    torch.manual_seed(cfg.seed)
    weights = state["model"] if state is not None else None  # resuming: nothing to draw
    model = place_model(build_model(len(classes), cfg.arch, cfg.dropout, weights), info.device)
    say(info, describe(model))
    # Sec. 5: SGD, batch 128, momentum 0.9, weight decay 0.0005 (on all weights and biases, as in the paper)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    progress = EpochState()
    torch.manual_seed(cfg.seed + 1000 + info.rank)  # dropout masks differ between ranks, as between GPUs
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_lr(optimizer, scheduler, lr)  # --resume --lr X: X from now on (else the restored lr: a no-op)
        progress = EpochState(
            epoch=state["epoch"],
            step=state["step"],
            batch=state["batch"],
            val_step=state.get("val_step", state["step"]),
            best_top1=state["best_top1"],
        )
        mine = state["ranks"][info.rank]
        set_rng_state(mine["rng"])
        train_loader.load_state_dict(mine["loader"])
        say(
            info,
            f"resumed {ckpt_path}: epoch {progress.epoch}, step {progress.step}, lr {restored_lr:g}"
            + (f" -> {lr:g} (--lr)" if lr != restored_lr else ""),
        )
    # DDP first, then compile the whole (torch.compile(DDP(model))): Dynamo splits the graph at DDP's bucket
    # boundaries so the gradient all-reduce overlaps the backward (DDPOptimizer); `model` stays the plain module.
    net = (
        DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
        if info.distributed
        else model
    )
    if cfg.compile and info.device.type == "cuda":
        net = torch.compile(net)

    # ---- loop: train an epoch, validate, step the schedule, checkpoint (a stop signal: save and end)
    def checkpoint():
        save_state(ckpt_path, model, optimizer, scheduler, progress, train_loader, info, resolved, classes)

    best_path = os.path.join(cfg.out, BEST_NAME)
    try:
        # a run stopped during its last validation (--max-steps reached) still owes that validation
        while progress.epoch < cfg.epochs and not (progress.done(cfg.max_steps) and progress.val_step == progress.step):
            if progress.batch < len(train_loader) and not progress.done(cfg.max_steps):
                train_one_epoch(net, optimizer, train_loader, progress, cfg, info, log, checkpoint, stop)
            val = None if stop.agreed else evaluate_loader(model, val_loader, info, stop=stop.poll)
            if val is None:
                break
            progress.val_step = progress.step
            epoch_end = progress.batch == len(train_loader)
            lr = optimizer.param_groups[0]["lr"]
            if epoch_end:  # the schedule moves only on whole epochs
                schedule_step(scheduler, cfg, val["top1_err"])
                progress.epoch, progress.batch = progress.epoch + 1, 0
            best = val["top1_err"] < progress.best_top1
            progress.best_top1 = min(progress.best_top1, val["top1_err"])
            checkpoint()
            if best and info.is_primary:
                keep_as_best(ckpt_path)
            at = progress.epoch if epoch_end else round(progress.epoch + progress.batch / len(train_loader), 2)
            say(
                info,
                f"epoch {at} step {progress.step}: "
                f"val loss {val['loss']:.4f}, top-1 error {val['top1_err']:.2%}, top-5 error "
                f"{val['top5_err']:.2%} ({val['count']} images), lr {lr:g} -> "
                f"{optimizer.param_groups[0]['lr']:g}; checkpoint {ckpt_path}" + (f" and {best_path}" if best else ""),
            )
            if log:
                log.write(
                    "val",
                    progress.step,
                    epoch=at,
                    epoch_end=epoch_end,
                    lr=lr,
                    val_loss=val["loss"],
                    top1_err=val["top1_err"],
                    top5_err=val["top5_err"],
                    train_loss=progress.last_epoch_loss,
                )
        if stop.agreed:
            checkpoint()
            stop.barrier()  # no rank ends before the checkpoint is whole
            if log:
                log.write("stop", progress.step, reason=signal.Signals(stop.agreed).name)
    except NonFiniteLoss as e:
        kept = (
            f"the last good checkpoint {ckpt_path} is kept (not overwritten)"
            if os.path.isfile(ckpt_path)
            else "no checkpoint was written"
        )
        if log:
            log.write("stop", e.step, reason="non-finite loss", lr=optimizer.param_groups[0]["lr"])
        raise UserError(
            f"{e} (epoch {progress.epoch + 1}, lr {optimizer.param_groups[0]['lr']:g}); {kept}; lower --lr and rerun"
        ) from None
    finally:
        if log:
            log.close()
    if stop.agreed:
        seconds = stop.seconds()
        say(
            info,
            f"stopped by {signal.Signals(stop.agreed).name} at step {progress.step} (epoch {progress.epoch + 1}, "
            f"batch {progress.batch} of {len(train_loader)}"
            + (f"; {seconds:.1f} s after the signal" if seconds is not None else "")
            + f"): saved {ckpt_path}; continue with: {continue_command()}",
        )
        return stop.agreed
    if progress.done(cfg.max_steps):
        say(
            info,
            f"stopped at --max-steps {cfg.max_steps} (epoch {progress.epoch}); continue with --resume "
            "and a larger --max-steps",
        )
    else:
        say(
            info,
            f"finished {cfg.epochs} epochs ({progress.step} steps); best top-1 error "
            f"{progress.best_top1:.2%}; evaluate it 10-crop with `cli.py eval --checkpoint {best_path} --ten-crop`",
        )
    return 0


def continue_command() -> str:
    """The command line that continues this run: the one that started it, with --resume if it had none."""
    if "train" not in sys.argv[1:2]:
        return "the same configuration with resume=True"
    args = sys.argv[1:]
    if not any(a == "--resume" or a.startswith("--resume=") for a in args):
        args.append("--resume")
    program = ["python", sys.argv[0]] if sys.argv[0].endswith(".py") else [os.path.basename(sys.argv[0])]
    launcher = "torchrun [its options] " if "TORCHELASTIC_RUN_ID" in os.environ else ""
    return launcher + shlex.join(program + args)


def train_one_epoch(
    net, optimizer, loader, progress: EpochState, cfg: TrainConfig, info: DistInfo, log, checkpoint, stop
) -> None:
    """SGD over the rest of the current epoch, or until --max-steps or a stop signal (`progress.batch` says
    which). A progress bar only on a terminal; the log lines every `log_every` steps are plain lines either way."""
    net.train()
    bar = tqdm(
        total=len(loader),
        initial=progress.batch,
        desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
        unit="batch",
        leave=False,
        dynamic_ncols=True,
        disable=not (info.is_primary and cfg.progress and sys.stderr.isatty()),
    )
    interval = Interval(info.device)
    start, it = progress.batch, iter(loader)
    while progress.batch < len(loader):
        t0 = time.perf_counter()
        try:
            images, labels = next(it)
        except StopIteration:
            break
        wait = time.perf_counter() - t0
        loss = train_step(
            net, optimizer, to_model_input(images, info.device), labels.to(info.device, non_blocking=True)
        )
        progress.step, progress.batch = progress.step + 1, progress.batch + 1
        if progress.batch == len(loader):  # let the loader close its epoch (its state moves to the next) first,
            next(it, None)  # so that any checkpoint of this step records the next epoch's start
        interval.add(loss, progress.step, wait)
        bar.update(1)
        last = bool(stop.poll()) or progress.done(cfg.max_steps)  # poll on every rank at every step
        if progress.step % cfg.log_every == 0 or last or progress.batch == len(loader):
            due = info.is_primary and time.time() - progress.last_checkpoint >= cfg.checkpoint_minutes * 60
            row = interval.close(info, flag=due)  # the interval's only host sync; raises NonFiniteLoss
            log_interval(row, progress, optimizer, cfg, info, log, bar, len(loader))
            if row["flag"] and not stop.agreed:
                checkpoint()
        if last:
            break
    bar.close()
    if progress.batch == start:
        raise RuntimeError(
            f"the training loader yielded no batches (epoch {progress.epoch + 1}, "
            f"{start} of {len(loader)} batches done)"
        )
    progress.last_epoch_loss = interval.epoch_loss


def train_step(net, optimizer, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One SGD step on a batch already on the device; returns the loss (detached, still on the device)."""
    with autocast(images.device):  # bf16 on CUDA; the loss in fp32
        loss = F.cross_entropy(net(images).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def log_interval(
    row: dict, progress: EpochState, optimizer, cfg: TrainConfig, info: DistInfo, log, bar, batches: int
) -> None:
    """A human line, a JSONL row and the bar's numbers for one closed interval (primary rank only)."""
    if not info.is_primary:
        return
    ips = row["steps"] * cfg.batch_size * info.world_size / row["seconds"]
    lr = optimizer.param_groups[0]["lr"]
    values = dict(
        epoch=progress.epoch + progress.batch / batches,
        loss=row["loss"],
        loss_now=row["loss_now"],
        lr=lr,
        images_per_s=ips,
        data_wait=row["data_wait"],
    )
    bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{ips:,.0f}")
    if log:
        log.write("train", progress.step, **values)
    say(
        info,
        f"step {progress.step} epoch {values['epoch']:.2f} | loss {row['loss_now']:.4f} (avg "
        f"{row['loss']:.4f}) | {ips:,.0f} img/s | lr {lr:g} | data wait {row['data_wait']:.0%}",
    )

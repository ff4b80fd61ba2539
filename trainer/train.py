"""`cli.py train`: AlexNet on the shards, as in Krizhevsky, Sutskever & Hinton (2012), Sec. 5.

Reads top to bottom like nanoGPT's train.py: plan processes -> set up rank/device -> data -> model ->
optimizer/schedule -> (resume) -> loop over epochs (train, validate, checkpoint). One process per GPU
(NCCL + DistributedDataParallel), N CPU processes over gloo (`--procs`), or whatever torchrun set up.
The batch size is per process; the effective global batch is batch_size x world size (printed at start).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from shards.errors import UserError

from .checkpoint import CHECKPOINT_NAME, load_checkpoint, set_rng_state
from .distributed import DistInfo, cleanup_distributed, plan_processes, setup_distributed, spawn, under_launcher
from .evaluate import evaluate_loader
from .loop import EpochState, NonFiniteLoss, make_scheduler, save_state, say, schedule_step, train_one_epoch
from .metrics import MetricsLog
from .model import ARCHS, build_model, describe

CONFIG_NAME = "config.json"


@dataclass
class TrainConfig:
    """Every knob of `cli.py train`; the defaults are the paper's (Sec. 5) unless a comment says otherwise."""

    shards: str = "./imagenet-wds"
    out: str = "./runs/alexnet"
    gpus: int | None = None         # processes, one per GPU; 0 = CPU; None = all visible GPUs, else CPU
    procs: int | None = None        # N CPU processes over gloo
    backend: str | None = None      # None: nccl on GPUs, gloo on CPU
    epochs: int = 90                # "roughly 90 cycles through the training set"
    batch_size: int = 128           # per process
    lr: float = 0.01                # not rescaled with the global batch: printed so you can choose
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "plateau"       # "plateau": /10 when validation error stops improving; "step": /10 every N
    lr_factor: float = 0.1
    plateau_patience: int = 5       # our choice: the paper does not say how long "stopped improving" is
    step_epochs: int = 30           # --schedule step (torchvision's reference recipe)
    dropout: float = 0.5            # Sec. 4.2
    arch: str = "alexnet"           # or "alexnet-2012" (two towers, Fig. 2)
    mean: str = "image"             # Sec. 2: subtract the mean image of the training set; or "channel" (RGB)
    max_steps: int | None = None    # stop after this many optimizer steps (counted over the whole run)
    resume: bool = False
    compile: bool = False           # torch.compile (CUDA only)
    seed: int = 0
    checkpoint_minutes: float = 30.0
    log_every: int = 50             # steps between human lines / JSONL rows (the only host syncs)
    workers: int | None = None      # loader threads per process (None: the loader's default)
    progress: bool = True


def launch(cfg: TrainConfig) -> None:
    """Check the config, then run one process, spawn one per GPU / CPU process, or join torchrun's group."""
    check_config(cfg)
    if under_launcher():
        return train_worker(cfg)
    nprocs, kind = plan_processes(cfg.gpus, cfg.procs)
    if cfg.backend == "nccl" and kind != "cuda":
        raise UserError("--backend nccl needs GPUs; CPU processes (--procs N, --gpus 0) use gloo")
    if nprocs == 1:
        return train_worker(cfg, kind)
    spawn(train_worker, (cfg,), nprocs, kind)


def check_config(cfg: TrainConfig) -> None:
    import shards

    for name in ("epochs", "batch_size", "log_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(cfg, name)})")
    if not cfg.lr > 0:
        raise UserError(f"--lr must be positive (got {cfg.lr})")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise UserError(f"--max-steps must be at least 1 (got {cfg.max_steps})")
    if cfg.arch not in ARCHS or cfg.schedule not in ("plateau", "step") or cfg.mean not in ("channel", "image"):
        raise UserError(f"unknown --arch/--schedule/--mean: {cfg.arch}/{cfg.schedule}/{cfg.mean}")
    if cfg.backend not in (None, "nccl", "gloo"):
        raise UserError(f"--backend must be nccl or gloo (got {cfg.backend})")
    ds = shards.open(cfg.shards)  # a missing/foreign shard directory is a UserError with a hint
    ds.count("train"), ds.count("val")  # both splits are needed
    path = os.path.join(cfg.out, CHECKPOINT_NAME)
    if cfg.resume and not os.path.isfile(path):
        raise UserError(f"--resume: no checkpoint at {path}; drop --resume to start a new run")
    if not cfg.resume and os.path.isfile(path):
        raise UserError(f"{path} exists: pass --resume to continue that run, or choose another --out")


def train_worker(cfg: TrainConfig, device_kind: str | None = None) -> None:
    info = setup_distributed(device_kind, cfg.backend)
    try:
        train(cfg, info)
    finally:
        cleanup_distributed()


def train(cfg: TrainConfig, info: DistInfo) -> None:
    import pipelines
    import shards

    # ---- inputs and run folder
    classes = shards.open(cfg.shards).classes
    ckpt_path = os.path.join(cfg.out, CHECKPOINT_NAME)
    state = load_checkpoint(ckpt_path) if cfg.resume else None
    if state is not None:
        check_resumable(state, cfg, classes, info)
    cuda = info.device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest algorithms
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    global_batch = cfg.batch_size * info.world_size
    resolved = {**asdict(cfg), "world_size": info.world_size, "device": info.device.type,
                "global_batch": global_batch, "num_classes": len(classes)}
    log = None
    if info.is_primary:
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, CONFIG_NAME), "w") as f:
            json.dump(resolved, f, indent=2)
        say(info, "config:\n" + "\n".join(f"  {k}: {v}" for k, v in resolved.items()))
        say(info, f"{info.world_size} process(es) on {info.device.type}; batch {cfg.batch_size} per process -> "
                  f"effective global batch {global_batch}, lr {cfg.lr:g} (the paper: batch 128, lr 0.01)")
        log = MetricsLog(cfg.out)

    # ---- data: each rank reads its own part of every epoch
    loader_kw = dict(device=info.device.type, rank=info.rank, world_size=info.world_size, seed=cfg.seed,
                     mean=cfg.mean, **({} if cfg.workers is None else {"num_threads": cfg.workers}))
    train_loader = pipelines.build_loader(cfg.shards, split="train", batch_size=cfg.batch_size, mode="train",
                                          **loader_kw)
    val_loader = pipelines.build_loader(cfg.shards, split="val", batch_size=cfg.batch_size, mode="center",
                                        **loader_kw)
    if len(train_loader) == 0:
        raise UserError(f"--batch-size {cfg.batch_size} x {info.world_size} process(es) is more than the "
                        f"{shards.open(cfg.shards).count('train')} training images: lower --batch-size")

    # ---- model, optimizer, schedule (the same initial weights on every rank; DDP also broadcasts rank 0's)
    torch.manual_seed(cfg.seed)
    model = build_model(len(classes), cfg.arch, cfg.dropout).to(info.device)
    say(info, describe(model))
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    # Sec. 5: SGD, batch 128, momentum 0.9, weight decay 0.0005 (on all weights and biases, as in the paper)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    progress = EpochState()
    torch.manual_seed(cfg.seed + 1000 + info.rank)  # dropout masks differ between ranks, as between GPUs
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = EpochState(epoch=state["epoch"], step=state["step"], batch=state["batch"],
                              best_top1=state["best_top1"])
        mine = state["ranks"][info.rank]
        set_rng_state(mine["rng"])
        train_loader.load_state_dict(mine["loader"])
        say(info, f"resumed {ckpt_path}: epoch {progress.epoch}, step {progress.step}")
    net = model = torch.compile(model) if cuda and cfg.compile else model
    if info.distributed:
        net = DistributedDataParallel(net, device_ids=[info.local_rank] if cuda else None)

    # ---- loop: train an epoch, validate, step the schedule, checkpoint
    def checkpoint():
        save_state(ckpt_path, model, optimizer, scheduler, progress, train_loader, info, resolved, classes)

    try:
        while progress.epoch < cfg.epochs and not progress.done(cfg.max_steps):
            epoch_end = train_one_epoch(net, optimizer, train_loader, progress, cfg, info, log, checkpoint)
            val = evaluate_loader(model, val_loader, info)
            lr = optimizer.param_groups[0]["lr"]
            if epoch_end:  # the schedule (and "best") moves only on whole epochs
                schedule_step(scheduler, cfg, val["top1_err"])
                progress.epoch += 1
                progress.best_top1 = min(progress.best_top1, val["top1_err"])
            checkpoint()
            at = progress.epoch if epoch_end else round(progress.epoch + progress.batch / len(train_loader), 2)
            say(info, f"epoch {at} step {progress.step}: "
                      f"val loss {val['loss']:.4f}, top-1 error {val['top1_err']:.2%}, top-5 error "
                      f"{val['top5_err']:.2%} ({val['count']} images), lr {lr:g} -> "
                      f"{optimizer.param_groups[0]['lr']:g}; checkpoint {ckpt_path}")
            if log:
                log.write("val", progress.step, epoch=at, epoch_end=epoch_end, lr=lr,
                          val_loss=val["loss"], top1_err=val["top1_err"], top5_err=val["top5_err"],
                          train_loss=progress.last_epoch_loss)
    except NonFiniteLoss as e:
        kept = (f"the last good checkpoint {ckpt_path} is kept (not overwritten)" if os.path.isfile(ckpt_path)
                else "no checkpoint was written")
        raise UserError(f"{e}; {kept}; lower --lr (now {cfg.lr:g}) and rerun") from None
    finally:
        if log:
            log.close()
    if progress.done(cfg.max_steps):
        say(info, f"stopped at --max-steps {cfg.max_steps} (epoch {progress.epoch}); continue with --resume "
                  "and a larger --max-steps")
    else:
        say(info, f"finished {cfg.epochs} epochs ({progress.step} steps); best top-1 error "
                  f"{progress.best_top1:.2%}; evaluate 10-crop with `cli.py eval --checkpoint {ckpt_path} --ten-crop`")


def check_resumable(state: dict, cfg: TrainConfig, classes: list[str], info: DistInfo) -> None:
    old = state["config"]
    if state["classes"] != classes:
        raise UserError(f"the checkpoint was trained on {len(state['classes'])} other classes than the "
                        f"{len(classes)} of {cfg.shards}; resume with the same --shards")
    if old["arch"] != cfg.arch:
        raise UserError(f"the checkpoint is --arch {old['arch']}, not {cfg.arch}; resume with the same --arch")
    if len(state["ranks"]) != info.world_size or old["batch_size"] != cfg.batch_size:
        raise UserError(f"the checkpoint was written by {len(state['ranks'])} process(es) with --batch-size "
                        f"{old['batch_size']}; an exact resume needs the same (now {info.world_size} with "
                        f"{cfg.batch_size})")


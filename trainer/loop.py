"""The pieces of the training loop that `train.py` calls: one epoch of SGD steps with interval logging,
the learning-rate schedule, and saving the resumable state.

No host sync per step: the loss, the non-finite check and the step count stay on the device and are
reduced over ranks once per `log_every` steps (the same reduction carries rank 0's "checkpoint due" flag,
so every rank agrees on when to take a time-based checkpoint).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import rng_state, save_checkpoint, strip_wrappers
from .distributed import DistInfo, all_gather_objects, all_reduce_sum
from .evaluate import autocast, to_model_input


class NonFiniteLoss(Exception):
    """The loss became inf/NaN; the message names the first such step."""


@dataclass
class EpochState:
    epoch: int = 0           # epochs completed
    step: int = 0            # optimizer steps completed (all epochs)
    batch: int = 0           # batches completed in the current epoch
    best_top1: float = 1.0   # best validation top-1 error at an epoch end
    last_epoch_loss: float = math.nan
    last_checkpoint: float = field(default_factory=time.time)

    def done(self, max_steps: int | None) -> bool:
        return max_steps is not None and self.step >= max_steps


def say(info: DistInfo, msg: str) -> None:
    """Print on the primary rank only (nanoGPT's master_process), without breaking the progress bar."""
    if info.is_primary:
        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()


def make_scheduler(optimizer: torch.optim.Optimizer, cfg):
    """Sec. 5: "divide the learning rate by 10 when the validation error rate stopped improving with the
    current learning rate" (plateau on top-1 error), or every `step_epochs` epochs (--schedule step)."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.lr_factor,
                                                          patience=cfg.plateau_patience)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_epochs, gamma=cfg.lr_factor)


def schedule_step(scheduler, cfg, top1_err: float) -> None:
    """Called once per completed epoch."""
    if cfg.schedule == "plateau":
        scheduler.step(top1_err)
    else:
        scheduler.step()


def save_state(path: str, model, optimizer, scheduler, progress: EpochState, loader, info: DistInfo,
               config: dict, classes: list[str]) -> None:
    """Collective: every rank hands over its RNG states and loader position; the primary rank writes."""
    ranks = all_gather_objects({"rng": rng_state(), "loader": loader.state_dict()}, info)
    if info.is_primary:
        save_checkpoint(path, {
            "model": strip_wrappers(model.state_dict()), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": progress.epoch, "step": progress.step,
            "batch": progress.batch, "best_top1": progress.best_top1, "ranks": ranks, "config": config,
            "classes": list(classes)})
    progress.last_checkpoint = time.time()


def train_step(net, optimizer, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One SGD step on a batch already on the device; returns the loss (detached, still on the device)."""
    with autocast(images.device):  # bf16 on CUDA; the loss in fp32
        loss = F.cross_entropy(net(images).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_one_epoch(net, optimizer, loader, progress: EpochState, cfg, info: DistInfo, log, checkpoint) -> bool:
    """SGD over the rest of the current epoch; True at the epoch's end, False when --max-steps stopped it."""
    net.train()
    device = info.device
    bar = tqdm(total=len(loader), initial=progress.batch, desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
               unit="batch", leave=False, dynamic_ncols=True, disable=not (info.is_primary and cfg.progress))
    stats = torch.zeros(3, device=device, dtype=torch.float64)  # interval: loss sum, steps, non-finite steps
    epoch_loss = [0.0, 0]  # epoch so far, summed over ranks by `report`: loss sum, steps
    first_bad = torch.full((), 2**62, device=device, dtype=torch.int64)
    t_start, wait, steps, stop = time.perf_counter(), 0.0, 0, False
    start, it = progress.batch, iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            images, labels = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        loss = train_step(net, optimizer, to_model_input(images, device), labels.to(device, non_blocking=True))
        progress.step += 1
        progress.batch += 1
        steps += 1
        bar.update(1)
        finite = torch.isfinite(loss)
        first_bad = torch.where(finite, first_bad, torch.clamp(first_bad, max=progress.step))
        kept = torch.where(finite, loss, torch.zeros_like(loss)).double()
        stats += torch.stack([kept, torch.ones_like(kept), (~finite).double()])
        stop = progress.done(cfg.max_steps)
        if progress.step % cfg.log_every == 0 or stop or progress.batch == len(loader):
            report(stats, epoch_loss, first_bad, loss, wait, time.perf_counter() - t_start, steps, progress,
                   optimizer, cfg, info, log, bar, checkpoint)
            t_start, wait, steps = time.perf_counter(), 0.0, 0
        if stop:
            break
    bar.close()
    if progress.batch == start:
        raise RuntimeError(f"the training loader yielded no batches (epoch {progress.epoch + 1}, "
                           f"{start} of {len(loader)} batches done)")
    progress.last_epoch_loss = epoch_loss[0] / epoch_loss[1] if epoch_loss[1] else math.nan
    if progress.batch < len(loader):  # --max-steps stopped it inside the epoch
        return False
    next(it, None)  # stopped on the last batch: let the loader close its epoch (its state moves to the next)
    progress.batch = 0
    return True


def report(stats, epoch_loss, first_bad, loss, wait, elapsed, steps, progress: EpochState, optimizer, cfg,
           info: DistInfo, log, bar, checkpoint) -> None:
    """Once per interval: reduce over ranks (the interval's only host sync), stop on a non-finite loss,
    print a line, write a JSONL row, and take a time-based checkpoint when rank 0's clock says so."""
    due = info.is_primary and time.time() - progress.last_checkpoint >= cfg.checkpoint_minutes * 60
    vec = torch.cat([stats, loss.double().view(1).nan_to_num(0.0),
                     torch.tensor([wait, float(due)], device=stats.device, dtype=torch.float64)])
    all_reduce_sum(vec, info)
    loss_sum, n, bad, loss_now, wait_sum, due = vec.tolist()
    epoch_loss[0], epoch_loss[1] = epoch_loss[0] + loss_sum, epoch_loss[1] + n
    stats.zero_()
    if bad:
        if info.distributed:
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        raise NonFiniteLoss(f"the loss became non-finite (inf/NaN) at step {int(first_bad.item())} "
                            f"(epoch {progress.epoch + 1}, lr {optimizer.param_groups[0]['lr']:g})")
    world = info.world_size
    ips = steps * cfg.batch_size * world / elapsed
    lr = optimizer.param_groups[0]["lr"]
    row = dict(epoch=progress.epoch + progress.batch / bar.total,
               loss=loss_sum / n, loss_now=loss_now / world, lr=lr, images_per_s=ips,
               data_wait=wait_sum / world / elapsed)
    if info.is_primary:
        bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{ips:,.0f}")
        if log:
            log.write("train", progress.step, **row)
        say(info, f"step {progress.step} epoch {row['epoch']:.2f} | loss {row['loss_now']:.4f} (avg "
                  f"{row['loss']:.4f}) | {ips:,.0f} img/s | lr {lr:g} | data wait {row['data_wait']:.0%}")
    if due:
        checkpoint()

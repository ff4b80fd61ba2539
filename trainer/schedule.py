"""The learning-rate schedule of Sec. 5, and changing the lr of a resumed run."""

from __future__ import annotations

import torch


def make_scheduler(optimizer: torch.optim.Optimizer, cfg):
    """Sec. 5: "divide the learning rate by 10 when the validation error rate stopped improving with the
    current learning rate" (plateau on top-1 error), or every `step_epochs` epochs (--schedule step)."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.plateau_patience
        )
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_epochs, gamma=cfg.lr_factor)


def schedule_step(scheduler, cfg, top1_err: float) -> None:
    """Called once per completed epoch."""
    if cfg.schedule == "plateau":
        scheduler.step(top1_err)
    else:
        scheduler.step()


def set_lr(optimizer, scheduler, lr: float) -> None:
    """The lr of a restored optimizer from now on; the schedule divides it from here (StepLR's base too)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = lr
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [lr] * len(optimizer.param_groups)

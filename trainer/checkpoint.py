"""Checkpoints: written atomically (`shards.io.atomic_file`: a kill never leaves half a file), loaded with
`weights_only=True` (no code runs on load), checked for our format tag so a foreign file is a clear error.

Contents: model/optimizer/scheduler state, epoch, step, and per rank the RNG states and the loader position,
which is what makes `--resume` continue exactly as if the run had not stopped. RUN/checkpoint.pt is the latest
state (what --resume continues); RUN/best.pt is the checkpoint of the lowest validation top-1 error so far (what
to evaluate), as timm's CheckpointSaver keeps `model_best` beside `last`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time

import numpy as np
import torch

from shards import io as store
from shards.errors import UserError

from .distributed import DistInfo, all_gather_objects

FORMAT = "alexnet-wds-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"  # the latest state: what --resume continues
BEST_NAME = "best.pt"  # the checkpoint of the lowest validation top-1 error: what to evaluate


def save_checkpoint(path: str, state: dict) -> str:
    """Write state (plus the format tag) to path, whole or not at all."""
    try:
        with store.atomic_file(path) as f:
            torch.save({"format": FORMAT, "version": VERSION, **state}, f)
    except RuntimeError as e:  # torch's zip writer hides a full disk's OSError behind its own error: show it
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise
    return path


def keep_as_best(path: str) -> str:
    """Make RUN/best.pt the checkpoint just written at `path`: a hard link (no second write; the next save of
    `path` is a new file, so the link keeps this one), or a copy where the filesystem has no hard links."""
    best = os.path.join(os.path.dirname(path), BEST_NAME)
    link = f"{best}.tmp-link-{os.getpid()}"
    try:
        os.link(path, link)
        os.replace(link, best)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.remove(link)
        with open(path, "rb") as src, store.atomic_file(best) as out:
            shutil.copyfileobj(src, out, 1 << 24)
    return best


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint written by save_checkpoint; missing, corrupt or foreign files are a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - garbage bytes fail in many ways inside the unpickler; all mean 'corrupt'
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not a readable checkpoint (corrupt, truncated or not written by this trainer): {reason[:200]}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"{path} is not an AlexNet checkpoint of this project (no '{FORMAT}' tag); "
            "pass a RUN/best.pt or RUN/checkpoint.pt written by `cli.py train`"
        )
    if state.get("version") != VERSION:
        raise UserError(f"{path} has checkpoint version {state.get('version')}, this trainer reads {VERSION}")
    return state


def save_state(
    path: str, model, optimizer, scheduler, progress, loader, info: DistInfo, config: dict, classes: list[str]
) -> None:
    """Collective: every rank hands over its RNG states and loader position; the primary rank writes.
    `progress` is the trainer's EpochState (epoch, step, batch, val_step, best_top1; its clock is reset here)."""
    ranks = all_gather_objects({"rng": rng_state(), "loader": loader.state_dict()}, info)
    if info.is_primary:
        save_checkpoint(
            path,
            {
                "model": strip_wrappers(model.state_dict()),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": progress.epoch,
                "step": progress.step,
                "batch": progress.batch,
                "val_step": progress.val_step,
                "best_top1": progress.best_top1,
                "ranks": ranks,
                "config": config,
                "classes": list(classes),
            },
        )
    progress.last_checkpoint = time.time()


def rng_state() -> dict:
    """Every RNG the training step touches (dropout draws from torch's), as weights_only-loadable types."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    """random.setstate wants the nested tuples back (weights_only may return lists)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def strip_wrappers(state_dict: dict) -> dict:
    """Model weights without DDP's 'module.' or torch.compile's '_orig_mod.' prefixes."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def check_resumable(state: dict, cfg, classes: list[str], info: DistInfo) -> None:
    old = state["config"]
    if state["classes"] != classes:
        raise UserError(
            f"the checkpoint was trained on {len(state['classes'])} other classes than the "
            f"{len(classes)} of {cfg.shards}; resume with the same --shards"
        )
    if old["arch"] != cfg.arch:
        raise UserError(f"the checkpoint is --arch {old['arch']}, not {cfg.arch}; resume with the same --arch")
    if len(state["ranks"]) != info.world_size or old["batch_size"] != cfg.batch_size:
        raise UserError(
            f"the checkpoint was written by {len(state['ranks'])} process(es) with --batch-size "
            f"{old['batch_size']}; an exact resume needs the same (now {info.world_size} with "
            f"{cfg.batch_size})"
        )

"""Pure metric functions (top-k, 10-crop averaging), the training interval accumulator, and the two log
channels (a JSONL row per interval/epoch in the run folder, TensorBoard when installed). Human lines are
printed by the training loop itself."""

from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist

from shards.io import write_atomically

from .distributed import DistInfo, all_reduce_sum

METRICS_NAME = "metrics.jsonl"


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Per k, how many samples have their label among the k highest scores; samples with label < 0 (padding
    that makes every rank see equal batches) never match a class index, so they are not counted - without a
    boolean-mask selection (whose data-dependent size would make the host wait for the device). Returns a
    float tensor [len(ks)] on the device, so callers can sum over batches and ranks before one `.item()`."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # [N, k_max], best first
    hit = top == labels[:, None]
    return torch.stack([hit[:, : min(k, k_max)].any(dim=1).sum() for k in ks]).float()


def ten_crop_probs(model: torch.nn.Module, views: torch.Tensor) -> torch.Tensor:
    """Sec. 4.1: "averaging the predictions made by the network's softmax layer on the ten patches".
    views [B,10,3,H,W] -> class probabilities [B,C]."""
    b, v = views.shape[:2]
    logits = model(views.flatten(0, 1)).float()
    return logits.softmax(dim=1).view(b, v, -1).mean(dim=1)


def errors_from_counts(correct: list[float], count: float, ks: tuple[int, ...] = (1, 5)) -> dict:
    """{'top1_err': ..., 'top5_err': ..., 'count': N} from summed correct counts."""
    out = {f"top{k}_err": (1.0 - c / count) if count else float("nan") for k, c in zip(ks, correct, strict=True)}
    out["count"] = int(count)
    return out


class NonFiniteLoss(Exception):
    """The loss became inf/NaN; `step` is the first such optimizer step (over all ranks)."""

    def __init__(self, step: int):
        super().__init__(f"the loss became non-finite (inf/NaN) at step {step}")
        self.step = step


class Interval:
    """The training statistics of one log interval, kept on the device so that no step waits for the host.

    `add` once per step; `close` once per interval: one reduction over ranks (the interval's only host sync,
    which also carries a flag such as rank 0's "checkpoint due"), raises NonFiniteLoss naming the first bad
    step, and starts the next interval. `epoch_loss` averages the closed intervals of the epoch.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.epoch_sum, self.epoch_steps = 0.0, 0
        self._start()

    def _start(self) -> None:
        self.sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss sum, steps, non-finite steps
        self.first_bad = torch.full((), 2**62, device=self.device, dtype=torch.int64)
        self.last = torch.zeros((), device=self.device)
        self.steps, self.wait, self.started = 0, 0.0, time.perf_counter()

    def add(self, loss: torch.Tensor, step: int, wait: float) -> None:
        finite = torch.isfinite(loss)
        self.first_bad = torch.where(finite, self.first_bad, self.first_bad.clamp(max=step))
        kept = torch.where(finite, loss, torch.zeros_like(loss)).double()
        self.sums += torch.stack([kept, torch.ones_like(kept), (~finite).double()])
        self.last, self.steps, self.wait = loss, self.steps + 1, self.wait + wait

    def close(self, info: DistInfo, flag: bool = False) -> dict:
        """{'loss' (interval mean), 'loss_now' (last step, mean over ranks), 'steps', 'seconds', 'data_wait'
        (share of the interval spent waiting for data), 'flag' (set on any rank)}."""
        seconds = time.perf_counter() - self.started
        vec = torch.cat(
            [
                self.sums,
                self.last.double().view(1).nan_to_num(0.0),
                torch.tensor([self.wait, float(flag)], device=self.device, dtype=torch.float64),
            ]
        )
        loss_sum, n, bad, loss_now, wait, flag = all_reduce_sum(vec, info).tolist()
        if bad:
            if info.distributed:
                dist.all_reduce(self.first_bad, op=dist.ReduceOp.MIN)
            raise NonFiniteLoss(int(self.first_bad.item()))
        self.epoch_sum, self.epoch_steps = self.epoch_sum + loss_sum, self.epoch_steps + int(n)
        row = {
            "loss": loss_sum / n,
            "loss_now": loss_now / info.world_size,
            "steps": self.steps,
            "seconds": seconds,
            "data_wait": wait / info.world_size / seconds,
            "flag": bool(flag),
        }
        self._start()
        return row

    @property
    def epoch_loss(self) -> float:
        return self.epoch_sum / self.epoch_steps if self.epoch_steps else float("nan")


class MetricsLog:
    """Appends one JSON object per line to RUN/metrics.jsonl (and scalars to TensorBoard when installed).
    Only the primary rank makes one; other ranks pass None to the loop's helpers.

    Rows after step `since` (the step of the checkpoint this run continues; 0 for a new run) are dropped first:
    a run killed after its last checkpoint logged steps that its continuation logs again."""

    def __init__(self, run_dir: str, tensorboard: bool = True, since: int = 0):
        self.path = os.path.join(run_dir, METRICS_NAME)
        if os.path.exists(self.path):
            kept = [row for row in read_metrics(run_dir) if row["step"] <= since]
            write_atomically(self.path, "".join(json.dumps(row) + "\n" for row in kept))
        self.file = open(self.path, "a", buffering=1)  # noqa: SIM115 - open for the run, closed in close()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(run_dir, "tb"))
            except ImportError:  # tensorboard not installed: JSONL only
                self.tb = None

    def write(self, kind: str, step: int, **values) -> None:
        row = {"kind": kind, "step": step, **values}
        self.file.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k not in ("epoch",):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str) -> list[dict]:
    """Rows of RUN/metrics.jsonl (a torn last line from a killed run is skipped)."""
    rows = []
    with open(os.path.join(run_dir, METRICS_NAME)) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows

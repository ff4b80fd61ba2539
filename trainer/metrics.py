"""Pure metric functions (top-k, 10-crop averaging) and the two log channels (a JSONL row per interval/epoch
in the run folder, TensorBoard when installed). Human lines are printed by the training loop itself."""
from __future__ import annotations

import json
import os

import torch

METRICS_NAME = "metrics.jsonl"


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Per k, how many samples have their label among the k highest scores; samples with label < 0 (padding
    that makes every rank see equal batches) are not counted. Returns a float tensor [len(ks)] on the device,
    so callers can sum over batches and ranks before one `.item()`."""
    keep = labels >= 0
    logits, labels = logits[keep], labels[keep]
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
    out = {f"top{k}_err": (1.0 - c / count) if count else float("nan") for k, c in zip(ks, correct)}
    out["count"] = int(count)
    return out


class MetricsLog:
    """Appends one JSON object per line to RUN/metrics.jsonl (and scalars to TensorBoard when installed).
    Only the primary rank makes one; other ranks pass None to the loop's helpers."""

    def __init__(self, run_dir: str, tensorboard: bool = True):
        self.path = os.path.join(run_dir, METRICS_NAME)
        self.file = open(self.path, "a", buffering=1)
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

"""`cli.py plot`: training curves from RUN/metrics.jsonl -> one PNG (loss, top-1/top-5 error, images/s)."""

from __future__ import annotations

import os

from shards.errors import UserError

from .metrics import METRICS_NAME, read_metrics


def series(rows: list[dict], kind: str, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric from the rows of one kind ("train" per interval, "val" per epoch)."""
    points = [(r["step"], r[key]) for r in rows if r.get("kind") == kind and r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(run: str, out: str | None = None) -> str:
    """Write the curves of a run to `out` (default RUN/curves.png) and return its path."""
    path = os.path.join(run, METRICS_NAME)
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: pass the --out folder of a `cli.py train` run")
    rows = read_metrics(run)
    if not rows:
        raise UserError(f"{path} has no rows yet: train for at least one logging interval first")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_err, ax_speed) = plt.subplots(1, 3, figsize=(15, 4.2))
    ax_loss.plot(*series(rows, "train", "loss"), label="train (interval mean)")
    ax_loss.plot(*series(rows, "val", "val_loss"), "o-", label="validation")
    ax_loss.set(title="cross-entropy loss", xlabel="step", yscale="log")
    for key, name in (("top1_err", "top-1"), ("top5_err", "top-5")):
        steps, values = series(rows, "val", key)
        ax_err.plot(steps, [100 * v for v in values], "o-", label=f"{name} error")
    ax_err.set(title="validation error (centre crop)", xlabel="step", ylabel="%", ylim=(0, 100))
    ax_speed.plot(*series(rows, "train", "images_per_s"), label="images/s (all ranks)")
    ax_speed.set(title="training throughput", xlabel="step", ylabel="images/s", ylim=(0, None))
    for ax in (ax_loss, ax_err, ax_speed):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(os.path.basename(os.path.abspath(run)))
    fig.tight_layout()
    out = out or os.path.join(run, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

"""Pure metrics (top-k, 10-crop averaging, error counts), the JSONL log, the LR schedules and the plot."""

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from shards.errors import UserError
from trainer.metrics import MetricsLog, errors_from_counts, read_metrics, ten_crop_probs, topk_correct
from trainer.plot import plot_run
from trainer.schedule import make_scheduler, schedule_step


def test_topk_by_hand():
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.3, 0.2, 0.8, 0.7],  # label 1: rank 1
            [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # label 6: rank 2
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0],  # label 4: rank 5
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0],  # label 5: rank 6
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        ]
    )  # padding (label -1): not counted
    labels = torch.tensor([1, 6, 4, 5, -1])
    assert topk_correct(logits, labels, (1, 5)).tolist() == [1.0, 3.0]
    assert topk_correct(logits, labels, (1, 2, 3)).tolist() == [1.0, 2.0, 2.0]
    assert errors_from_counts([1.0, 3.0], 4) == {"top1_err": 0.75, "top5_err": 0.25, "count": 4}


def test_topk_with_fewer_classes_than_k():
    logits = torch.tensor([[0.2, 0.8], [0.7, 0.3]])
    assert topk_correct(logits, torch.tensor([0, 0]), (1, 5)).tolist() == [1.0, 2.0]


def test_ten_crop_averages_softmax_not_logits():
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    views = torch.randn(2, 10, 3, 4, 4)
    by_hand = torch.stack(
        [torch.stack([linear(views[b, v : v + 1])[0].softmax(0) for v in range(10)]).mean(0) for b in range(2)]
    )
    probs = ten_crop_probs(linear, views)
    torch.testing.assert_close(probs, by_hand)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))


def test_schedules():
    def lrs(schedule, errors):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
        cfg = SimpleNamespace(schedule=schedule, lr_factor=0.1, plateau_patience=1, step_epochs=2)
        sched, out = make_scheduler(opt, cfg), []
        for err in errors:
            opt.step()
            schedule_step(sched, cfg, err)
            out.append(opt.param_groups[0]["lr"])
        return out

    # plateau: /10 once the validation error has not improved for `patience` epochs
    assert lrs("plateau", [0.9, 0.8, 0.8, 0.8, 0.7]) == pytest.approx([0.01, 0.01, 0.01, 0.001, 0.001])
    assert lrs("step", [0.5] * 5) == pytest.approx([0.01, 0.001, 0.001, 0.0001, 0.0001])


@pytest.fixture
def run_dir(tmp_path):
    log = MetricsLog(str(tmp_path), tensorboard=False)
    for step in range(1, 6):
        log.write(
            "train", step * 10, epoch=step / 5, loss=3 - step * 0.3, lr=0.01, images_per_s=100.0 + step, data_wait=0.1
        )
    log.write("val", 50, epoch=1, epoch_end=True, val_loss=1.2, top1_err=0.6, top5_err=0.2, lr=0.01)
    log.close()
    with open(os.path.join(tmp_path, "metrics.jsonl"), "a") as f:
        f.write('{"kind": "train", "st')  # the torn last line of a killed run
    return str(tmp_path)


def test_jsonl_rows(run_dir):
    rows = read_metrics(run_dir)
    assert len(rows) == 6 and rows[0]["kind"] == "train" and rows[0]["step"] == 10
    assert rows[-1] == {
        "kind": "val",
        "step": 50,
        "epoch": 1,
        "epoch_end": True,
        "val_loss": 1.2,
        "top1_err": 0.6,
        "top5_err": 0.2,
        "lr": 0.01,
    }
    assert all(math.isfinite(r["step"]) for r in rows)
    assert json.loads(json.dumps(rows)) == rows  # plain JSON values (no NaN, which would not compare equal)


def test_a_continuation_drops_the_rows_logged_after_its_checkpoint(run_dir):
    log = MetricsLog(run_dir, tensorboard=False, since=30)  # a killed run logged steps 40 and 50 after it
    log.write("train", 40, loss=1.0)
    log.close()
    assert [(r["kind"], r["step"]) for r in read_metrics(run_dir)] == [("train", s) for s in (10, 20, 30, 40)]


def test_plot_writes_a_png(run_dir, tmp_path):
    import numpy as np
    from PIL import Image

    path = plot_run(run_dir)
    assert path == os.path.join(run_dir, "curves.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), np.float32)
    assert pixels.shape[1] >= 1000 and pixels.shape[0] >= 300  # three panels side by side
    assert (pixels < 128).mean() > 0.005 and pixels.std() > 10  # axes, text and curves drawn: not blank
    coloured = np.abs(pixels[..., 0] - pixels[..., 2]) > 60  # matplotlib's blue/orange lines, not just greys
    assert coloured.mean() > 0.0005
    other = str(tmp_path / "elsewhere.png")
    assert plot_run(run_dir, other) == other and os.path.getsize(other) > 1000


def test_plot_without_metrics_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="metrics.jsonl"):
        plot_run(str(tmp_path))

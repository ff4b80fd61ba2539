"""Training and evaluation on real photographs through the real loader (`pipelines.build_loader`), on the CPU.

AlexNet steps are slow on a CPU (~1 s at batch 4-8), so every test takes few steps on small batches, and the
short run is shared. The paper's lr 0.01 is for batches of 128 over 1000 classes; with 8 classes and batches
of 4-8 it overshoots (each class's output weights get a large share of the gradient), so tests use 1e-4.
"""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from servers import ROOT

import pipelines
import shards
from cli import main
from trainer.checkpoint import load_checkpoint
from trainer.distributed import DistInfo
from trainer.evaluate import evaluate_loader
from trainer.metrics import read_metrics
from trainer.model import build_model
from trainer.train import TrainConfig, launch, train_step

LR = 1e-4
CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def val_loader(sample_shards, batch_size, mode="center"):
    """What the trainer and `eval` read: the validation split, the paper's mean image subtracted."""
    return pipelines.build_loader(
        sample_shards, split="val", batch_size=batch_size, device="cpu", mode=mode, mean="image"
    )


def config(sample_shards, out, **kw) -> TrainConfig:
    return TrainConfig(**{"shards": sample_shards, "out": str(out), "lr": LR, "log_every": 1, "progress": False, **kw})


def paper_sgd(model, lr=LR):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def load_model(path: str):
    state = load_checkpoint(path)
    model = build_model(len(state["classes"]), state["config"]["arch"])
    model.load_state_dict(state["model"])
    return model.eval()


@pytest.fixture(scope="module")
def short_run(sample_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    launch(config(sample_shards, out, batch_size=8, max_steps=8))
    return str(out)


@pytest.mark.slow
def test_a_short_run_logs_and_checkpoints(short_run, sample_shards):
    """(Learning itself: the overfitting test below. Eight steps over different batches of this tiny set move the
    validation loss up or down by chance, whatever the seed.)"""
    rows = read_metrics(short_run)
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 and 0 <= r["data_wait"] <= 1 for r in train_rows)
    (val,) = [r for r in rows if r["kind"] == "val"]
    assert val["step"] == 8 and not val["epoch_end"] and val["val_loss"] > 0
    saved = json.loads(Path(f"{short_run}/config.json").read_text())
    assert saved["mean"] == "image" and saved["lr"] == LR and saved["global_batch"] == 8 and saved["num_classes"] == 8
    pipeline = saved["pipeline"]  # the loader settings the run really used
    assert (pipeline["train"]["mode"], pipeline["val"]["mode"]) == ("train", "center")
    assert pipeline["train"]["mean"] == "image" and pipeline["train"]["lighting_std"] == 0.1
    assert load_checkpoint(f"{short_run}/checkpoint.pt")["step"] == 8
    assert load_checkpoint(f"{short_run}/best.pt")["step"] == 8  # its only validation is the best so far


@pytest.mark.slow
def test_overfits_a_tiny_batch(sample_shards):
    images, labels = next(
        iter(
            pipelines.build_loader(
                sample_shards, split="train", batch_size=4, device="cpu", mode="center", mean="image"
            )
        )
    )
    torch.manual_seed(0)
    model = build_model(8, dropout=0.0)
    optimizer = paper_sgd(model, lr=6e-4)
    losses = [train_step(model, optimizer, images, labels).item() for _ in range(20)]
    assert losses[-1] < 0.3 and losses[-1] < losses[0] / 5, losses


def hand_errors(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Rank of the true class among the scores, counted by hand."""
    rank = (logits > logits[torch.arange(len(labels)), labels][:, None]).sum(dim=1)
    return 1 - (rank < 1).float().mean().item(), 1 - (rank < 5).float().mean().item()


@pytest.mark.slow
def test_eval_matches_a_hand_computation(short_run, sample_shards):
    checkpoint = f"{short_run}/checkpoint.pt"
    result = CliRunner().invoke(
        main,
        ["eval", "--shards", sample_shards, "--checkpoint", checkpoint, "--gpus", "0", "--batch-size", "16", "--json"],
    )
    assert result.exit_code == 0, result.output
    got = json.loads(result.output.strip().splitlines()[-1])
    model = load_model(checkpoint)
    logits, labels = [], []
    with torch.no_grad():
        for x, y in val_loader(sample_shards, 7):
            logits.append(model(x)[y >= 0])
            labels.append(y[y >= 0])
    logits, labels = torch.cat(logits), torch.cat(labels)
    assert got["count"] == len(labels) == shards.open(sample_shards).count("val")
    top1, top5 = hand_errors(logits, labels)
    assert got["top1_err"] == pytest.approx(top1) and got["top5_err"] == pytest.approx(top5)
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-4)
    # the validation the training run did at its last step agrees
    (val,) = [r for r in read_metrics(short_run) if r["kind"] == "val"]
    assert val["top1_err"] == pytest.approx(top1) and val["top5_err"] == pytest.approx(top5)


@pytest.mark.slow
def test_ten_crop_eval_averages_the_softmax_of_the_ten_views(short_run, sample_shards):
    model = load_model(f"{short_run}/checkpoint.pt")
    outputs, labels = [], []

    class Recording(torch.nn.Module):  # the real model; its logits are noted for the hand computation
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            outputs.append(self.model(x))
            return outputs[-1]

    def labelled(loader):  # the real loader, passed through while its labels are noted
        for x, y in loader:
            assert x.shape[1:] == (10, 3, 227, 227)
            labels.append(y)
            yield x, y

    loader = val_loader(sample_shards, 8, mode="ten_crop")
    got = evaluate_loader(Recording(), labelled(itertools.islice(loader, 2)), CPU, ten_crop=True)  # 160 views
    views = torch.cat(outputs).view(-1, 10, 8)
    labels = torch.cat(labels)
    probs = torch.stack([sum(views[i, v].softmax(0) for v in range(10)) / 10 for i in range(len(views))])
    keep = labels >= 0
    top1, top5 = hand_errors(probs[keep], labels[keep])
    assert got["count"] == keep.sum().item() == 16
    assert got["top1_err"] == pytest.approx(top1) and got["top5_err"] == pytest.approx(top5)


@pytest.mark.slow
def test_train_off_a_terminal_prints_plain_lines_without_redraws(sample_shards, tmp_path):
    """Output redirected to a file (a batch job's log): no progress-bar redraws, the periodic step lines."""
    log = tmp_path / "train.log"
    with open(log, "wb") as f:
        done = subprocess.run(
            [
                sys.executable,
                "cli.py",
                "train",
                "--shards",
                sample_shards,
                "--out",
                str(tmp_path / "run"),
                "--gpus",
                "0",
                "--batch-size",
                "4",
                "--max-steps",
                "3",
                "--log-every",
                "1",
                "--lr",
                "1e-4",
            ],
            cwd=ROOT,
            stdout=f,
            stderr=f,
            timeout=300,
        )
    text = log.read_bytes().decode()
    assert done.returncode == 0, text
    assert "\r" not in text and "\x1b[" not in text  # no carriage-return redraws, no cursor movement
    steps = [line.split()[1] for line in text.splitlines() if line.startswith("step ")]
    assert steps == ["1", "2", "3"]


@pytest.mark.slow
def test_plot_of_a_real_run(short_run):
    result = CliRunner().invoke(main, ["plot", "--run", short_run])
    assert result.exit_code == 0 and result.output.strip() == f"wrote {short_run}/curves.png"


@pytest.mark.gpu
def test_gpu_run_bf16_channels_last(sample_shards, tmp_path):
    """--gpus 1: NCCL-free single GPU, bf16 autocast, channels_last, cudnn.benchmark; then eval on the GPU."""
    out = tmp_path / "gpu"
    launch(
        TrainConfig(
            shards=sample_shards, out=str(out), gpus=1, batch_size=32, lr=LR, max_steps=4, log_every=2, progress=False
        )
    )
    state = load_checkpoint(str(out / "checkpoint.pt"))
    assert state["step"] == 4 and state["config"]["device"] == "cuda"
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "--shards",
            sample_shards,
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--gpus",
            "1",
            "--ten-crop",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["count"] == 48

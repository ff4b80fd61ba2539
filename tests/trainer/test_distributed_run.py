"""The distributed path over gloo (2 CPU processes), exact resume, --resume --lr, best.pt and the non-finite stop,
on real images through the real loader."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import pipelines
import trainer.train
from cli import main
from trainer.checkpoint import load_checkpoint
from trainer.distributed import DistInfo
from trainer.evaluate import evaluate_loader
from trainer.metrics import read_metrics
from trainer.model import build_model
from trainer.train import TrainConfig, launch, train_step

LR = 1e-4  # see test_trainer_train.py


def config(sample_shards, out, **kw) -> TrainConfig:
    return TrainConfig(**{"shards": sample_shards, "out": str(out), "lr": LR, "log_every": 1, "progress": False, **kw})


def rank_batch(sample_shards, rank, world_size, batch_size):
    """The first training batch the trainer's loader gives this rank (same arguments, same seed)."""
    loader = pipelines.build_loader(
        sample_shards,
        split="train",
        batch_size=batch_size,
        device="cpu",
        rank=rank,
        world_size=world_size,
        seed=0,
        mode="train",
        mean="image",
    )
    return next(iter(loader))


def relative_difference(a: dict, b: dict, reference: dict) -> float:
    """|| (a - ref) - (b - ref) || / || b - ref || over all weights: how far apart two updates are."""
    num = sum(((a[k] - b[k]).double() ** 2).sum() for k in reference)
    den = sum(((b[k] - reference[k]).double() ** 2).sum() for k in reference)
    return (num / den).sqrt().item()


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_on_the_concatenated_batches(sample_shards, tmp_path):
    out = tmp_path / "ddp"
    # batch 5: 48 validation images = 24 per rank = 5 batches, the last padded with one label -1 sample
    launch(config(sample_shards, out, procs=2, batch_size=5, dropout=0.0, max_steps=1))
    state = load_checkpoint(str(out / "checkpoint.pt"))
    assert state["step"] == 1 and len(state["ranks"]) == 2

    (x0, y0), (x1, y1) = (rank_batch(sample_shards, r, 2, 5) for r in (0, 1))
    assert not any(torch.equal(a, b) for a in x0 for b in x1)  # every rank sees different samples
    torch.manual_seed(0)  # the trainer's initial weights
    model = build_model(8, dropout=0.0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    one_rank = build_model(8, dropout=0.0)
    one_rank.load_state_dict(initial)
    train_step(
        model,
        torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4),
        torch.cat([x0, x1]),
        torch.cat([y0, y1]),
    )
    train_step(one_rank, torch.optim.SGD(one_rank.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4), x0, y0)
    ddp = state["model"]
    assert relative_difference(ddp, model.state_dict(), initial) < 1e-3
    assert relative_difference(one_rank.state_dict(), model.state_dict(), initial) > 0.1  # the check can fail

    # validation inside the 2-rank run counted every image once: same as one process on the same weights
    (val,) = [r for r in read_metrics(str(out)) if r["kind"] == "val"]
    model.load_state_dict(ddp)
    single = evaluate_loader(
        model,
        pipelines.build_loader(sample_shards, split="val", batch_size=16, device="cpu", mode="center", mean="image"),
        DistInfo(0, 0, 1, torch.device("cpu")),
    )
    assert single["count"] == 48
    assert (val["top1_err"], val["top5_err"]) == pytest.approx((single["top1_err"], single["top5_err"]))
    assert val["val_loss"] == pytest.approx(single["loss"], rel=1e-4)


class Killed(Exception):
    pass


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(sample_shards, tmp_path, monkeypatch):
    kw = dict(batch_size=4, checkpoint_minutes=0)  # dropout on: the resumed run must restore the RNG too
    launch(config(sample_shards, tmp_path / "straight", max_steps=4, **kw))

    save_state = trainer.train.save_state

    def save_then_die(path, model, optimizer, scheduler, progress, *args):
        save_state(path, model, optimizer, scheduler, progress, *args)
        if progress.step == 2:  # the time-based checkpoint of step 2 is on disk; the process dies
            raise Killed

    monkeypatch.setattr(trainer.train, "save_state", save_then_die)
    with pytest.raises(Killed):
        launch(config(sample_shards, tmp_path / "killed", max_steps=4, **kw))
    monkeypatch.undo()
    assert load_checkpoint(str(tmp_path / "killed" / "checkpoint.pt"))["step"] == 2
    launch(config(sample_shards, tmp_path / "killed", max_steps=4, resume=True, **kw))

    a = load_checkpoint(str(tmp_path / "straight" / "checkpoint.pt"))
    b = load_checkpoint(str(tmp_path / "killed" / "checkpoint.pt"))
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    losses = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "straight")) if r["kind"] == "train"}
    resumed = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "killed")) if r["kind"] == "train"}
    assert resumed == losses  # steps 1-2 before the kill, 3-4 after it: the same losses


@pytest.mark.slow
def test_resume_with_a_new_lr_applies_it_to_the_restored_optimizer(sample_shards, tmp_path):
    out = tmp_path / "lr"
    kw = dict(batch_size=4, schedule="step")
    launch(config(sample_shards, out, max_steps=1, **kw))
    launch(config(sample_shards, out, max_steps=2, resume=True, **{**kw, "lr": 5e-5}))
    state = load_checkpoint(str(out / "checkpoint.pt"))
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [5e-5]
    assert state["scheduler"]["base_lrs"] == [5e-5]  # the step schedule divides the new lr from here
    assert json.loads(Path(out / "config.json").read_text())["lr"] == 5e-5
    launch(config(sample_shards, out, max_steps=3, resume=True, **{**kw, "lr": None}))  # no --lr: keep it
    assert json.loads(Path(out / "config.json").read_text())["lr"] == 5e-5
    lrs = [(r["step"], r["lr"]) for r in read_metrics(str(out)) if r["kind"] == "train"]
    assert lrs == [(1, LR), (2, 5e-5), (3, 5e-5)]
    # three validations (steps 1, 2, 3): best.pt is the first with the lowest top-1 error, checkpoint.pt the last
    vals = [r for r in read_metrics(str(out)) if r["kind"] == "val"]
    best = min(vals, key=lambda r: r["top1_err"])
    assert load_checkpoint(str(out / "best.pt"))["step"] == best["step"] != 3
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == 3


@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(sample_shards, tmp_path):
    out = tmp_path / "nan"
    launch(config(sample_shards, out, batch_size=4, max_steps=2))  # a good checkpoint at step 2
    good = load_checkpoint(str(out / "checkpoint.pt"))
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--shards",
            sample_shards,
            "--out",
            str(out),
            "--resume",
            "--lr",
            "1e6",
            "--batch-size",
            "4",
            "--max-steps",
            "12",
            "--log-every",
            "1",
        ],
    )
    assert result.exit_code == 2, result.output
    rows = read_metrics(str(out))
    (stop,) = [r for r in rows if r["kind"] == "stop"]
    assert 3 <= stop["step"] <= 12 and stop["reason"] == "non-finite loss" and stop["lr"] == 1e6
    assert f"non-finite (inf/NaN) at step {stop['step']} " in result.output
    assert f"the last good checkpoint {out / 'checkpoint.pt'} is kept" in result.output
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, stop["step"]))  # every step before it, logged
    assert max(r["loss"] for r in train_rows) < 1e30
    kept = load_checkpoint(str(out / "checkpoint.pt"))
    assert kept["step"] == 2 and all(torch.equal(kept["model"][k], v) for k, v in good["model"].items())

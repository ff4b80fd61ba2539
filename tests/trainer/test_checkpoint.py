"""Checkpoints (trainer/checkpoint.py): atomic write, best.pt, weights_only load, clear errors, RNG round trip."""

import errno
import os
import pickle
import random
import resource
from pathlib import Path

import numpy as np
import pytest
import torch

from shards.errors import UserError
from trainer.checkpoint import (
    keep_as_best,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    strip_wrappers,
)


def test_round_trip_with_weights_only(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    state = {
        "model": {"w": torch.arange(6.0)},
        "step": 7,
        "ranks": [{"loader": {"epoch": 1, "raw": b"\x00\x01"}}],
        "classes": ["n1", "n2"],
        "best": float("inf"),
    }
    save_checkpoint(path, state)
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind
    back = load_checkpoint(path)
    assert back["step"] == 7 and back["classes"] == ["n1", "n2"] and back["ranks"][0]["loader"]["raw"] == b"\x00\x01"
    torch.testing.assert_close(back["model"]["w"], torch.arange(6.0))


def test_a_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, {"step": 1})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # a real write failure part way: files over 1 MiB
    try:
        with pytest.raises(OSError) as failed:
            save_checkpoint(path, {"step": 2, "model": {"w": torch.zeros(1 << 20)}})  # 4 MiB
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert failed.value.errno == errno.EFBIG
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # the partial temporary was removed


def test_best_is_a_snapshot_of_the_checkpoint_it_was_made_from(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, {"step": 1})
    assert keep_as_best(path) == str(tmp_path / "best.pt")
    save_checkpoint(path, {"step": 2})  # the next checkpoint is a new file: best.pt still holds step 1
    assert load_checkpoint(str(tmp_path / "best.pt"))["step"] == 1 and load_checkpoint(path)["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "checkpoint.pt"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_corrupt_truncated_and_foreign_files_are_user_errors(tmp_path):
    good = str(tmp_path / "good.pt")
    save_checkpoint(good, {"step": 1, "model": {"w": torch.zeros(1000)}})
    data = Path(good).read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)  # e.g. someone else's checkpoint
    code = tmp_path / "code.pt"
    with open(code, "wb") as f:
        pickle.dump(os.system, f)  # a pickle that would run code without weights_only
    for path, message in (
        (truncated, "not a readable checkpoint"),
        (garbage, "not a readable checkpoint"),
        (foreign, "not an AlexNet checkpoint"),
        (code, "not a readable checkpoint"),
        (tmp_path / "missing.pt", "no checkpoint"),
    ):
        with pytest.raises(UserError, match=message):
            load_checkpoint(str(path))


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    path = str(tmp_path / "rng.pt")
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    save_checkpoint(path, {"rng": rng_state()})
    expected = (torch.rand(4), random.random(), np.random.rand())
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    set_rng_state(load_checkpoint(path)["rng"])
    got = (torch.rand(4), random.random(), np.random.rand())
    torch.testing.assert_close(got[0], expected[0])
    assert got[1:] == expected[1:]


def test_strip_wrappers():
    assert list(strip_wrappers({"module._orig_mod.features.0.weight": 1, "classifier.1.bias": 2})) == [
        "features.0.weight",
        "classifier.1.bias",
    ]

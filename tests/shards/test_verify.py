"""`verify` names each truncated, missing, extra or altered shard and exits non-zero; intact -> exit 0."""

import os
import shutil

import pytest
from click.testing import CliRunner

import cli


@pytest.fixture
def copy(sample_shards, tmp_path):
    return shutil.copytree(sample_shards, tmp_path / "wds")


def run_verify(root):
    return CliRunner().invoke(cli.main, ["verify", "--shards", str(root)])


def test_intact_shards_pass(copy):
    result = run_verify(copy)
    assert result.exit_code == 0 and "OK: 7 shards intact" in result.output


def flip_one_byte(path):
    with open(path, "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize(
    "damage, name, words",
    [
        ("truncate", "train/train-000001.tar", "truncated"),
        ("delete", "val/val-000001.tar", "missing"),
        ("extra", "train/train-000099.tar", "extra shard"),
        ("alter", "train/train-000004.tar", "sha256"),
        ("no_index", "train/train-000000.tar", "index"),
        ("leftover", "val/val-000000.tar.tmp-77", "unfinished temporary"),
    ],
)
def test_each_kind_of_damage_is_named(copy, damage, name, words):
    path = os.path.join(copy, name)
    if damage == "truncate":
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage == "delete":
        os.remove(path)
    elif damage in ("extra", "leftover"):
        shutil.copy(os.path.join(copy, "val", "val-000001.tar"), path)
    elif damage == "alter":
        flip_one_byte(path)
    elif damage == "no_index":
        os.remove(path[:-4] + ".idx")
    result = run_verify(copy)
    assert result.exit_code == 1
    bad = [line for line in result.stdout.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1 and name in bad[0] and words in bad[0]


def test_damaged_shard_is_rewritten_by_rerunning_shard(sample_tree, copy):
    os.truncate(os.path.join(copy, "train", "train-000002.tar"), 4096)
    result = CliRunner().invoke(cli.main, ["shard", "--src", sample_tree, "--out", str(copy), "--shard-size", "40"])
    assert result.exit_code == 0, result.output
    assert "4 of 5 shards already finished" in result.output
    assert run_verify(copy).exit_code == 0

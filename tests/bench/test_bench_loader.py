"""bench.loader (`cli.py bench loader`): a tiny run through the CLI (numbers are not asserted, only that both
paths ran)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from bench.loader import bench_loader
from cli import main
from shards.errors import UserError


def test_bench_loader_command_reports_both_paths(sample_shards, tmp_path):
    report = str(tmp_path / "bench.json")
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "loader",
            "--shards",
            sample_shards,
            "--batch-size",
            "8",
            "--workers",
            "1",
            "--batches",
            "2",
            "--mean",
            "channel",
            "--json",
            report,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "DALI" in result.output and "reference" in result.output and "speedup" in result.output
    with open(report) as f:
        numbers = json.load(f)
    assert numbers["dali_images_per_s"] > 0 and numbers["reference_images_per_s"] > 0
    assert numbers["speedup"] == pytest.approx(numbers["dali_images_per_s"] / numbers["reference_images_per_s"])
    assert numbers["batches"] == 2 and numbers["warmup_batches"] == 5


def test_bench_loader_dali_only_and_bad_decoder_share(sample_shards, tmp_path):
    report = str(tmp_path / "dali.json")
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "loader",
            "--shards",
            sample_shards,
            "--batch-size",
            "8",
            "--workers",
            "1",
            "--batches",
            "2",
            "--no-baseline",
            "--json",
            report,
        ],
    )
    assert result.exit_code == 0, result.output
    with open(report) as f:
        numbers = json.load(f)
    assert numbers["dali_images_per_s"] > 0 and "reference_images_per_s" not in numbers
    result = CliRunner().invoke(main, ["bench", "loader", "--shards", sample_shards, "--hw-decoder-load", "2"])
    assert result.exit_code == 2 and "--hw-decoder-load must lie in [0, 1]" in result.output


def test_bench_refuses_cuda_without_gpu(sample_shards, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        bench_loader(sample_shards, device="cuda", batches=1)

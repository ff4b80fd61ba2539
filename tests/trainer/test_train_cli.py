"""Bad flags of `train`, `eval`, `plot` and `bench train` end as one clear line and exit code 2 (CliRunner)."""

import os

import pytest
import torch
from click.testing import CliRunner

from cli import main
from trainer.checkpoint import save_checkpoint


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def no_gpus():
    if torch.cuda.is_available():
        pytest.skip("checks what happens without a GPU")


def test_train_flag_errors(sample_shards, tmp_path, no_gpus):
    out = tmp_path / "run"
    base = ("train", "--shards", sample_shards, "--out", out)
    cases = [
        (("--gpus", 2), "--gpus 2 asked for 2 GPU(s) but 0 CUDA device(s) are visible"),
        (("--gpus", 1, "--procs", 2), "either --gpus N or --procs N"),
        (("--procs", 0), "--procs must be at least 1"),
        (("--procs", 2, "--backend", "nccl"), "--backend nccl needs GPUs"),
        (("--batch-size", 0), "--batch-size must be at least 1"),
        (("--epochs", 0), "--epochs must be at least 1"),
        (("--lr", -1), "--lr must be positive"),
        (("--max-steps", 0), "--max-steps must be at least 1"),
        (("--resume",), "no checkpoint at"),
        (("--resume", "always"), "--resume takes no value, or auto (got 'always')"),
        (("--stop-signal", "KILL"), "--stop-signal KILL: not a signal a process can catch"),
        (("--stop-signal", "USR3"), "--stop-signal USR3: not a signal a process can catch"),
    ]
    for extra, message in cases:
        code, output = run(*base, *extra)
        assert code == 2, (extra, output)
        assert message in output and "Traceback" not in output, (extra, output)
        assert output.count("\n") == 1  # one line
    code, output = run("train", "--shards", tmp_path / "nowhere", "--out", out)
    assert code == 2 and "nowhere" in output and "Traceback" not in output
    os.makedirs(out, exist_ok=True)
    save_checkpoint(str(out / "checkpoint.pt"), {"step": 1})
    code, output = run(*base)
    assert code == 2 and "exists: pass --resume to continue that run (--resume auto: continue or start)" in output


def test_eval_plot_bench_flag_errors(sample_shards, tmp_path, no_gpus):
    code, output = run("eval", "--shards", sample_shards, "--checkpoint", tmp_path / "missing.pt")
    assert code == 2 and "no checkpoint at" in output
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    code, output = run("eval", "--shards", sample_shards, "--checkpoint", garbage)
    assert code == 2 and "not a readable checkpoint" in output and "Traceback" not in output
    code, output = run("eval", "--shards", sample_shards, "--checkpoint", garbage, "--gpus", 3)
    assert code == 2 and "--gpus 3 asked for 3 GPU(s)" in output
    code, output = run("plot", "--run", tmp_path)
    assert code == 2 and "metrics.jsonl not found" in output
    code, output = run("bench", "train", "--shards", sample_shards, "--device", "cuda")
    assert code == 2 and "no GPU is visible" in output


@pytest.mark.slow
def test_bench_train_reports_model_alone_and_end_to_end(sample_shards, tmp_path):
    import json

    from click.testing import CliRunner

    import cli

    out = tmp_path / "train.json"
    result = CliRunner().invoke(
        cli.main, ["bench", "train", "--shards", sample_shards, "--batch-size", "2", "--steps", "1", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "model alone" in result.output and "end to end" in result.output and "limited by" in result.output
    report = json.loads(out.read_text())
    assert report["model_alone_images_per_s"] > 0 and report["end_to_end_images_per_s"] > 0
    assert 0 <= report["end_to_end_data_wait_share"] <= 1
    assert 2.2 < report["gflop_per_image_forward"] < 2.3 and report["model_alone_mfu"] is None  # no CPU peak
    assert report["model_alone_tflops"] == pytest.approx(
        report["model_alone_images_per_s"] * report["gflop_per_image_train_step"] / 1e3
    )


@pytest.mark.parametrize("arch,groups", [("alexnet", 1), ("alexnet-2012", 2)])
def test_flops_per_image_match_the_layer_table(arch, groups):
    """FlopCounterMode's count against 2 x multiply-adds of every conv and FC layer written out (1000 classes)."""
    from bench.train import flops_per_image

    convs = [
        (3, 96, 11, 55, 1),
        (96, 256, 5, 27, groups),
        (256, 384, 3, 13, 1),
        (384, 384, 3, 13, groups),
        (384, 256, 3, 13, groups),
    ]  # (in, out, kernel, output side, groups)
    forward = sum(2 * cout * cin // g * k * k * side * side for cin, cout, k, side, g in convs)
    forward += sum(2 * cin * cout for cin, cout in ((9216, 4096), (4096, 4096), (4096, 1000)))
    counted, train_step = flops_per_image(arch, 1000)
    assert counted == forward
    conv1_input_grad = 2 * 96 * 3 * 11 * 11 * 55 * 55  # the image needs no gradient: the one layer without it
    assert train_step == 3 * forward - conv1_input_grad
    assert round(forward / 1e9, 2) == (2.27 if arch == "alexnet" else 1.45)

"""The command line: user mistakes give one clear line and a non-zero exit, never a traceback."""

import os
import tarfile

import pytest
from click.testing import CliRunner

import cli


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args))


def assert_one_line_error(result, words, code=2):
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # an escaped exception is not
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and words in errors[0], result.output


def test_the_one_line_check_fails_on_a_printed_traceback():
    import click

    @click.command()
    def noisy():
        click.echo("Traceback (most recent call last):\nerror: something")
        raise SystemExit(2)

    with pytest.raises(AssertionError):
        assert_one_line_error(CliRunner().invoke(noisy, []), "something")


def test_help_lists_every_command():
    result = invoke("--help")
    for name in ("shard", "stats", "verify", "train", "eval", "preview", "plot", "bench", "demo"):
        assert name in result.output


def test_importing_cli_imports_nothing_heavy():
    """Every pool worker of `shard` runs cli.py again as it starts (shards/parallel.py), and every command pays for
    its imports: the heavy ones (torch, DALI, the store and cluster libraries, yaml) wait for the code that needs
    them."""
    import subprocess
    import sys

    heavy = ("torch", "nvidia.dali", "yaml", "fsspec", "s3fs", "distributed", "scipy", "webdataset")
    code = f"import sys, cli; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(cli.__file__), capture_output=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == ["[]"]


def test_shard_without_src_is_a_usage_error():
    result = invoke("shard")
    assert result.exit_code == 2 and "--src" in result.output


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("train_level", "point --src at its parent"),
        ("out_is_a_file", "cannot write to --out"),
        ("bad_labels_path", "--val-labels"),
    ],
)
def test_shard_user_mistakes(sample_tree, tmp_path, case, words):
    src, out, extra = sample_tree, str(tmp_path / "out"), []
    if case == "missing":
        src = str(tmp_path / "nope")
    elif case == "empty":
        src = str(tmp_path / "empty")
        os.mkdir(src)
    elif case == "train_level":
        src = os.path.join(sample_tree, "train")
    elif case == "out_is_a_file":
        out = str(tmp_path / "file")
        open(out, "w").close()
    elif case == "bad_labels_path":
        extra = ["--val-labels", str(tmp_path / "labels.csv")]
        os.makedirs(tmp_path / "flat" / "val")
        open(tmp_path / "flat" / "val" / "ILSVRC2012_val_00000001.JPEG", "wb").close()
        src = str(tmp_path / "flat")
    assert_one_line_error(invoke("shard", "--src", src, "--out", out, *extra), words)


def test_shard_prints_progress_summary_and_stats(sample_tree, tmp_path):
    result = invoke(
        "shard", "--src", sample_tree, "--out", str(tmp_path / "o"), "--shard-size", "100", "--split", "train"
    )
    assert result.exit_code == 0, result.output
    assert "train: 192 images in 2 shards" in result.output and "eigval" in result.output


def test_verify_and_stats_on_a_folder_that_is_not_shards(tmp_path):
    assert_one_line_error(invoke("verify", "--shards", str(tmp_path)), "no dataset.json")


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MiB tmpfs: room for a few 10-image shards (tar + 768 KiB partial sums), not for 20."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


@pytest.mark.slow
def test_disk_full_mid_run_is_one_line_and_leaves_no_half_shard(sample_tree, tiny_disk):
    import subprocess

    out = tiny_disk / "wds"
    args = ["shard", "--src", sample_tree, "--out", str(out), "--shard-size", "10", "--split", "train"]
    result = invoke(*args)
    assert_one_line_error(result, "no space left")
    assert not list(out.rglob("*.tmp-*"))  # nothing half-written remains
    finished = {p.name[: -len(".json")] for p in (out / ".work" / "train").glob("*.tar.json")}
    on_disk = {p.name for p in (out / "train").glob("*.tar")}
    assert finished and finished <= on_disk
    for name in on_disk:  # every tar there is whole: all members readable, 4 components per sample
        with tarfile.open(out / "train" / name) as tar:
            members = tar.getnames()
        assert members and len(members) % 4 == 0 and len(members) // 4 <= 10
    assert not (out / "dataset.json").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)  # the user frees space
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert f"{len(finished)} of 20 shards already finished" in result.output
    assert invoke("verify", "--shards", str(out)).exit_code == 0


@pytest.mark.slow
def test_missing_dali_install_is_one_clear_line(sample_shards, tmp_path):
    """As on a machine where DALI was never installed: the import fails, the user gets the fix, not a traceback."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import sys; sys.modules['nvidia.dali'] = None; import cli; cli.main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "preview", "--shards", sample_shards, "--out", str(tmp_path / "p.png")],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: nvidia.dali is not installed: run `make test` or `make demo` once (they set up .venv), "
        "or `pip install nvidia-dali-cuda120`"
    ]


@pytest.mark.slow
def test_sample_photos_missing_is_one_clear_line(tmp_path):
    """demo and bench shard need the photographs inside scikit-image: without it, the fix, not a traceback."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import importlib.util, sys; find = importlib.util.find_spec; "
        "importlib.util.find_spec = lambda name, *a: None if name == 'skimage' else find(name, *a); "
        "import cli; cli.main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "bench", "shard", "--limit", "8"], cwd=root, capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: skimage is not installed: run `make test` or `make demo` once (they set up .venv), "
        "or `pip install scikit-image`"
    ]


@pytest.mark.slow
def test_bench_shard_reports_the_rates_on_the_same_images(tmp_path):
    out = tmp_path / "bench.json"
    result = invoke("bench", "shard", "--limit", "24", "--workers", "2", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "baseline (1 process, naive PIL)" in result.output and "ratio" in result.output
    assert "floor per core: decode + resize + encode + decode back" in result.output and "start-up" in result.output
    import json

    report = json.loads(out.read_text())
    assert report["images"] == 24 and report["baseline_img_s"] > 0 and report["project_run_img_s"] > 0
    assert abs(report["ratio"] - report["project_img_s"] / report["baseline_img_s"]) < 1e-9
    assert len(report["floor_img_s_per_core"]) == 4 and min(report["floor_img_s_per_core"].values()) > 0
    assert len(report["seconds"]["project"]) == len(report["seconds"]["project_small"]) == report["repeats"]

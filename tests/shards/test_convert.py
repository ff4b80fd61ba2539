"""`shard` end to end on real photographs: the format contract, read-back by other readers, honesty, resume."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import hard_cases as hc
import pytest
from PIL import Image
from servers import ROOT

import shards
from shards.convert import ShardConfig, convert
from shards.demo_data import make_sample_tree
from shards.errors import UserError
from shards.transform import transform
from shards.verify import find_problems


def read_tar(path):
    """{key: {ext: bytes}} in tar order, with plain tarfile."""
    samples = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def all_samples(root, split):
    out = {}
    for url in shards.open(root).urls(split):
        out.update(read_tar(url))
    return out


def shard_config(src, out, **kw):
    return ShardConfig(
        src=str(src),
        out=str(out),
        shard_size=kw.pop("shard_size", 40),
        workers=kw.pop("workers", 2),
        progress=False,
        **kw,
    )


def test_manifest_and_every_input_in_exactly_one_shard(sample_tree, sample_shards):
    ds = shards.open(sample_shards)
    assert ds.classes == sorted(os.listdir(os.path.join(sample_tree, "train")))
    assert ds.shard_counts("train") == [40, 40, 40, 40, 32] and ds.shard_counts("val") == [40, 8]
    params = ds.manifest["params"]
    assert params == {"size": 256, "quality": 90, "resize_filter": "bicubic", "seed": 0, "shard_size": 40}
    for split in ("train", "val"):
        inputs = {
            os.path.join(split, w, f)
            for w in os.listdir(os.path.join(sample_tree, split))
            for f in os.listdir(os.path.join(sample_tree, split, w))
        }
        keys, sources = [], []
        for url, entry in zip(ds.urls(split), ds.shards(split), strict=True):
            samples = read_tar(url)
            assert len(samples) == entry["count"] and os.path.getsize(url) == entry["bytes"]
            for key, comp in samples.items():
                assert set(comp) == {"jpg", "cls", "lbl", "json"} and "." not in key
                meta = json.loads(comp["json"])
                label = int(comp["cls"].decode("ascii"))
                assert label == int.from_bytes(comp["lbl"], "little", signed=True)
                assert ds.classes[label] == meta["wnid"] == meta["source"].split(os.sep)[1]
                assert Image.open(io.BytesIO(comp["jpg"])).size == (256, 256)
                keys.append(key)
                sources.append(meta["source"])
        assert sorted(sources) == sorted(inputs) and len(set(keys)) == len(keys)
        assert ds.count(split) == len(inputs) and ds.skipped(split) == []


def test_training_shards_mix_classes_and_val_is_sorted(sample_shards):
    ds = shards.open(sample_shards)
    for url in ds.urls("train"):
        labels = {int(s["cls"]) for s in read_tar(url).values()}
        assert len(labels) >= 5  # 8 classes, 32-40 samples each: a class-sorted shard would hold 1-2
    val_keys = list(all_samples(sample_shards, "val"))
    val_sources = [json.loads(s["json"])["source"] for s in all_samples(sample_shards, "val").values()]
    assert val_sources == sorted(val_sources) and len(val_keys) == 48


def test_same_input_and_seed_give_byte_identical_shards(sample_tree, sample_shards, tmp_path):
    again = convert(shard_config(sample_tree, tmp_path / "again", workers=1))
    reference = shards.open(sample_shards).manifest
    assert again["splits"] == reference["splits"]  # sha256 of every shard, one process vs two
    other_seed = convert(shard_config(sample_tree, tmp_path / "seed1", seed=1, split="train"))
    assert other_seed["splits"]["train"]["shards"][0]["sha256"] != reference["splits"]["train"]["shards"][0]["sha256"]


def test_hard_cases_are_kept_or_skipped_and_listed(tmp_path, capsys):
    src = make_sample_tree(str(tmp_path / "src"), num_classes=2, train_per_class=3, val_per_class=1)
    cls = os.path.join(src, "train", sorted(os.listdir(os.path.join(src, "train")))[0])
    for name, maker in {**hc.READABLE, **hc.REPAIRABLE}.items():
        Path(os.path.join(cls, f"hard_{name}.JPEG")).write_bytes(maker())
    for name, (maker, _) in hc.UNREADABLE.items():
        Path(os.path.join(cls, f"bad_{name}.JPEG")).write_bytes(maker())
    manifest = convert(shard_config(src, tmp_path / "out", shard_size=5))
    train = manifest["splits"]["train"]
    assert train["count"] == 6 + len(hc.READABLE) + len(hc.REPAIRABLE)
    reasons = {os.path.basename(s["path"]): s["reason"] for s in train["skipped"]}
    assert set(reasons) == {f"bad_{n}.JPEG" for n in hc.UNREADABLE}
    for name, (_, words) in hc.UNREADABLE.items():
        assert words in reasons[f"bad_{name}.JPEG"]
    repaired = {os.path.basename(s["path"]): s["reason"] for s in train["repaired"]}
    assert repaired == {"hard_eoi_missing.JPEG": "end-of-image marker missing after complete scan data: added"}
    assert manifest["splits"]["val"]["repaired"] == []
    samples = all_samples(str(tmp_path / "out"), "train")
    assert {f"hard_{n}" for n in {**hc.READABLE, **hc.REPAIRABLE}} <= set(samples)
    whole = hc.encode(hc.photo(), "JPEG", quality=95)  # the repaired sample is the whole picture
    assert samples["hard_eoi_missing"]["jpg"] == transform(whole)[0]
    out = capsys.readouterr().out
    assert f"skipped {len(hc.UNREADABLE)} unreadable inputs" in out and "bad_truncated.JPEG" in out
    assert "repaired 1 inputs, kept" in out and "hard_eoi_missing.JPEG" in out
    card = (tmp_path / "out" / "README.md").read_text()
    assert "1 input(s) were repaired" in card and "hard_eoi_missing.JPEG" in card
    assert shards.open(str(tmp_path / "out")).repaired("train") == train["repaired"]
    assert find_problems(str(tmp_path / "out")) == []


@pytest.mark.slow
def test_the_process_that_plans_a_run_never_imports_torch(sample_tree, tmp_path):
    """Start-up: torch is imported once, by the process the pool's workers are forked from (shards/parallel.py)."""
    code = (
        "import sys; from shards.convert import ShardConfig, convert; "
        f"convert(ShardConfig(src={sample_tree!r}, out={str(tmp_path / 'wds')!r}, split='val', progress=False)); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert shards.open(str(tmp_path / "wds")).count("val") == 48  # the workers did resize, with torch


def test_archives_give_the_same_samples_as_folders(tmp_path):
    folders = make_sample_tree(str(tmp_path / "f"), num_classes=3, train_per_class=4, val_per_class=2)
    tars = make_sample_tree(str(tmp_path / "t"), num_classes=3, train_per_class=4, val_per_class=2, layout="tars")
    convert(shard_config(folders, tmp_path / "from_folders", shard_size=5))
    out = tmp_path / "from_tars"
    # one archive at a time, as a user with the two downloads would: the second run adds the split
    convert(
        shard_config(
            os.path.join(tars, "ILSVRC2012_img_val.tar"),
            out,
            shard_size=5,
            val_labels=os.path.join(tars, "val_labels.txt"),
        )
    )
    convert(shard_config(os.path.join(tars, "ILSVRC2012_img_train.tar"), out, shard_size=5))
    assert shards.open(str(out)).splits == ["train", "val"]
    for split in ("train", "val"):
        a, b = all_samples(str(tmp_path / "from_folders"), split), all_samples(str(out), split)
        assert list(a) == list(b)  # same keys in the same (seeded) order
        assert all(a[k]["jpg"] == b[k]["jpg"] and a[k]["cls"] == b[k]["cls"] for k in a)


def test_changed_parameters_need_overwrite(sample_tree, tmp_path):
    out = tmp_path / "out"
    convert(shard_config(sample_tree, out, split="val"))
    with pytest.raises(UserError, match="--overwrite"):
        convert(shard_config(sample_tree, out, split="val", quality=80))
    manifest = convert(shard_config(sample_tree, out, split="val", quality=80, overwrite=True))
    assert manifest["params"]["quality"] == 80 and find_problems(str(out)) == []


def test_resume_keeps_finished_shards_and_redoes_the_rest(sample_tree, sample_shards, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(sample_shards, out)
    os.remove(out / "dataset.json")
    os.remove(out / "train" / "train-000002.tar")  # crashed before this one was renamed
    with open(out / "train" / "train-000003.tar", "r+b") as f:
        f.truncate(1000)  # damaged after the fact
    Path(out / "train" / "train-000004.tar.tmp-4242").write_bytes(b"half a shard")
    kept = os.stat(out / "train" / "train-000000.tar").st_mtime_ns
    manifest = convert(shard_config(sample_tree, out))
    assert manifest["splits"] == shards.open(sample_shards).manifest["splits"]
    assert os.stat(out / "train" / "train-000000.tar").st_mtime_ns == kept  # not rewritten
    assert find_problems(str(out)) == []


def start_shard_command(src, out, workers):
    """`cli.py shard` in its own process group, returned once its first training shard is finished."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "cli.py"),
        "shard",
        "--src",
        src,
        "--out",
        str(out),
        "--shard-size",
        "40",
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    records = out / ".work" / "train"
    deadline = time.time() + 120
    while time.time() < deadline and not (records.exists() and any(p.suffix == ".json" for p in records.iterdir())):
        time.sleep(0.02)
    return cmd, proc


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(sample_tree, sample_shards, tmp_path):
    """A real interruption: SIGKILL the shard command mid-run, rerun it, get exactly the uninterrupted result."""
    out = tmp_path / "killed"
    cmd, proc = start_shard_command(sample_tree, out, workers=1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset.json").exists()  # killed before the end: nothing looks finished
    done = [p for p in os.listdir(out / ".work" / "train") if p.endswith(".tar.json")]
    assert 1 <= len(done) < 5
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"{len(done)} of 5 shards already finished" in result.stdout
    assert shards.open(str(out)).manifest["splits"] == shards.open(sample_shards).manifest["splits"]


def test_shards_written_by_workers_never_look_finished_until_renamed(sample_shards):
    for split in ("train", "val"):
        names = os.listdir(os.path.join(sample_shards, split))
        assert not [n for n in names if ".tmp-" in n]
        assert sorted(n for n in names if n.endswith(".idx")) == sorted(
            n[:-4] + ".idx" for n in names if n.endswith(".tar")
        )


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_finishes(sample_tree, sample_shards, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it): exit 130, one line, no half shard."""
    out = tmp_path / "interrupted"
    cmd, proc = start_shard_command(sample_tree, out, workers=2)
    os.killpg(proc.pid, signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr.splitlines()[-1] and "Traceback" not in stderr
    assert not list(out.rglob("*.tmp-*")) and not (out / "dataset.json").exists()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert shards.open(str(out)).manifest["splits"] == shards.open(sample_shards).manifest["splits"]


def test_keys_are_unique_whatever_the_file_names(tmp_path):
    """The same stem in two class folders gets _dupN, and never a name a real input already has (x_dup1)."""
    src = make_sample_tree(str(tmp_path / "src"), num_classes=2, train_per_class=2, val_per_class=0)
    a, b = (os.path.join(src, "train", w) for w in sorted(os.listdir(os.path.join(src, "train"))))
    photo = Path(os.path.join(a, sorted(os.listdir(a))[0])).read_bytes()
    for folder, name in ((a, "x.JPEG"), (b, "x.JPEG"), (a, "x_dup1.JPEG")):
        Path(os.path.join(folder, name)).write_bytes(photo)
    manifest = convert(shard_config(src, tmp_path / "out", shard_size=100, split="train"))
    keys = list(all_samples(str(tmp_path / "out"), "train"))
    assert len(keys) == len(set(keys)) == manifest["splits"]["train"]["count"] == 7
    assert {"x", "x_dup1", "x_dup2"} <= set(keys)


@pytest.mark.slow
def test_progress_off_a_terminal_is_plain_lines(sample_tree, tmp_path):
    """Redirected to a file: no carriage-return redraws of a progress bar, the summary lines as usual."""
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        run = subprocess.run(
            [
                sys.executable,
                "cli.py",
                "shard",
                "--src",
                sample_tree,
                "--out",
                str(tmp_path / "o"),
                "--shard-size",
                "40",
            ],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    text = log.read_text()
    assert run.returncode == 0, text
    assert "\r" not in text and "train: 192 images in 5 shards" in text

"""pipelines.build_loader on real DALI (CPU): shapes, labels, ranks, epochs, determinism, resume, errors."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

import pipelines
import shards
from shards.errors import UserError

FAST = dict(device="cpu", num_threads=1)


def build(root, split="train", batch_size=8, **kw):
    return pipelines.build_loader(root, split, batch_size=batch_size, **{**FAST, **kw})


def sources(params: dict, labels: torch.Tensor) -> list[str]:
    """The json `source` of every real (label >= 0) sample of a with_params batch."""
    return [
        json.loads(bytes(m).decode())["source"] for m, y in zip(params["meta"].numpy(), labels, strict=True) if y >= 0
    ]


def epoch_sources(loader) -> list[str]:
    seen = []
    for _, labels, params in loader:
        seen += sources(params, labels)
    return seen


def manifest_sources(root: str, split: str) -> list[str]:
    import webdataset as wds

    urls = shards.open(root).urls(split)
    return [json.loads(s["json"])["source"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


# ------------------------------------------------------------------------------------------------ shapes and labels
@pytest.mark.parametrize(
    "mode,dtype,shape",
    [
        ("train", "float32", (8, 3, 227, 227)),
        ("center", "float16", (8, 3, 227, 227)),
        ("ten_crop", "bfloat16", (8, 10, 3, 227, 227)),
    ],
)
def test_batches_have_the_contract_shapes_and_dtypes(sample_shards, mode, dtype, shape):
    split = "train" if mode == "train" else "val"
    loader = build(sample_shards, split, mode=mode, dtype=dtype, mean="channel")
    images, labels = next(iter(loader))
    assert images.shape == shape and images.dtype == getattr(torch, dtype) and images.device.type == "cpu"
    assert labels.shape == (8,) and labels.dtype == torch.int64
    assert images.float().abs().mean() > 5  # mean-subtracted pixels on the 0-255 scale, not zeros or [0, 1]
    assert abs(float(images.float().mean())) < 80


def test_defaults_follow_the_split(sample_shards):
    assert build(sample_shards, "train").cfg.mode == "train"
    assert build(sample_shards, "val").cfg.mode == "center"
    assert pipelines.PipelineConfig().mean == "image" and pipelines.PipelineConfig().lighting_std == 0.1


def test_labels_match_the_json_wnid_through_the_shuffle(sample_shards):
    classes = shards.open(sample_shards).classes
    loader = build(sample_shards, batch_size=16, with_params=True, shuffle_buffer=64)
    seen = 0
    for _, labels, params in loader:
        for meta, label in zip(params["meta"].numpy(), labels, strict=True):
            assert classes.index(json.loads(bytes(meta).decode())["wnid"]) == int(label)
            seen += 1
    assert seen == len(loader) * 16 == 192


def test_validation_labels_in_shard_order(sample_shards):
    expected = [label for _, label in shards.webdataset(sample_shards, "val")]
    got = torch.cat([labels for _, labels in build(sample_shards, "val", batch_size=10)])
    assert got[got >= 0].tolist() == expected and (got[len(expected) :] == -1).all()


# ------------------------------------------------------------------------------------------------ ranks and epochs
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_training_ranks_disjoint_equal_length_every_epoch(sample_shards, world_size):
    batch = 7  # 192 / ranks is not a multiple of 7: every rank drops a remainder
    loaders = [
        build(
            sample_shards, batch_size=batch, rank=r, world_size=world_size, seed=3, with_params=True, shuffle_buffer=32
        )
        for r in range(world_size)
    ]
    assert len({len(loader) for loader in loaders}) == 1
    assert len(loaders[0]) == (192 // world_size) // batch
    everything = set(manifest_sources(sample_shards, "train"))
    for _ in range(2):  # the second epoch moves every rank on to the next part of the split
        per_rank = [epoch_sources(loader) for loader in loaders]
        flat = [s for part in per_rank for s in part]
        assert all(len(part) == len(loaders[0]) * batch for part in per_rank)
        assert len(set(flat)) == len(flat) and set(flat) <= everything


@pytest.mark.parametrize("world_size,batch", [(1, 10), (2, 8), (3, 7), (5, 3)])
def test_validation_sees_every_image_exactly_once(sample_shards, world_size, batch):
    """48 images: 5 ranks get 9 or 10 -> with batch 3 the ranks with 9 need a whole padding batch (label -1)."""
    loaders = [
        build(sample_shards, "val", batch_size=batch, rank=r, world_size=world_size, with_params=True)
        for r in range(world_size)
    ]
    assert len({len(loader) for loader in loaders}) == 1
    expected = sorted(manifest_sources(sample_shards, "val"))
    for _ in range(2):  # and again, in the same order, the next time
        seen, padded = [], 0
        for loader in loaders:
            batches = list(loader)
            assert len(batches) == len(loader)
            for _, labels, params in batches:
                seen += sources(params, labels)
                padded += int((labels < 0).sum())
        assert sorted(seen) == expected
        assert padded == world_size * len(loaders[0]) * batch - 48


def test_each_iteration_is_one_epoch_and_a_stopped_one_continues(sample_shards):
    loader = build(sample_shards, batch_size=16)
    assert [sum(1 for _ in loader) for _ in range(3)] == [12, 12, 12]
    it = iter(loader)
    next(it), next(it)
    assert sum(1 for _ in loader) == 10  # the rest of the epoch the abandoned iteration had started
    assert sum(1 for _ in loader) == 12


# ------------------------------------------------------------------------------------------------ seeds and resume
def take(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    while len(out) < n:
        for images, labels in loader:
            out.append((images.clone(), labels.clone()))
            if len(out) == n:
                break
    return out


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )


def test_same_seed_same_batches_other_seed_or_rank_differs(sample_shards):
    kw = dict(batch_size=8, world_size=2, shuffle_buffer=32)
    first = take(build(sample_shards, seed=1, **kw), 3)
    assert same(first, take(build(sample_shards, seed=1, **kw), 3))
    assert not torch.equal(first[0][0], take(build(sample_shards, seed=2, **kw), 1)[0][0])
    other_rank = take(build(sample_shards, seed=1, rank=1, **kw), 1)
    assert not torch.equal(first[0][1], other_rank[0][1])


@pytest.mark.parametrize("stop_after", [3, 14])  # mid-epoch; and in the second epoch (len = 96 // 16 = 6)
def test_resume_continues_with_the_unseen_batches(sample_shards, stop_after):
    kw = dict(batch_size=16, rank=1, world_size=2, seed=5, shuffle_buffer=32)
    uninterrupted = take(build(sample_shards, **kw), 16)
    loader = build(sample_shards, **kw)
    before = take(loader, stop_after)
    state = loader.state_dict()
    # the trainer stores it in a checkpoint read back with weights_only=True
    buffer = io.BytesIO()
    torch.save({"loader": state}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["loader"]
    assert all(isinstance(v, (str, int, bytes)) for v in state.values())
    assert state["epoch"] == stop_after // 6 and state["batch"] == stop_after % 6
    resumed = build(sample_shards, state=state, **kw)
    assert sum(1 for _ in build(sample_shards, state=state, **kw)) == 6 - stop_after % 6  # the rest of the epoch
    assert same(before + take(resumed, 16 - stop_after), uninterrupted)
    other = build(sample_shards, **kw)
    other.load_state_dict(state)  # the method form does the same
    assert same(take(other, 2), uninterrupted[stop_after : stop_after + 2])


def test_state_from_other_settings_is_refused(sample_shards):
    state = build(sample_shards, batch_size=16).state_dict()
    with pytest.raises(UserError, match="batch_size 16 -> 8"):
        build(sample_shards, batch_size=8, state=state)
    with pytest.raises(UserError, match="not a loader state"):
        build(sample_shards).load_state_dict({"epoch": 1})


# ------------------------------------------------------------------------------------------------ errors
def test_gpu_request_without_gpu_is_a_clear_error(sample_shards, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        pipelines.build_loader(sample_shards, "train", batch_size=8, device="cuda")


def test_bad_options_are_clear_errors(sample_shards):
    with pytest.raises(UserError, match="unknown loader option"):
        build(sample_shards, crop_size=224)
    with pytest.raises(UserError, match="mode="):
        build(sample_shards, mode="five_crop")
    with pytest.raises(UserError, match="only 48 images"):
        build(sample_shards, "val", rank=0, world_size=49)


@pytest.fixture
def shard_copy(sample_shards, tmp_path) -> str:
    out = str(tmp_path / "wds")
    shutil.copytree(sample_shards, out)
    return out


def test_missing_index_names_the_shard(shard_copy):
    os.remove(os.path.join(shard_copy, "train", "train-000002.idx"))
    with pytest.raises(UserError, match=r"train-000002.tar has no DALI index train-000002.idx.*wds2idx"):
        build(shard_copy)


@pytest.mark.parametrize(
    "damage,message", [("drop", "has no .lbl component"), ("int64", "has a .lbl of 8 bytes, not 4")]
)
def test_index_without_int32_label_names_the_sample(shard_copy, damage, message):
    index = os.path.join(shard_copy, "val", "val-000001.idx")
    with open(index) as f:
        lines = f.read().splitlines()
    sample = 4 if damage == "drop" else 1  # a foreign int64 label shows from the first sample on
    fields = lines[sample].split()
    components = [fields[i : i + 4] for i in range(0, len(fields), 4)]
    if damage == "drop":
        components = [c for c in components if c[0] != "lbl"]
    else:
        components = [[c[0], c[1], "8", c[3]] if c[0] == "lbl" else c for c in components]
    lines[sample] = " ".join(" ".join(c) for c in components)
    with open(index, "w") as f:
        f.write("\n".join(lines) + "\n")
    key = fields[3].split(".")[0]
    with pytest.raises(UserError, match=rf"val-000001.tar: sample '{key}' {message}"):
        build(shard_copy, "val")


def test_foreign_shard_without_int32_labels_is_refused(shard_copy):
    """A shard from another writer (jpg + ASCII cls only), indexed by DALI's own wds2idx."""
    path = os.path.join(shard_copy, "val", "val-000001.tar")
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if not m.name.endswith((".lbl", ".json"))]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
    wds2idx = os.path.join(os.path.dirname(sys.executable), "wds2idx")
    subprocess.run([wds2idx, path, path[:-4] + ".idx"], check=True, capture_output=True)
    with pytest.raises(UserError, match=r"val-000001.tar: sample '\w+' has no .lbl component.*cli.py shard"):
        build(shard_copy, "val")


def test_bad_jpeg_names_shard_and_sample(shard_copy):
    index = os.path.join(shard_copy, "val", "val-000000.idx")
    with open(index) as f:
        fields = f.read().splitlines()[13].split()  # the 13th sample: in the second batch of 8
    offset, size, key = int(fields[1]), int(fields[2]), fields[3].split(".")[0]
    with open(os.path.join(shard_copy, "val", "val-000000.tar"), "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * size)
    with pytest.raises(UserError, match=rf"bad image .*val-000000.tar: sample '{key}'"):
        for _ in build(shard_copy, "val"):
            pass


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["train", "ten_crop"])
def test_gpu_batches_on_the_device(sample_shards, mode):
    split = "train" if mode == "train" else "val"
    loader = pipelines.build_loader(sample_shards, split, batch_size=8, device="cuda", mode=mode, num_threads=2)
    batches = list(loader)
    assert len(batches) == len(loader)
    images, labels = batches[0]
    assert images.is_cuda and labels.is_cuda and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.shape[-3:] == (3, 227, 227)


@pytest.mark.gpu
def test_gpu_batches_are_channels_last_views_of_dali_output(sample_shards):
    images, _ = next(iter(pipelines.build_loader(sample_shards, "train", batch_size=8, device="cuda", num_threads=2)))
    assert images.shape == (8, 3, 227, 227) and images.is_contiguous(memory_format=torch.channels_last)
    cpu, _ = next(iter(build(sample_shards, "val", mean="image")))
    gpu, _ = next(iter(pipelines.build_loader(sample_shards, "val", batch_size=8, device="cuda", mean="image")))
    assert (gpu.cpu() - cpu).abs().mean() < 1.5  # the same views (up to nvJPEG's IDCT) in the same channel order


@pytest.mark.gpu
def test_gpu_loader_honours_the_device_index(sample_shards):
    last = torch.cuda.device_count() - 1
    loader = pipelines.build_loader(sample_shards, "val", batch_size=8, device=f"cuda:{last}", num_threads=2)
    images, labels = next(iter(loader))
    assert images.device == labels.device == torch.device("cuda", last)
    with pytest.raises(UserError, match="CUDA device"):
        pipelines.build_loader(sample_shards, "val", batch_size=8, device=f"cuda:{last + 1}")


@pytest.mark.gpu
def test_gpu_decoder_really_runs_on_the_gpu(sample_shards):
    """DALI's "mixed" decoder silently decodes on the CPU when nvImageCodec cannot load nvJPEG (e.g. the
    nvidia-nvjpeg package is missing): then no libnvjpeg is mapped into this process. Fail loudly instead."""
    loader = pipelines.build_loader(
        sample_shards, "val", batch_size=8, device="cuda", num_threads=1, hw_decoder_load=1.0
    )
    next(iter(loader))
    with open("/proc/self/maps") as f:
        mapped = {line.split()[-1] for line in f if "/" in line}
    assert any("libnvjpeg.so" in path for path in mapped), "nvJPEG is not loaded: the GPU decoder fell back to the CPU"
    assert any("libnvimgcodec" in path for path in mapped)


@pytest.mark.gpu
def test_gpu_resume(sample_shards):
    """Relies on: a batch being a pure function of its position (pipelines.source), and on nvJPEG (and the
    hardware decoder) decoding the same bytes to the same pixels every time on the same GPU: the batches are
    compared bit for bit."""
    kw = dict(batch_size=16, device="cuda", num_threads=2, seed=7)
    full = [(x.cpu(), y.cpu()) for x, y in take(pipelines.build_loader(sample_shards, "train", **kw), 8)]
    loader = pipelines.build_loader(sample_shards, "train", **kw)
    before = [(x.cpu(), y.cpu()) for x, y in take(loader, 5)]
    resumed = pipelines.build_loader(sample_shards, "train", state=loader.state_dict(), **kw)
    after = [(x.cpu(), y.cpu()) for x, y in take(resumed, 3)]
    assert same(before + after, full)


def test_a_shard_emptied_by_unreadable_inputs_is_left_out(tmp_path):
    """Every input of one shard unreadable -> a 0-sample shard in the manifest; the loader still reads the rest."""
    from shards.convert import ShardConfig, convert
    from shards.demo_data import make_sample_tree
    from shards.verify import find_problems

    src = make_sample_tree(str(tmp_path / "src"), num_classes=2, train_per_class=4, val_per_class=2)
    wnid = sorted(os.listdir(os.path.join(src, "val")))[0]
    for name in ("a_bad1.JPEG", "a_bad2.JPEG"):  # sorted right after the class's 2 good images: one shard of 2
        open(os.path.join(src, "val", wnid, name), "wb").close()
    out = str(tmp_path / "wds")
    manifest = convert(ShardConfig(src=src, out=out, shard_size=2, workers=1, progress=False))
    assert [s["count"] for s in manifest["splits"]["val"]["shards"]] == [2, 0, 2]
    assert find_problems(out) == []
    for world_size in (1, 2):
        labels = []
        for rank in range(world_size):
            loader = pipelines.build_loader(
                out, split="val", batch_size=1, device="cpu", rank=rank, world_size=world_size, mean="channel"
            )
            labels += [int(x) for _, batch in loader for x in batch if x >= 0]
        assert sorted(labels) == [0, 0, 1, 1]

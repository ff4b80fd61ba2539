"""The reuse recipes of docs/reuse.md, each run for real: webdataset + DataLoader, DALI's reader, timm's _info.json,
Hugging Face datasets, plain tarfile, and our own small API."""

import json
import os
import tarfile

import numpy as np
import pytest

import shards


def expected_labels(root, split):
    """{key: label} from each sample's json wnid and the manifest's class list (independent of .cls)."""
    ds = shards.open(root)
    out = {}
    for url in ds.urls(split):
        with tarfile.open(url) as tar:  # the tarfile recipe
            for m in tar:
                if m.name.endswith(".json"):
                    out[m.name.split(".", 1)[0]] = ds.classes.index(json.loads(tar.extractfile(m).read())["wnid"])
    return out


def test_tarfile_recipe(sample_shards):
    labels = expected_labels(sample_shards, "val")
    assert len(labels) == shards.open(sample_shards).count("val") == 48


def test_webdataset_with_pytorch_dataloader(sample_shards):
    import torch
    import webdataset as wds

    ds = shards.open(sample_shards)
    dataset = (
        wds.WebDataset(ds.urls("train"), shardshuffle=False, nodesplitter=None, workersplitter=wds.split_by_worker)
        .decode("pil")
        .to_tuple("__key__", "jpg", "cls")
        .map(lambda s: (s[0], torch.from_numpy(np.asarray(s[1])), s[2]))
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, num_workers=2)
    seen = {}
    for keys, images, labels in loader:
        assert images.shape[1:] == (256, 256, 3) and images.dtype == torch.uint8
        seen.update(zip(keys, labels.tolist(), strict=True))
    assert seen == expected_labels(sample_shards, "train")  # every sample once, right label


def test_dali_reader_with_shipped_index(sample_shards):
    from nvidia.dali import fn, pipeline_def, types

    ds = shards.open(sample_shards)

    @pipeline_def(batch_size=12, num_threads=1, device_id=None)
    def pipe():
        jpegs, labels = fn.readers.webdataset(
            paths=ds.urls("val"),
            index_paths=ds.index_paths("val"),
            ext=["jpg", "lbl"],
            dtypes=[types.UINT8, types.INT32],
        )
        return fn.decoders.image(jpegs, device="cpu"), labels

    p = pipe()
    p.build()
    got = []
    for _ in range(4):  # 48 samples
        images, labels = p.run()
        assert images.as_tensor().shape() == [12, 256, 256, 3]
        got += np.array(labels.as_tensor()).reshape(-1).tolist()
    assert got == list(expected_labels(sample_shards, "val").values())  # val is in sorted order


def test_timm_info_json(sample_shards):
    """timm's wds reader reads splits[NAME] {name, num_samples, filenames (relative to root), shard_lengths}."""
    with open(os.path.join(sample_shards, "_info.json")) as f:
        info = json.load(f)
    ds = shards.open(sample_shards)
    for split in ("train", "val"):
        entry = info["splits"][split]
        assert entry["name"] == split and entry["num_samples"] == ds.count(split)
        assert [os.path.join(sample_shards, f) for f in entry["filenames"]] == ds.urls(split)
        for path, length in zip(entry["filenames"], entry["shard_lengths"], strict=True):
            with tarfile.open(os.path.join(sample_shards, path)) as tar:
                assert sum(m.name.endswith(".cls") for m in tar) == length


@pytest.mark.slow
def test_hugging_face_datasets_webdataset_loader(sample_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # before the import: datasets reads it once
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    ds = shards.open(sample_shards)
    hf = datasets.load_dataset(
        "webdataset", data_files={"validation": ds.urls("val")}, split="validation", cache_dir=str(tmp_path)
    )
    assert hf.num_rows == 48
    labels = expected_labels(sample_shards, "val")
    for row in hf:
        assert row["jpg"].size == (256, 256) and row["cls"] == labels[row["__key__"]]


def test_our_api(sample_shards):
    ds = shards.open(sample_shards)
    assert ds.splits == ["train", "val"] and len(ds.classes) == 8
    assert ds.stats.eigvec.shape == (3, 3) and ds.stats.mean.shape == (3,)
    pairs = list(shards.webdataset(sample_shards, "val"))
    assert [label for _, label in pairs] == list(expected_labels(sample_shards, "val").values())
    assert all(image.mode == "RGB" and image.size == (256, 256) for image, _ in pairs)


def test_webdataset_kwargs_reach_webdataset_and_override_our_defaults(sample_shards):
    """Any `shardshuffle=` used to raise TypeError ('multiple values for keyword argument')."""
    in_order = [label for _, label in shards.webdataset(sample_shards, "train")]
    shuffled = [label for _, label in shards.webdataset(sample_shards, "train", shardshuffle=100, seed=1)]
    assert sorted(shuffled) == sorted(in_order) and len(in_order) == 192
    assert shuffled != in_order  # the shards came in another order

"""OUT/README.md: Hub front matter that parses and makes `datasets.load_dataset(OUT)` load exactly the samples."""

import os
from pathlib import Path

import pytest
import yaml

import shards


def front_matter(root):
    text = Path(os.path.join(root, "README.md")).read_text()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_front_matter_parses_and_names_only_the_tars(default_shards):
    meta, body = front_matter(default_shards)
    assert meta["license"] == "other" and meta["task_categories"] == ["image-classification"]
    assert meta["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": "train", "path": "train/*.tar"}, {"split": "validation", "path": "val/*.tar"}],
        }
    ]
    assert meta["size_categories"] == ["n<1K"]


def test_page_has_counts_statistics_names_and_recipes(default_shards):
    ds = shards.open(default_shards)
    _, body = front_matter(default_shards)
    assert f"| train | {ds.count('train')} | {len(ds.shards('train'))} |" in body
    assert f"| mean (0-255) | {ds.stats.mean[0]:.3f} |" in body
    assert "| 0 | n02123045 | tabby cat |" in body and "| 7 | n09428293 | beach |" in body
    assert "quality 90" in body and "bicubic" in body and f"tool version {ds.manifest['tool_version']}" in body
    assert "validation images have a copy in train" in body and "None: every input was read." in body
    for recipe in (
        "datasets.load_dataset(",
        "wds.WebDataset(",
        "fn.readers.webdataset(",
        "--dataset wds/",
        "tarfile.open(",
    ):
        assert recipe in body


def test_compact_class_table_for_many_classes():
    from shards.card import classes_section

    classes = [f"n{i:08d}" for i in range(1000)]
    text = classes_section({"classes": classes, "class_names": [f"name {i}" for i in range(1000)]})
    rows = [line for line in text.splitlines() if line.startswith("| 0 |") or line.startswith("| 4 |")]
    assert len(text.splitlines()) < 260 and "| 999 | n00000999 | name 999 |" in text and len(rows) == 2


def test_hugging_face_load_dataset_of_the_folder(default_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # before the import: datasets reads it once
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    ds = shards.open(default_shards)
    hf = datasets.load_dataset(default_shards, cache_dir=str(tmp_path))
    assert {split: hf[split].num_rows for split in hf} == {"train": ds.count("train"), "validation": ds.count("val")}
    row = hf["validation"][0]
    assert row["jpg"].size == (256, 256) and ds.classes[row["cls"]] == row["json"]["wnid"]

"""Input discovery: ImageFolder, flat val + labels (Kaggle CSV or 'filename wnid'), ILSVRC tarballs."""

import io
import os
import tarfile
from pathlib import Path

import pytest

from shards.demo_data import make_sample_tree
from shards.errors import UserError
from shards.sources import find_splits, read_val_labels

SMALL = dict(num_classes=3, train_per_class=3, val_per_class=2, seed=1)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    return {
        layout: make_sample_tree(str(base / layout), layout=layout, **SMALL)
        for layout in ("folders", "flat-val", "tars")
    }


def summary(found):
    return {split: sorted((it.key, it.wnid) for it in items) for split, items in found.items()}


def test_all_layouts_find_the_same_images_and_labels(trees):
    folders = summary(find_splits(trees["folders"], None, None))
    assert len(folders["train"]) == 9 and len(folders["val"]) == 6
    assert summary(find_splits(trees["flat-val"], None, None)) == folders  # LOC_val_solution.csv found beside
    assert summary(find_splits(trees["tars"], None, None)) == folders  # dir holding ILSVRC2012_img_*.tar


def test_archive_members_are_read_in_place_byte_for_byte(trees):
    tar_items = find_splits(os.path.join(trees["tars"], "ILSVRC2012_img_train.tar"), None, None)["train"]
    files = {it.key: it for it in find_splits(trees["folders"], "train", None)["train"]}
    for it in tar_items:
        assert it.read() == files[it.key].read()
        assert it.source.startswith("ILSVRC2012_img_train.tar/")


def test_val_archive_inferred_and_labelled(trees):
    path = os.path.join(trees["tars"], "ILSVRC2012_img_val.tar")
    found = find_splits(path, None, os.path.join(trees["tars"], "val_labels.txt"))
    assert list(found) == ["val"] and all(it.wnid for it in found["val"])


def test_split_flag_selects_one(trees):
    assert list(find_splits(trees["folders"], "val", None)) == ["val"]


def test_label_file_formats(tmp_path):
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000002,n01440764 1 2 3 4 n01440764 5 6 7 8\n")
    txt = tmp_path / "labels.txt"
    txt.write_text("ILSVRC2012_val_00000002.JPEG n01440764\n\n")
    assert read_val_labels(str(csv)) == read_val_labels(str(txt)) == {"ILSVRC2012_val_00000002": "n01440764"}
    bad = tmp_path / "bad.txt"
    bad.write_text("ILSVRC2012_val_00000002.JPEG 65\n")  # a class number, not a wnid
    with pytest.raises(UserError, match="bad.txt:1"):
        read_val_labels(str(bad))


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("train_level", "point --src at its parent"),
        ("no_labels", "need labels"),
        ("unknown_image", "names 1 images that are not in"),
        ("unlabelled_image", "have no label"),
        ("gzip", "not an uncompressed tar"),
    ],
)
def test_wrong_sources_are_clear_user_errors(trees, tmp_path, case, words):
    flat = trees["flat-val"]
    src, labels = str(tmp_path / "nothing"), None
    if case == "empty":
        src = str(tmp_path)
    elif case == "train_level":
        src = os.path.join(trees["folders"], "train")
    elif case == "no_labels":
        src = str(tmp_path / "copy")
        os.makedirs(os.path.join(src, "val"))
        for name in os.listdir(os.path.join(flat, "val")):
            os.link(os.path.join(flat, "val", name), os.path.join(src, "val", name))
    elif case in ("unknown_image", "unlabelled_image"):
        src, labels = flat, str(tmp_path / "labels.txt")
        lines = Path(os.path.join(flat, "LOC_val_solution.csv")).read_text().splitlines()[1:]
        rows = [f"{line.split(',')[0]}.JPEG {line.split(',')[1].split()[0]}" for line in lines]
        rows = rows + ["ILSVRC2012_val_09999999.JPEG n01440764"] if case == "unknown_image" else rows[1:]
        Path(labels).write_text("\n".join(rows) + "\n")
    elif case == "gzip":
        src = str(tmp_path / "ILSVRC2012_img_val.tar.gz")
        with tarfile.open(src, "w:gz") as tar:
            tar.addfile(tarfile.TarInfo("x.JPEG"), io.BytesIO(b""))
    with pytest.raises(UserError, match=words):
        find_splits(src, "val" if case in ("unknown_image", "unlabelled_image", "no_labels") else None, labels)

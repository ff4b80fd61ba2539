"""The duplicate report: planted exact and near copies (within train, val vs train) are found, nothing else."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import hard_cases as hc
import numpy as np
import pytest
from PIL import Image
from servers import ROOT

import shards
from shards.convert import ShardConfig, convert
from shards.demo_data import make_sample_tree
from shards.duplicates import components, find_groups, match, near_pairs


def reencoded(data: bytes, quality=None, scale=1.0) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality or 90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """8 different photographs in train, planted copies of three of them, a val-only twin, one broken input."""
    tmp = tmp_path_factory.mktemp("planted")
    src = make_sample_tree(str(tmp / "src"), num_classes=8, train_per_class=1, val_per_class=0)
    train = os.path.join(src, "train")
    wnids = sorted(os.listdir(train))
    first = [os.path.join(train, w, os.listdir(os.path.join(train, w))[0]) for w in wnids[:3]]
    read = lambda p: Path(p).read_bytes()  # noqa: E731

    def write(path, data):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_bytes(data)

    write(os.path.join(train, wnids[0], "copy_exact.JPEG"), read(first[0]))  # exact, in train
    write(os.path.join(train, wnids[1], "copy_q70.JPEG"), reencoded(read(first[1]), 70))  # near, in train
    write(os.path.join(src, "val", wnids[2], "val_exact.JPEG"), read(first[2]))  # exact, val-train
    write(os.path.join(src, "val", wnids[0], "val_resized.JPEG"), reencoded(read(first[0]), scale=0.85))  # near
    twin = hc.encode(hc.photo((300, 200)).rotate(90, expand=True), "JPEG", quality=90)  # not in train
    write(os.path.join(src, "val", wnids[3], "val_twin_a.JPEG"), twin)  # val-val only: not reported
    write(os.path.join(src, "val", wnids[3], "val_twin_b.JPEG"), twin)
    write(os.path.join(train, wnids[4], "broken.JPEG"), hc.truncated_jpeg())
    out = str(tmp / "out")
    convert(ShardConfig(src=src, out=out, workers=2, progress=False))
    return out, [f"train/{os.path.basename(p)[:-5]}" for p in first]


def test_planted_copies_are_found_and_nothing_else(planted):
    out, (a, b, c) = planted
    manifest = shards.open(out).manifest
    assert manifest["duplicates"] == [
        {"kind": "exact", "samples": sorted([a, "train/copy_exact"])},
        {"kind": "exact", "samples": [c, "val/val_exact"]},
        {"kind": "near", "samples": sorted([a, "train/copy_exact"]) + ["val/val_resized"]},
        {"kind": "near", "samples": sorted([b, "train/copy_q70"])},
    ]
    summary = manifest["duplicate_summary"]
    assert summary["val_with_copy_in_train"] == {"exact": 1, "near": 1}
    assert summary["train_with_copy_in_train"] == {"exact": 2, "near": 2}  # a + copy_exact; b + copy_q70
    assert summary["groups"] == {"exact": 2, "near": 2}
    assert summary["images"] == 10 + 4 == manifest["splits"]["train"]["count"] + manifest["splits"]["val"]["count"]


def test_fingerprints_are_in_every_sample_json(planted):
    out, _ = planted
    ds = shards.open(out)
    import tarfile

    with tarfile.open(ds.urls("val")[0]) as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    assert metas and len(metas) == ds.shard_counts("val")[0]
    for meta in metas:
        assert len(meta["digest"]) == len(meta["phash"]) == 16
        int(meta["digest"], 16), int(meta["phash"], 16)


def test_card_and_stats_command_print_the_counts(planted, tmp_path):
    out, _ = planted
    card = Path(os.path.join(out, "README.md")).read_text()
    assert "2 validation images have a copy in train (1 identical, 1 near-identical)" in card
    assert "broken.JPEG" in card and "truncated" in card  # the skipped input, with its reason
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "cli.py"), "stats", "--shards", out],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "duplicates: 2 validation images have a copy in train" in result.stdout


def test_near_pairs_finds_every_pair_within_3_bits_and_no_other():
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, 5000, dtype=np.int64).astype(np.uint64)
    hashes[:300] = hashes[0] & np.uint64(0xFFFF)  # a crowded band bucket: 300 hashes share band 0
    hashes[:300] |= rng.integers(1, 2**40, 300, dtype=np.int64).astype(np.uint64) << np.uint64(16)
    planted = {}
    for n, bits in enumerate([1, 2, 3, 4, 5, 3, 2]):
        src, dst = 400 + n, 4000 + n
        flips = rng.choice(64, bits, replace=False)
        hashes[dst] = hashes[src] ^ np.uint64(sum(1 << int(f) for f in flips))
        planted[(src, dst)] = bits
    i, j = near_pairs(hashes, 3)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    brute = {
        (p, q)
        for p in range(len(hashes))
        for q in range(p + 1, len(hashes))
        if p in range(400, 407) or q in range(4000, 4007) or p < 300 and q < 300
        if int(hashes[p] ^ hashes[q]).bit_count() <= 3
    }
    assert {k for k, bits in planted.items() if bits <= 3} <= found
    assert not {k for k, bits in planted.items() if bits > 3} & found
    assert brute <= found and all(int(hashes[p] ^ hashes[q]).bit_count() <= 3 for p, q in found)


def test_groups_are_connected_components_and_val_only_pairs_are_left_out():
    assert [c.tolist() for c in components(np.array([0, 5, 7]), np.array([5, 9, 8]))] == [[0, 5, 9], [7, 8]]
    ids = ["train/a", "train/b", "val/c", "val/d", "train/e"]
    digests = ["00000000000000aa", "00000000000000aa", "00000000000000bb", "00000000000000bb", "00000000000000cc"]
    phashes = ["ffff0000ffff0000", "ffff0000ffff0000", "0000ffff0000ffff", "0000ffff0000ffff", "ffff0000ffff0003"]
    assert find_groups(ids, digests, phashes) == [
        {"kind": "exact", "samples": ["train/a", "train/b"]},
        {"kind": "near", "samples": ["train/a", "train/b", "train/e"]},
    ]


def test_counts_each_image_once_and_only_for_copies_in_train():
    ids = ["train/a", "val/b", "train/c", "val/d"]
    digests = ["01", "02", "03", "03"]
    phashes = ["ffff0000ffff0000", "ffff0000ffff0003", "00ff00ff00ff00ff", "00ff00ff00ff00ff"]
    groups, counts = match(ids, digests, phashes)
    assert groups == [
        {"kind": "exact", "samples": ["train/c", "val/d"]},
        {"kind": "near", "samples": ["train/a", "val/b"]},
    ]
    assert counts["val_with_copy_in_train"] == {"exact": 1, "near": 1}
    assert counts["train_with_copy_in_train"] == {"exact": 0, "near": 0}  # a is near a val image only

"""The duplicate report: exact and near-duplicate images within train and between train and val.

A report only: nothing is dropped. Input: the fingerprints every shard worker kept in its record (imagehash.py),
so no tar is read again. Output: dataset.json["duplicates"] = [{"kind": "exact" | "near", "samples":
["train/KEY", "val/KEY", ...]}, ...] and dataset.json["duplicate_summary"] (threshold and counts).

Matching is sub-quadratic: exact = equal digests (sorting); near = phash Hamming distance <= T, found by
multi-index hashing: the 64 bits cut into 4 bands of 16, and a pair within distance 3 agrees on at least one band
(pigeonhole), so only pairs sharing a band value are compared (about n^2 / 2^16 per band for n random hashes),
each by its full Hamming distance. Groups are the connected components of the matching pairs. Pairs inside the
validation split alone are not reported (the issue is train vs train and val vs train).
"""

from __future__ import annotations

import json

import numpy as np

from . import format as fmt
from . import io as store
from .layout import record_path, work_dir

THRESHOLD = 3  # chosen by measurement (bench/phash_threshold.py); the bands below find every pair up to 3
BANDS = 4


def near_pairs(hashes: np.ndarray, threshold: int = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j, of every pair of uint64 hashes within `threshold` bits (complete for threshold <= 3)."""
    if threshold >= BANDS:
        raise ValueError(f"{BANDS} bands find every pair only up to distance {BANDS - 1}")
    found_i, found_j = [], []
    for band in range(BANDS):
        values = (hashes >> np.uint64(16 * band)) & np.uint64(0xFFFF)
        order = np.argsort(values, kind="stable")
        ranked = values[order]
        active = np.arange(len(hashes) - 1)  # positions p whose group still has a member at p + k
        k = 1
        while len(active):
            active = active[active + k < len(ranked)]
            active = active[ranked[active] == ranked[active + k]]
            i, j = order[active], order[active + k]
            close = np.bitwise_count(hashes[i] ^ hashes[j]) <= threshold
            found_i.append(np.minimum(i, j)[close])
            found_j.append(np.maximum(i, j)[close])
            k += 1
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    n = np.int64(len(hashes))
    pairs = np.unique(np.concatenate(found_i).astype(np.int64) * n + np.concatenate(found_j))  # a pair once
    return pairs // n, pairs % n


def exact_pairs(digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first of its group, other member) of equal digests."""
    order = np.argsort(digests, kind="stable")
    ranked = digests[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    first = np.repeat(order[starts], np.diff(np.r_[starts, len(order)]))
    keep = first != order
    return first[keep].astype(np.int64), order[keep].astype(np.int64)


def components(i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """Connected components (arrays of node ids, sorted) of the graph with edges (i, j)."""
    if not len(i):
        return []
    nodes, inverse = np.unique(np.concatenate([i, j]), return_inverse=True)
    a, b = inverse[: len(i)], inverse[len(i) :]
    label = np.arange(len(nodes))
    while True:  # min-label propagation with pointer jumping
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]
        if (new == label).all():
            break
        label = new
    order = np.argsort(label, kind="stable")
    cuts = np.flatnonzero(np.diff(label[order])) + 1
    return [nodes[group] for group in np.split(order, cuts)]


def find_groups(ids: list[str], digests: list[str], phashes: list[str], threshold: int = THRESHOLD) -> list[dict]:
    """Duplicate groups among samples named "split/KEY" (train vs train, val vs train)."""
    return match(ids, digests, phashes, threshold)[0]


def match(ids: list[str], digests: list[str], phashes: list[str], threshold: int = THRESHOLD) -> tuple[list, dict]:
    """(groups, counts): groups are connected components of the matching pairs; counts are per image, each image
    counted once, as identical if it has an identical copy, else as near-identical if it has a near one."""
    counts = {
        "groups": {"exact": 0, "near": 0},
        "val_with_copy_in_train": {"exact": 0, "near": 0},
        "train_with_copy_in_train": {"exact": 0, "near": 0},
    }
    if not ids:
        return [], counts
    is_val = np.array([s.startswith("val/") for s in ids])
    dig = np.array([int(d, 16) for d in digests], np.uint64)
    ph = np.array([int(p, 16) for p in phashes], np.uint64)
    groups, counted = [], set()
    for kind, (i, j) in (("exact", exact_pairs(dig)), ("near", near_pairs(ph, threshold))):
        linked = set()  # images with a copy in train, of this kind
        if kind == "exact":  # identical is transitive: whole groups, those holding a training image
            found = [g for g in components(i, j) if (~is_val[g]).any()]
            for g in found:
                train = g[~is_val[g]]
                linked.update(g[is_val[g]].tolist() + (train.tolist() if len(train) > 1 else []))
        else:  # near: pairs of different images, not both in val; an image counts if it has such a pair
            keep = ~(is_val[i] & is_val[j]) & (dig[i] != dig[j])
            found = components(i[keep], j[keep])
            both_train = keep & ~is_val[i] & ~is_val[j]
            ends = np.concatenate([i[keep], j[keep]])
            linked.update(ends[is_val[ends]].tolist() + i[both_train].tolist() + j[both_train].tolist())
        groups += [{"kind": kind, "samples": sorted((ids[m] for m in g), key=_sample_order)} for g in found]
        for m in linked - counted:
            counts["val_with_copy_in_train" if is_val[m] else "train_with_copy_in_train"][kind] += 1
        counted |= linked
        counts["groups"][kind] = len(found)
    groups.sort(key=lambda g: (g["kind"] != "exact", _sample_order(g["samples"][0])))
    return groups, counts


def _sample_order(sample: str) -> tuple:
    split, key = sample.split("/", 1)
    return (fmt.SPLITS.index(split) if split in fmt.SPLITS else len(fmt.SPLITS), key)


def summary_lines(s: dict) -> list[str]:
    """ "12 validation images have a copy in train (5 identical, 7 near)" and the like."""
    v, t = s["val_with_copy_in_train"], s["train_with_copy_in_train"]
    return [
        f"{v['exact'] + v['near']} validation images have a copy in train "
        f"({v['exact']} identical, {v['near']} near-identical)",
        f"{t['exact'] + t['near']} training images have a copy in train ({t['exact']} identical, "
        f"{t['near']} near-identical; {s['groups']['exact']} + {s['groups']['near']} groups, "
        f"near = phash distance <= {s['threshold']})",
    ]


def duplicate_report(
    out: str, manifest: dict, threshold: int = THRESHOLD, records: dict[str, list[dict]] | None = None
) -> dict:
    """{"duplicates": groups, "duplicate_summary": counts} over every split of the manifest, from the shard
    records: those given (split -> records, as a run has them), the others' read from OUT/.work/<split>/."""
    given = {(split, r["name"]): r.get("fingerprints") for split, rs in (records or {}).items() for r in rs}
    stored = store.read_many(
        [
            _record(out, split, shard["name"])
            for split, entry in manifest["splits"].items()
            for shard in entry["shards"]
            if (split, shard["name"]) not in given
        ]
    )  # one batch
    ids, digests, phashes, missing = [], [], [], []
    for split, entry in manifest["splits"].items():
        for shard in entry["shards"]:
            key = (split, shard["name"])
            prints = given[key] if key in given else _fingerprints(stored.get(_record(out, split, shard["name"])))
            if prints is None:
                missing.append(f"{split}/{shard['name']}")
                continue
            for key, digest, phash in prints:
                ids.append(f"{split}/{key}")
                digests.append(digest)
                phashes.append(phash)
    groups, counts = match(ids, digests, phashes, threshold)
    summary = {"threshold": threshold, "images": len(ids), **counts}
    if missing:  # shards written by a version without fingerprints: rewrite them (--overwrite) to include them
        summary["shards_without_fingerprints"] = missing
    return {"duplicates": groups, "duplicate_summary": summary}


def _record(out: str, split: str, name: str) -> str:
    return record_path(work_dir(out, split), name)


def _fingerprints(record: bytes | None) -> list | None:
    try:
        return json.loads(record).get("fingerprints") if record is not None else None
    except ValueError:
        return None


def attach_duplicates(manifest: dict, out: str, records: dict[str, list[dict]] | None = None) -> None:
    """manifest["duplicates"] and manifest["duplicate_summary"]; the summary lines printed."""
    manifest.update(duplicate_report(out, manifest, records=records))
    print_summary(manifest)


def print_summary(manifest: dict) -> None:
    """The lines `cli.py shard` and `cli.py stats` print (nothing for a manifest without a report)."""
    if "duplicate_summary" in manifest:
        for line in summary_lines(manifest["duplicate_summary"]):
            print(f"duplicates: {line}")

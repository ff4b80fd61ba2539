"""OUT/README.md: the dataset card, written at the end of every successful `cli.py shard` run.

YAML front matter the Hugging Face Hub reads (license placeholder, task, `configs` whose data_files name only the
tars, so `datasets.load_dataset(OUT)` loads exactly the samples and never the DALI .idx files), then the page a
person reads: what the images are, counts, statistics, classes, skipped inputs, duplicates, how to load them.
"""

from __future__ import annotations

import json

from . import format as fmt
from . import io as store
from .classnames import names_of
from .duplicates import attach_duplicates, summary_lines

CARD = "README.md"
HF_SPLITS = {"train": "train", "val": "validation"}  # our folder -> the Hub's split name
FULL_CLASS_TABLE = 50  # up to this many classes: a row each; more: a compact table, 4 classes a row
LISTED = 20  # skipped inputs / duplicate groups shown per section (all of them in dataset.json)


def finish_run(out: str, manifest: dict, records: dict[str, list[dict]] | None = None) -> None:
    """The convert hook: duplicate report into the manifest, the manifest rewritten, the card written.
    `records`: the shard records of the splits this run wrote (the others' are read from OUT/.work)."""
    attach_duplicates(manifest, out, records)
    store.write_atomically(store.join(out, fmt.MANIFEST), json.dumps(manifest, indent=1) + "\n")
    store.write_atomically(store.join(out, CARD), card_text(out, manifest))
    print(f"dataset card: {store.join(out, CARD)}")


def front_matter(manifest: dict) -> dict:
    splits = [s for s in fmt.SPLITS if s in manifest["splits"]]
    total = sum(manifest["splits"][s]["count"] for s in splits)
    return {
        "license": "other",
        "license_name": "imagenet-terms-of-access",
        "license_link": "https://image-net.org/download.php",
        "task_categories": ["image-classification"],
        "pretty_name": "ImageNet (ILSVRC-2012) as 256x256 WebDataset shards",
        "size_categories": [size_category(total)],
        "configs": [
            {"config_name": "default", "data_files": [{"split": HF_SPLITS[s], "path": f"{s}/*.tar"} for s in splits]}
        ],
    }


def size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if n < limit:
            return name
    return "10M<n<100M"


def card_text(out: str, manifest: dict) -> str:
    import yaml  # here, not above: every pool worker imports cli.py again as it starts (parallel.py), and yaml's import
    # is 0.1 s of it there (docs/benchmarks.md)

    sections = [
        "---\n" + yaml.safe_dump(front_matter(manifest), sort_keys=False) + "---\n",
        "# ImageNet (ILSVRC-2012) as 256x256 WebDataset shards\n",
        "License: `other` is a placeholder. The images keep the terms under which you obtained ImageNet "
        "(https://image-net.org/download.php: non-commercial research and education); set the license of your "
        "copy before sharing it.\n",
        images_section(manifest),
        counts_section(manifest),
        stats_section(out),
        classes_section(manifest),
        skipped_section(manifest),
        duplicates_section(manifest),
        loading_section(manifest),
        f"Written by the ImageNet -> WebDataset sharder, tool version {manifest.get('tool_version')}, shard format "
        f"version {manifest.get('format_version')}. The manifest `{fmt.MANIFEST}` has everything above in full.\n",
    ]
    return "\n".join(sections)


def images_section(manifest: dict) -> str:
    p = manifest["params"]
    shard_size = p.get("shard_size") or "auto (at most 1000, and at least min(64, n/16) shards per split)"
    return (
        f"## The images\n\nEvery image is {p['size']}x{p['size']} RGB, a baseline 4:2:0 JPEG at quality "
        f"{p['quality']}: decoded from the original (any format or colour mode; alpha composited on white, "
        f"16-bit scaled to 8-bit), its shorter side resized to {p['size']} with an antialiased "
        f"{p['resize_filter']} filter (small images are upscaled) and the centre {p['size']}x{p['size']} "
        f"kept. Training samples are in a random order (seed {p['seed']}); validation samples in sorted order. "
        f"Samples per shard: {shard_size}.\n\nEach sample: `KEY.jpg` (the image), `KEY.cls` (label, ASCII "
        "decimal), `KEY.lbl` (the same label, int32 little-endian), `KEY.json` (`wnid`, `source` path, "
        "original `width`/`height`, `digest` and `phash` fingerprints). Label = index of the wnid in the "
        "sorted training wnids (`n01440764` is 0).\n"
    )


def counts_section(manifest: dict) -> str:
    rows = ["## Counts\n", "| split | images | shards | bytes | skipped inputs |", "|---|---:|---:|---:|---:|"]
    for split in fmt.SPLITS:
        if split in manifest["splits"]:
            e = manifest["splits"][split]
            rows.append(
                f"| {split} | {e['count']:,} | {len(e['shards']):,} | "
                f"{sum(s['bytes'] for s in e['shards']):,} | {len(e['skipped']):,} |"
            )
    return "\n".join(rows) + "\n"


def stats_section(out: str) -> str:
    try:
        s = store.read_json(store.join(out, fmt.STATS))
    except (OSError, ValueError):
        return "## Statistics\n\nNo `stats.json` (no training split yet).\n"
    rows = [
        "## Statistics of the training images\n",
        f"Over {s['count']:,} images ({s['pixels']:,} pixels), computed from the JPEGs as written "
        f"(`{fmt.STATS}`; per-pixel mean image in `{fmt.MEAN_IMAGE}`).\n",
        "| | R | G | B |",
        "|---|---:|---:|---:|",
        "| mean (0-255) | " + " | ".join(f"{v:.3f}" for v in s["mean"]) + " |",
        "| std (0-255) | " + " | ".join(f"{v:.3f}" for v in s["std"]) + " |",
        "\nPCA of the RGB covariance ([0,1] scale), for AlexNet's lighting noise "
        "`eigvec @ (alpha * eigval)`, alpha ~ N(0, 0.1^2):\n",
        "| component | eigval | eigvec (R, G, B) |",
        "|---|---:|---|",
    ]
    for i, val in enumerate(s["eigval"]):
        vec = ", ".join(f"{row[i]:+.4f}" for row in s["eigvec"])
        rows.append(f"| pc{i + 1} | {val:.5f} | {vec} |")
    return "\n".join(rows) + "\n"


def classes_section(manifest: dict) -> str:
    classes, names = manifest["classes"], names_of(manifest)
    cells = [(i, wnid, names[i].replace("|", "/")) for i, wnid in enumerate(classes)]
    head = [f"## Classes\n\n{len(classes):,} classes; `classes` and `class_names` in `{fmt.MANIFEST}`.\n"]
    if len(cells) <= FULL_CLASS_TABLE:
        rows = ["| label | wnid | name |", "|---:|---|---|"] + [f"| {i} | {w} | {n} |" for i, w, n in cells]
    else:
        rows = ["| label | wnid | name " * 4 + "|", "|---:|---|---" * 4 + "|"]
        for start in range(0, len(cells), 4):
            rows.append("".join(f"| {i} | {w} | {n} " for i, w, n in cells[start : start + 4]) + "|")
    return "\n".join(head + rows) + "\n"


def skipped_section(manifest: dict) -> str:
    rows = ["## Skipped inputs\n"]
    for split in fmt.SPLITS:
        skipped = manifest["splits"].get(split, {}).get("skipped", [])
        if skipped:
            rows.append(f"{split}: {len(skipped):,} input(s) could not be read and are not in the shards:\n")
            rows += listed(skipped, f"splits.{split}.skipped")
    if len(rows) == 1:
        rows.append("None: every input was read.\n")
    for split in fmt.SPLITS:
        repaired = manifest["splits"].get(split, {}).get("repaired", [])
        if repaired:
            rows.append(f"{split}: {len(repaired):,} input(s) were repaired before decoding and are in the shards:\n")
            rows += listed(repaired, f"splits.{split}.repaired")
    return "\n".join(rows)


def listed(inputs: list[dict], where: str) -> list[str]:
    rows = [f"- `{s['path']}`: {s['reason']}" for s in inputs[:LISTED]]
    if len(inputs) > LISTED:
        rows.append(f"- ... and {len(inputs) - LISTED:,} more (`{where}` in `{fmt.MANIFEST}`)")
    return rows + [""]


def duplicates_section(manifest: dict) -> str:
    summary, groups = manifest.get("duplicate_summary"), manifest.get("duplicates", [])
    if summary is None:
        return "## Duplicates\n\nNo duplicate report.\n"
    rows = [
        "## Duplicates\n",
        "A report only: every image is in the shards. Exact = identical 256x256 images; "
        f"near = perceptual hashes (64-bit DCT hash) within {summary['threshold']} bits: the same picture "
        "re-encoded or resized (a shifted framing is mostly not caught). Within train, and validation against "
        "train.\n",
    ]
    rows += [f"- {line}" for line in summary_lines(summary)]
    if summary.get("shards_without_fingerprints"):
        rows.append(
            f"- {len(summary['shards_without_fingerprints'])} shards were written without fingerprints "
            "and are not covered (rewrite them with `--overwrite`)"
        )
    if groups:
        rows.append(f"\nFirst groups (all {len(groups):,} in `duplicates` in `{fmt.MANIFEST}`):\n")
        rows += [f"- {g['kind']}: " + ", ".join(f"`{s}`" for s in g["samples"]) for g in groups[:LISTED]]
    return "\n".join(rows) + "\n"


def loading_section(manifest: dict) -> str:
    hf_split = HF_SPLITS["val"] if "val" in manifest["splits"] else HF_SPLITS["train"]
    split = "val" if "val" in manifest["splits"] else "train"
    return f"""## How to load

```python
# Hugging Face datasets: this card's `configs` name the tars only (the folders also hold DALI's .idx files)
import datasets
ds = datasets.load_dataset("path/to/this/folder")   # splits: {
        ", ".join(HF_SPLITS[s] for s in fmt.SPLITS if s in manifest["splits"])
    }
row = ds["{hf_split}"][0]                                # row["jpg"] (PIL image), row["cls"] (label), row["json"]

# webdataset + PyTorch DataLoader
import shards, webdataset as wds
urls = shards.open("path/to/this/folder").urls("{split}")
dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "cls")

# NVIDIA DALI, with the shipped index files
from nvidia.dali import fn, types
sd = shards.open("path/to/this/folder")
jpegs, labels = fn.readers.webdataset(paths=sd.urls("{split}"), index_paths=sd.index_paths("{split}"),
                                      ext=["jpg", "lbl"], dtypes=[types.UINT8, types.INT32])

# timm (reads _info.json):
#   python train.py --dataset wds/imagenet --data-dir path/to/this/folder --train-split train --val-split val

# plain tarfile: members KEY.jpg, KEY.cls, KEY.lbl, KEY.json
import tarfile
with tarfile.open(urls[0]) as tar:
    names = tar.getnames()

# this project's API
for image, label in shards.webdataset("path/to/this/folder", "{split}"):
    ...
```

`datasets.load_dataset("webdataset", data_dir=...)` does not work on this folder: it takes every file under
`train/` and `val/`, the `.idx` files included, and fails with "invalid header"; load the folder itself as above.
"""

"""The on-disk contract (docs/DESIGN.md): names, components and the manifest version check.

Readers (pipelines/, other projects) rely on these names; change them only with FORMAT_VERSION.
"""

from __future__ import annotations

import json

from . import io as store
from .errors import UserError

FORMAT_VERSION = 1
TOOL_VERSION = "0.1.0"
SPLITS = ("train", "val")
DEFAULT_SHARDS = "./imagenet-wds"  # every command's default --shards / --out

MANIFEST = "dataset.json"
STATS = "stats.json"
MEAN_IMAGE = "mean_image.npy"
TIMM_INFO = "_info.json"

# Components of one sample, by extension (the part of the tar member name after the key's first dot).
IMAGE_EXT = "jpg"  # 256x256 RGB baseline JPEG
LABEL_EXT = "cls"  # label as ASCII decimal (webdataset / timm convention)
LABEL_I32_EXT = "lbl"  # the same label as 4-byte little-endian int32: DALI reads ASCII .cls as ragged bytes
META_EXT = "json"  # wnid, source path relative to SRC, original width and height, digest, phash
COMPONENTS = (IMAGE_EXT, LABEL_EXT, LABEL_I32_EXT, META_EXT)  # order inside the tar


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def read_manifest(root: str) -> dict:
    """Load OUT/dataset.json and check its format version, with a hint on a missing or foreign file."""
    path = store.join(root, MANIFEST)
    if not store.isfile(path):
        if not store.isdir(root):
            raise UserError(f"{root} does not exist: run `cli.py shard --src IMAGENET --out {root}` first")
        raise UserError(
            f"{root} has no {MANIFEST}: it is not a finished shard directory "
            f"(run `cli.py shard --src IMAGENET --out {root}`, or rerun it to finish)"
        )
    try:
        manifest = json.loads(store.read_bytes(path))
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}): rerun `cli.py shard` into this directory") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"{path} has format version {version!r}, this tool reads version {FORMAT_VERSION}: "
            "rewrite the shards with this version (`cli.py shard --overwrite`)"
        )
    return manifest


def timm_info(manifest: dict) -> dict:
    """`_info.json` as timm's `wds/` reader expects: split sizes, shard names and lengths."""
    splits = {}
    for split, entry in manifest["splits"].items():
        names = [s["name"] for s in entry["shards"]]
        splits[split] = {
            "name": split,
            "num_samples": entry["count"],
            "filenames": [f"{split}/{n}" for n in names],
            "shard_lengths": [s["count"] for s in entry["shards"]],
        }
    return {"name": "imagenet-wds", "num_classes": len(manifest["classes"]), "splits": splits}

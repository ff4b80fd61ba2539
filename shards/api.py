"""The small reader API other projects import: `shards.open(DIR)` and `shards.webdataset(DIR, split)`.

DIR is a local folder or an fsspec URL (s3://bucket/imagenet-wds): the shards stream from where they are.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from . import dali_index
from . import format as fmt
from . import io as store
from .errors import UserError


@dataclass(frozen=True)
class Stats:
    """stats.json as numpy: mean/std on the 0-255 scale (R,G,B); eigval/eigvec of the [0,1]-scaled covariance."""

    mean: np.ndarray
    std: np.ndarray
    cov: np.ndarray
    eigval: np.ndarray
    eigvec: np.ndarray  # column i = eigenvector i
    count: int
    pixels: int


class ShardSet:
    """A finished shard directory: classes, statistics and shard paths per split."""

    def __init__(self, root: str):
        self.root = store.absolute(root)
        self.manifest = fmt.read_manifest(self.root)
        self.classes: list[str] = list(self.manifest["classes"])

    @property
    def splits(self) -> list[str]:
        return [s for s in fmt.SPLITS if s in self.manifest["splits"]]

    def _split(self, split: str) -> dict:
        if split not in self.manifest["splits"]:
            raise UserError(
                f"{self.root} has no '{split}' split (it has: {', '.join(self.splits) or 'none'}); "
                f"add it with `cli.py shard --src IMAGENET --out {self.root} --split {split}`"
            )
        return self.manifest["splits"][split]

    def shards(self, split: str) -> list[dict]:
        """Manifest entries of the split's shards: name, count, bytes, sha256."""
        return list(self._split(split)["shards"])

    def urls(self, split: str) -> list[str]:
        return [store.join(self.root, split, s["name"]) for s in self.shards(split)]

    def index_paths(self, split: str) -> list[str]:
        return [store.join(self.root, split, dali_index.index_name(s["name"])) for s in self.shards(split)]

    def shard_counts(self, split: str) -> list[int]:
        return [s["count"] for s in self.shards(split)]

    def count(self, split: str) -> int:
        return int(self._split(split)["count"])

    def skipped(self, split: str) -> list[dict]:
        return list(self._split(split)["skipped"])

    def repaired(self, split: str) -> list[dict]:
        """Inputs kept after a repair (a JPEG whose end marker was missing), with the reason."""
        return list(self._split(split).get("repaired", []))  # manifests before the field have none

    @property
    def stats(self) -> Stats:
        path = store.join(self.root, fmt.STATS)
        if not store.isfile(path):
            raise UserError(
                f"{path} is missing: run `cli.py stats --shards {self.root}` "
                "(the training split is needed for statistics)"
            )
        s = json.loads(store.read_bytes(path))
        return Stats(
            mean=np.array(s["mean"]),
            std=np.array(s["std"]),
            cov=np.array(s["cov"]),
            eigval=np.array(s["eigval"]),
            eigvec=np.array(s["eigvec"]),
            count=s["count"],
            pixels=s["pixels"],
        )

    def mean_image(self) -> np.ndarray:
        """Per-pixel mean of the training images, float32 HWC on the 0-255 scale (the paper's mean image)."""
        path = store.join(self.root, fmt.MEAN_IMAGE)
        if not store.isfile(path):
            raise UserError(f"{path} is missing: shard the training split first")
        return store.load_npy(path)


def _decode_sample(sample: dict):
    from PIL import Image

    image = Image.open(io.BytesIO(sample[fmt.IMAGE_EXT]))
    image.load()
    return image.convert("RGB"), int(sample[fmt.LABEL_EXT])


def webdataset(root: str, split: str, shuffle: int = 0, **kwargs):
    """A `webdataset.WebDataset` of `(PIL RGB image, int label)` over one split; kwargs go to WebDataset
    (they override its defaults here: shardshuffle=False, empty_check=False). Remote shards stream via fsspec."""
    import webdataset as wds

    urls = [_streamable(url) for url in ShardSet(root).urls(split)]
    dataset = wds.WebDataset(urls, **{"shardshuffle": False, "empty_check": False, **kwargs})
    if shuffle:
        dataset = dataset.shuffle(shuffle)
    return dataset.map(_decode_sample)


def _streamable(url: str) -> str:
    """What webdataset opens: a local path as it is; an object-store URL through a `pipe:` to fsspec's reader (the
    same credentials and endpoint as everything else, no gsutil or aws CLI; works in spawned DataLoader workers)."""
    if not store.is_url(url):
        return url
    import shlex
    import sys

    return f"pipe:{shlex.quote(sys.executable)} -c {shlex.quote(_CAT)} {shlex.quote(url)}"


_CAT = (
    "import fsspec, shutil, signal, sys; signal.signal(signal.SIGPIPE, signal.SIG_DFL); "  # a reader that stops
    "shutil.copyfileobj(fsspec.open(sys.argv[1]).open(), sys.stdout.buffer, 1 << 20)"
)  # early: end quietly

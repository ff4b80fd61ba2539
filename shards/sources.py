"""Find the inputs: ImageFolder trees, a flat val folder + labels file, or the original ILSVRC2012 tarballs.

Every input becomes an `Item` that says where its bytes are (a file, or a byte range inside a tar), so
workers read them in parallel and in any order: archives are indexed once (headers only, never extracted)
and their members read in place. SRC is a local path or an fsspec URL (s3://bucket/imagenet): an archive
member on an object store is one ranged GET, never a download of the whole tarball.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass

from . import io as store
from .errors import UserError

# ImageNet's own extensions; anything else in a class folder is still tried (PIL decides what is an image).
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class Item:
    """One input image: where its bytes are and what it is."""

    key: str  # sample key in the shards (the source file's stem, dot-free)
    wnid: str
    source: str  # path relative to SRC (inside an archive: archive/member[/member])
    path: str  # file or object holding the bytes (absolute path or URL)
    offset: int = 0
    size: int = -1  # -1: the whole file

    def read(self) -> bytes:
        if self.size < 0:
            return store.read_bytes(self.path)
        return store.read_bytes(self.path, self.offset, self.offset + self.size)


def find_splits(src: str, split: str | None, val_labels: str | None) -> dict[str, list[Item]]:
    """{split: items} for everything SRC holds (or only `split`). Raises UserError on a wrong SRC."""
    src = store.absolute(src)
    if store.isfile(src):
        return _from_archive(src, split, val_labels)
    if not store.isdir(src):
        raise UserError(f"--src {src} does not exist")
    found: dict[str, list[Item]] = {}
    for name in ("train", "val"):
        if split not in (None, name):
            continue
        folder = store.join(src, name)
        archive = store.join(src, f"ILSVRC2012_img_{name}.tar")
        if store.isdir(folder):
            found[name] = _from_folder(src, folder, name, val_labels)
        elif store.isfile(archive):
            found.update(_from_archive(archive, name, val_labels))
    if not found:
        _explain_empty(src, split)
    return found


def _explain_empty(src: str, split: str | None) -> None:
    entries = [e for e in store.listdir(src) if e not in IGNORED_NAMES]
    wanted = f"'{split}/'" if split else "'train/' or 'val/'"
    if any(WNID.match(e) for e in entries):
        raise UserError(
            f"--src {src} holds class folders directly: point --src at its parent (the folder that contains {wanted})"
        )
    if not entries:
        raise UserError(f"--src {src} is empty: point it at the ImageNet folder that contains {wanted}")
    raise UserError(
        f"--src {src} has no {wanted} folder and no ILSVRC2012_img_*.tar: point it at the "
        "ImageNet folder (ImageFolder layout) or at an archive"
    )


def _stem_key(name: str) -> str:
    """Dot-free key from a file name: 'n01440764_10026.JPEG' -> 'n01440764_10026'."""
    stem = posixpath.basename(name)
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    return re.sub(r"[^A-Za-z0-9_\-]", "_", stem) or "_"


def _from_folder(src: str, folder: str, split: str, val_labels: str | None) -> list[Item]:
    """One recursive listing (a paged LIST on an object store): `<wnid>/**/file` are class folders' images,
    top-level files are a flat validation folder's."""
    listed = [rel for rel in store.list_files(folder) if not any(_ignored(part) for part in rel.split("/"))]
    in_classes = [rel for rel in listed if "/" in rel]
    files = sorted(rel for rel in listed if "/" not in rel)
    items: list[Item] = []
    if in_classes:
        items = [
            Item(_stem_key(rel), rel.split("/", 1)[0], f"{split}/{rel}", store.join(folder, *rel.split("/")))
            for rel in in_classes
        ]
    elif files and split == "val":
        labels = read_val_labels(_labels_path(src, val_labels))
        items = [Item(_stem_key(n), None, f"{split}/{n}", store.join(folder, n)) for n in files]
        items = _attach_labels(items, labels, store.join(src, split))
    if not items:
        hint = " (a flat val folder needs --val-labels)" if files and split == "train" else ""
        raise UserError(f"no images found in {folder}: expected {folder}/<wnid>/*.JPEG{hint}")
    return sorted(items, key=lambda it: it.source)


def _ignored(name: str) -> bool:
    return name in IGNORED_NAMES or name.startswith(".")


def _labels_path(src: str, val_labels: str | None) -> str:
    if val_labels:
        if not store.isfile(val_labels):
            raise UserError(f"--val-labels {val_labels} does not exist")
        return val_labels
    for folder in (src, store.dirname(src)):
        for name in ("LOC_val_solution.csv", "val_labels.txt"):
            if store.isfile(store.join(folder, name)):
                return store.join(folder, name)
    raise UserError(
        "flat validation images need labels: pass --val-labels LOC_val_solution.csv "
        "(Kaggle) or a file of 'filename wnid' lines"
    )


def read_val_labels(path: str) -> dict[str, str]:
    """{key: wnid} from Kaggle's LOC_val_solution.csv or 'filename wnid' lines."""
    labels: dict[str, str] = {}
    with io.StringIO(store.read_bytes(path).decode("utf-8-sig"), newline="") as f:
        first = f.readline()
        f.seek(0)
        if first.startswith("ImageId"):
            rows = (
                (r["ImageId"], r["PredictionString"].split()[0] if r["PredictionString"].split() else "")
                for r in csv.DictReader(f)
            )
        else:
            rows = (tuple(line.replace(",", " ").split()[:2]) for line in f if line.strip())
        for n, row in enumerate(rows, start=1):
            if len(row) != 2 or not WNID.match(row[1]):
                raise UserError(
                    f"{path}:{n}: expected 'filename wnid' (e.g. 'ILSVRC2012_val_00000001.JPEG "
                    f"n01751748'), got {' '.join(row)!r}"
                )
            labels[_stem_key(row[0])] = row[1]
    if not labels:
        raise UserError(f"{path} has no labels")
    return labels


def _attach_labels(items: list[Item], labels: dict[str, str], where: str) -> list[Item]:
    """Give every flat val image its wnid; an image without a label, or a label without an image, is an error."""
    missing = [it.source for it in items if it.key not in labels]
    if missing:
        raise UserError(
            f"{len(missing)} images in {where} have no label in the labels file "
            f"(first: {missing[0]}): is it the labels file of this validation set?"
        )
    keys = {it.key for it in items}
    unknown = [k for k in labels if k not in keys]
    if unknown:
        raise UserError(
            f"the labels file names {len(unknown)} images that are not in {where} "
            f"(first: {unknown[0]}): is the validation folder complete?"
        )
    return [Item(it.key, labels[it.key], it.source, it.path, it.offset, it.size) for it in items]


def _from_archive(path: str, split: str | None, val_labels: str | None) -> dict[str, list[Item]]:
    """An uncompressed ILSVRC tar, indexed in place: member bytes are read later by offset."""
    name = store.basename(path)
    index = archive_index(path)
    files, inner = index["files"], index["inner"]
    is_train = bool(inner)
    inferred = (
        "train" if is_train else ("val" if "val" in name or not any(n.endswith(".tar") for n, _, _ in files) else None)
    )
    which = split or inferred
    if which is None:
        raise UserError(f"cannot tell which split {path} holds: pass --split train|val")
    if which == "train" and not is_train:
        raise UserError(
            f"{path} is not a tar of per-class tars (like ILSVRC2012_img_train.tar): "
            "pass --split val with --val-labels if it holds validation images"
        )
    if which == "train":
        items = [
            Item(_stem_key(n), posixpath.basename(outer)[: -len(".tar")], f"{name}/{outer}/{n}", path, at, size)
            for outer, members in inner.items()
            for n, at, size in members
            if not _ignored(posixpath.basename(n))
        ]
    else:
        items = [
            Item(_stem_key(n), None, f"{name}/{n}", path, at, size)
            for n, at, size in files
            if not _ignored(posixpath.basename(n))
        ]
        items = _attach_labels(items, read_val_labels(_labels_path(store.dirname(path), val_labels)), path)
    if not items:
        raise UserError(f"{path} holds no images")
    return {which: sorted(items, key=lambda it: it.source)}


def archive_index(path: str) -> dict:
    """{"files": [(name, data offset, size)], "inner": {inner tar: [(name, offset in the archive, size)]}} of an
    uncompressed tar, from its headers alone; "inner" is filled when every file is a tar (the train archive).

    The headers are spread over the whole archive, so indexing one on an object store is a sequential read of
    it (140 GB for the train tar): the index is kept in the local cache under the object's version (ETag), and
    a rerun (resume) reads it from there."""
    cache = _archive_cache_path(path) if store.is_url(path) else None
    if cache and os.path.isfile(cache):
        with open(cache, "rb") as f:
            return json.loads(gzip.decompress(f.read()))
    with store.open(path, "rb") as f:
        try:  # uncompressed only: members must be addressable by offset
            tar = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115 - closed by the `with tar` below
        except tarfile.ReadError:
            raise UserError(
                f"{path} is not an uncompressed tar archive (the ILSVRC2012 downloads are plain .tar); "
                "for a folder of images pass the folder"
            ) from None
        with tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            index = {"files": [(m.name, m.offset_data, m.size) for m in members], "inner": {}}
            if members and all(m.name.endswith(".tar") for m in members):
                for m in members:
                    with tarfile.open(fileobj=tar.extractfile(m), mode="r:") as inner:
                        index["inner"][m.name] = [
                            (i.name, m.offset_data + i.offset_data, i.size) for i in inner.getmembers() if i.isfile()
                        ]
    if cache:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        store.write_atomically(cache, gzip.compress(json.dumps(index).encode()))
    return index


def _archive_cache_path(url: str) -> str:
    fs, p = store.filesystem(url)
    info = fs.info(p)
    version = next(
        (str(info[k]) for k in ("ETag", "etag", "generation", "md5Hash", "LastModified", "mtime") if info.get(k)), ""
    )
    key = hashlib.sha256(f"{url}\n{info.get('size')}\n{version}".encode()).hexdigest()
    return os.path.join(store.cache_dir("archives"), key + ".json.gz")

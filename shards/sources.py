"""Find the inputs: ImageFolder trees, a flat val folder + labels file, or the original ILSVRC2012 tarballs.

Every input becomes an `Item` that says where its bytes are (a file, or a byte range inside a tar), so
worker processes read them in parallel and in any order: archives are indexed once (headers only, never
extracted) and their members read in place.
"""
from __future__ import annotations

import csv
import os
import re
import tarfile
from dataclasses import dataclass

from .errors import UserError

# ImageNet's own extensions; anything else in a class folder is still tried (PIL decides what is an image).
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class Item:
    """One input image: where its bytes are and what it is."""

    key: str       # sample key in the shards (the source file's stem, dot-free)
    wnid: str
    source: str    # path relative to SRC (inside an archive: archive/member[/member])
    path: str      # file holding the bytes
    offset: int = 0
    size: int = -1  # -1: the whole file

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.size < 0:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)


def find_splits(src: str, split: str | None, val_labels: str | None) -> dict[str, list[Item]]:
    """{split: items} for everything SRC holds (or only `split`). Raises UserError on a wrong SRC."""
    if not os.path.exists(src):
        raise UserError(f"--src {src} does not exist")
    if os.path.isfile(src):
        return _from_archive(src, split, val_labels)
    found: dict[str, list[Item]] = {}
    for name in ("train", "val"):
        if split not in (None, name):
            continue
        folder = os.path.join(src, name)
        archive = os.path.join(src, f"ILSVRC2012_img_{name}.tar")
        if os.path.isdir(folder):
            found[name] = _from_folder(src, folder, name, val_labels)
        elif os.path.isfile(archive):
            found.update(_from_archive(archive, name, val_labels))
    if not found:
        _explain_empty(src, split)
    return found


def _explain_empty(src: str, split: str | None) -> None:
    entries = [e for e in os.listdir(src) if e not in IGNORED_NAMES]
    wanted = f"'{split}/'" if split else "'train/' or 'val/'"
    if any(WNID.match(e) for e in entries):
        raise UserError(f"--src {src} holds class folders directly: point --src at its parent "
                        f"(the folder that contains {wanted})")
    if not entries:
        raise UserError(f"--src {src} is empty: point it at the ImageNet folder that contains {wanted}")
    raise UserError(f"--src {src} has no {wanted} folder and no ILSVRC2012_img_*.tar: point it at the "
                    "ImageNet folder (ImageFolder layout) or at an archive")


def _stem_key(name: str) -> str:
    """Dot-free key from a file name: 'n01440764_10026.JPEG' -> 'n01440764_10026'."""
    stem = os.path.basename(name)
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    return re.sub(r"[^A-Za-z0-9_\-]", "_", stem) or "_"


def _from_folder(src: str, folder: str, split: str, val_labels: str | None) -> list[Item]:
    class_dirs = sorted(e for e in os.listdir(folder) if os.path.isdir(os.path.join(folder, e)))
    files = sorted(e for e in os.listdir(folder)
                   if os.path.isfile(os.path.join(folder, e)) and e not in IGNORED_NAMES)
    items: list[Item] = []
    if class_dirs:
        for wnid in class_dirs:
            for root, _, names in os.walk(os.path.join(folder, wnid)):
                for name in sorted(names):
                    if name in IGNORED_NAMES or name.startswith("."):
                        continue
                    path = os.path.join(root, name)
                    items.append(Item(_stem_key(name), wnid, os.path.relpath(path, src), path))
    elif files and split == "val":
        labels = read_val_labels(_labels_path(src, val_labels))
        items = [Item(_stem_key(n), None, os.path.join(split, n), os.path.join(folder, n)) for n in files]
        items = _attach_labels(items, labels, os.path.join(src, split))
    if not items:
        hint = " (a flat val folder needs --val-labels)" if files and split == "train" else ""
        raise UserError(f"no images found in {folder}: expected {folder}/<wnid>/*.JPEG{hint}")
    return sorted(items, key=lambda it: it.source)


def _labels_path(src: str, val_labels: str | None) -> str:
    if val_labels:
        if not os.path.isfile(val_labels):
            raise UserError(f"--val-labels {val_labels} does not exist")
        return val_labels
    for folder in (src, os.path.dirname(os.path.abspath(src))):
        for name in ("LOC_val_solution.csv", "val_labels.txt"):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    raise UserError("flat validation images need labels: pass --val-labels LOC_val_solution.csv "
                    "(Kaggle) or a file of 'filename wnid' lines")


def read_val_labels(path: str) -> dict[str, str]:
    """{key: wnid} from Kaggle's LOC_val_solution.csv or 'filename wnid' lines."""
    labels: dict[str, str] = {}
    with open(path, newline="") as f:
        first = f.readline()
        f.seek(0)
        if first.startswith("ImageId"):
            rows = ((r["ImageId"], r["PredictionString"].split()[0] if r["PredictionString"].split() else "")
                    for r in csv.DictReader(f))
        else:
            rows = (tuple(line.replace(",", " ").split()[:2]) for line in f if line.strip())
        for n, row in enumerate(rows, start=1):
            if len(row) != 2 or not WNID.match(row[1]):
                raise UserError(f"{path}:{n}: expected 'filename wnid' (e.g. 'ILSVRC2012_val_00000001.JPEG "
                                f"n01751748'), got {' '.join(row)!r}")
            labels[_stem_key(row[0])] = row[1]
    if not labels:
        raise UserError(f"{path} has no labels")
    return labels


def _attach_labels(items: list[Item], labels: dict[str, str], where: str) -> list[Item]:
    """Give every flat val image its wnid; an image without a label, or a label without an image, is an error."""
    missing = [it.source for it in items if it.key not in labels]
    if missing:
        raise UserError(f"{len(missing)} images in {where} have no label in the labels file "
                        f"(first: {missing[0]}): is it the labels file of this validation set?")
    keys = {it.key for it in items}
    unknown = [k for k in labels if k not in keys]
    if unknown:
        raise UserError(f"the labels file names {len(unknown)} images that are not in {where} "
                        f"(first: {unknown[0]}): is the validation folder complete?")
    return [Item(it.key, labels[it.key], it.source, it.path, it.offset, it.size) for it in items]


def _from_archive(path: str, split: str | None, val_labels: str | None) -> dict[str, list[Item]]:
    """Index an uncompressed ILSVRC tar in place: headers only, member bytes are read later by offset."""
    name = os.path.basename(path)
    try:
        tar = tarfile.open(path, "r:")  # uncompressed only: members must be addressable by offset
    except tarfile.ReadError:
        raise UserError(f"{path} is not an uncompressed tar archive (the ILSVRC2012 downloads are plain .tar); "
                        "for a folder of images pass the folder") from None
    with tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        inner_tars = [m for m in members if m.name.endswith(".tar")]
        is_train = bool(inner_tars) and len(inner_tars) == len(members)
        inferred = "train" if is_train else ("val" if "val" in name or not inner_tars else None)
        which = split or inferred
        if which is None:
            raise UserError(f"cannot tell which split {path} holds: pass --split train|val")
        if which == "train" and not is_train:
            raise UserError(f"{path} is not a tar of per-class tars (like ILSVRC2012_img_train.tar): "
                            "pass --split val with --val-labels if it holds validation images")
        if which == "train":
            items = [it for m in inner_tars for it in _inner_tar_items(tar, m, path, name)]
        else:
            items = [Item(_stem_key(m.name), None, f"{name}/{m.name}", path, m.offset_data, m.size)
                     for m in members if not os.path.basename(m.name).startswith(".")]
            items = _attach_labels(items, read_val_labels(_labels_path(os.path.dirname(path), val_labels)), path)
    if not items:
        raise UserError(f"{path} holds no images")
    return {which: sorted(items, key=lambda it: it.source)}


def _inner_tar_items(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, name: str) -> list[Item]:
    wnid = os.path.basename(member.name)[: -len(".tar")]
    with tarfile.open(fileobj=tar.extractfile(member), mode="r:") as inner:
        return [Item(_stem_key(m.name), wnid, f"{name}/{member.name}/{m.name}", path,
                     member.offset_data + m.offset_data, m.size)
                for m in inner.getmembers() if m.isfile() and not os.path.basename(m.name).startswith(".")]

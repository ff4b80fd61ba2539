"""A node-local cache of whole shard objects from an object store, each checked against its sha256 before use.

Readers never touch the store per sample: `ShardCache.pin(entry)` fetches the shard's tar whole (one GET, or a few
large ranged GETs for a big object) into `FOLDER/<sha256>.tar`, checks its sha256 against the manifest, and only then
renames it into place. A name without `.part` is therefore a verified shard: a killed run leaves at most a
`<sha256>.part`, which is never read and is overwritten or evicted later.

Sharing between processes (the ranks of one node), with `fcntl.flock` on small lock files beside each shard:
- `<sha256>.use`: every process that holds a pin on the shard has it locked shared; eviction needs it exclusive
  (non-blocking), so a pinned shard is never deleted under a reader;
- `<sha256>.fetch`: exclusive while one process downloads; a second process waits for it and then finds the shard,
  so no shard is downloaded twice on a node;
- `.lock`: exclusive while a process counts the folder, evicts, and reserves room for a download (the `.part` is
  created at its full size at once), so the folder never exceeds the limit, whatever the processes do.
Lock files are never deleted: deleting one while another process opens it would split the lock in two.

Eviction takes unpinned shards, least recently pinned first. Each loader pins at most `limit / (2 x processes on
the node)` bytes (its current batch and the shards fetched ahead of it; two loaders, train and val, per process), so
the pins of all ranks together always fit and no rank waits on room another rank holds while both wait for each
other in a collective.

Transfers, credentials and retries are fsspec's (s3fs: botocore's retry policy for 503 SlowDown/500/timeouts and
s3fs's for dropped connections and cut bodies); a failure they give up on is one line naming the object
(`shards.io.naming`). This module adds what they cannot see: a body of the wrong length or with the wrong sha256 is
fetched again, a few times, with exponential backoff and jitter; if it stays wrong, the object is damaged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import threading
import time
from dataclasses import dataclass

from . import io as store
from .errors import UserError

CHUNK = 64 << 20  # objects above this come in parallel ranged GETs of this size
ATTEMPTS = 4  # downloads of one object whose bytes come back wrong (length or sha256) before giving up
ROOM_TIMEOUT = 600.0  # seconds a download waits for room that other processes hold pinned


@dataclass(frozen=True)
class CacheConfig:
    """Where and how much of a shard directory on a store is kept on this node (the `--cache-*` options)."""

    cache_dir: str | None = None  # None: $XDG_CACHE_HOME/alexnet-wds/shards (default ~/.cache); one folder per URL
    cache_limit: str | int | None = None  # bytes, or "200GB"/"500MiB"; None: the dataset, at most 80% of the disk
    fetch_concurrency: int = 8  # shard downloads in flight per process


@dataclass
class CacheStats:
    """What this process fetched: for `bench loader` and the tests."""

    fetched: int = 0  # shards downloaded
    hits: int = 0  # pins served from the folder
    bytes: int = 0  # bytes downloaded (every attempt)
    requests: int = 0  # GETs this module issued (the library's own retries come on top)
    refetched: int = 0  # downloads repeated because the bytes were wrong
    evicted: int = 0


class Pin:
    """A shard held in the cache for as long as this object is open: `path` is a verified local file."""

    def __init__(self, path: str, lock_fd: int):
        self.path, self._fd = path, lock_fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the shared flock
            self._fd = None


class ShardCache:
    """The cached shards of one dataset in one local folder, shared by every process of the node."""

    def __init__(self, folder: str, limit: int):
        self.folder, self.limit = folder, int(limit)
        self.stats = CacheStats()
        self._stats_lock = threading.Lock()
        os.makedirs(folder, exist_ok=True)

    # ------------------------------------------------------------------------------------------- pin
    def pin(self, url: str, size: int, sha256: str) -> Pin:
        """Block until the shard at `url` is in the folder and verified, and hold it there until released."""
        path = os.path.join(self.folder, f"{sha256}.tar")
        fd = _lock_fd(path[:-4] + ".use")
        fcntl.flock(fd, fcntl.LOCK_SH)  # from now on no process evicts it
        try:
            if _has(path, size):
                self._count(hits=1)
            else:
                with _locked(path[:-4] + ".fetch"):
                    if _has(path, size):  # another rank of this node fetched it while we waited
                        self._count(hits=1)
                    else:
                        self._fetch(url, path, size, sha256)
            os.utime(path)  # least recently pinned is evicted first
        except BaseException:
            os.close(fd)
            raise
        return Pin(path, fd)

    def _fetch(self, url: str, path: str, size: int, sha256: str) -> None:
        part = path[:-4] + ".part"
        self._reserve(part, size)
        try:
            for attempt in range(1, ATTEMPTS + 1):
                problem = self._download(url, part, size, sha256)
                if problem is None:
                    with _locked(os.path.join(self.folder, ".lock")):  # a count under the lock sees one of the two
                        os.replace(part, path)
                    self._count(fetched=1)
                    return
                if attempt < ATTEMPTS:
                    self._count(refetched=1)
                    time.sleep(random.uniform(0.25, 0.5) * 2 ** (attempt - 1))  # exponential backoff with jitter
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(part)
            raise
        os.remove(part)
        shards = store.dirname(store.dirname(url))
        raise UserError(
            f"{url}: {problem}, in each of {ATTEMPTS} downloads: the object on the store is damaged, and no sample "
            f"of it was used. Find every damaged shard with `cli.py verify --shards {shards}`"
        )

    def _download(self, url: str, part: str, size: int, sha256: str) -> str | None:
        """Write the object into `part`; None when its length and sha256 are right, else what is wrong. One GET of
        the whole object (the store's own checksum of it is checked too, where it sends one), or for an object
        above CHUNK a few ranged GETs in parallel."""
        fs, path = store.filesystem(url)
        ranges = [(start, min(start + CHUNK, size)) for start in range(0, size, CHUNK)]
        digest, received = hashlib.sha256(), 0
        with open(part, "r+b") as out:
            for group in range(0, len(ranges), 4):  # at most 4 ranges (256 MiB) in memory at once
                batch = ranges[group : group + 4]
                self._count(requests=len(batch))
                with store.naming(url):
                    if len(ranges) == 1:
                        pieces = [fs.cat_file(path, **store.one_get(fs))]
                    else:
                        pieces = fs.cat_ranges([path] * len(batch), [a for a, _ in batch], [b for _, b in batch])
                for (start, end), data in zip(batch, pieces, strict=True):
                    if isinstance(data, Exception):
                        with store.naming(url):
                            raise data
                    received += len(data)
                    self._count(bytes=len(data))
                    if len(data) != end - start:
                        return f"{received:,} of {size:,} bytes arrived (a body cut short)"
                    digest.update(data)
                    out.write(data)
        if digest.hexdigest() != sha256:
            return "the sha256 differs from the manifest"
        return None

    # ------------------------------------------------------------------------------------------- room
    def _reserve(self, part: str, size: int) -> None:
        """Evict unpinned shards until `size` more bytes fit under the limit, then create `part` at that size."""
        deadline = time.monotonic() + ROOM_TIMEOUT
        while True:
            with _locked(os.path.join(self.folder, ".lock")):
                used = self._evict_until(self.limit - size)
                if used + size <= self.limit:
                    with open(part, "wb") as f:
                        f.truncate(size)  # counts at its full size from now on
                    return
            if time.monotonic() > deadline:
                raise UserError(
                    f"the shard cache {self.folder} is full: {format_size(used)} of its {format_size(self.limit)} "
                    "limit are held by running readers: raise --cache-limit, or give every process on this node "
                    "the same --cache-limit"
                )
            time.sleep(0.5)

    def _evict_until(self, target: int) -> int:
        """Under the folder lock: delete unpinned shards (oldest pin first) and stale parts until the folder holds
        at most `target` bytes, or nothing more can go. Returns the bytes it holds then."""
        files = _files(self.folder)
        used = sum(size for _, size, _ in files)
        by_age = sorted(files, key=lambda f: (f[0].endswith(".tar"), f[2]))
        for path, size, _ in by_age:  # parts first: a part with a free .fetch lock was left by a killed process
            if used <= target:
                break
            stem = path.rsplit(".", 1)[0]
            lock = stem + (".use" if path.endswith(".tar") else ".fetch")
            fd = _lock_fd(lock)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # pinned by a reader, or being downloaded
            try:
                os.remove(path)
                used -= size
                self._count(evicted=1)
            except FileNotFoundError:  # a failed download removed its part meanwhile
                used -= size
            finally:
                os.close(fd)
        return used

    def used(self) -> int:
        """Bytes of the folder's shards and parts (what the limit bounds)."""
        return sum(size for _, size, _ in _files(self.folder))

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)


def _files(folder: str) -> list[tuple[str, int, float]]:
    """(path, bytes, mtime) of the shards and parts in `folder`; a file gone between the listing and its stat is
    left out (only a download's own failure removes one outside the folder lock)."""
    found = []
    for entry in os.scandir(folder):
        if entry.name.endswith((".tar", ".part")):
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                found.append((entry.path, stat.st_size, stat.st_mtime))
    return found


def _has(path: str, size: int) -> bool:
    try:
        return os.path.getsize(path) == size
    except FileNotFoundError:
        return False


def _lock_fd(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


@contextlib.contextmanager
def _locked(path: str):
    fd = _lock_fd(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------- where and how much
_open: dict[str, ShardCache] = {}  # folder -> the process's cache there (train and val loaders share one)


def open_cache(ds, cfg: CacheConfig) -> ShardCache:
    """The node-local cache of the shard directory `ds` (a shards.ShardSet on a store), one per folder and process."""
    if cfg.fetch_concurrency < 1:
        raise UserError(f"--fetch-concurrency must be at least 1 (got {cfg.fetch_concurrency})")
    folder = os.path.join(os.path.abspath(cfg.cache_dir or store.cache_dir("shards")), dataset_key(ds.root))
    if folder not in _open:
        limit = parse_size(cfg.cache_limit)
        if limit is None:
            limit = default_limit(folder, dataset_bytes(ds))
        try:
            _open[folder] = ShardCache(folder, limit)
        except OSError as e:
            raise UserError(f"cannot use {folder} as the shard cache ({e.strerror}): choose --cache-dir") from None
    return _open[folder]


def dataset_key(root: str) -> str:
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in root.split("://", 1)[-1].strip("/"))
    return f"{readable[-80:]}-{hashlib.sha256(root.encode()).hexdigest()[:12]}"


def format_size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def parse_size(text: str | int | None) -> int | None:
    """'200GB', '500MiB', '1.5T', '1000000' -> bytes (decimal units: GB = 1e9; binary: GiB = 2^30)."""
    if text is None or isinstance(text, int):
        return text
    s = str(text).strip().upper().replace(" ", "")
    units = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
             "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip
    number = s.rstrip("KMGTIB")
    try:
        value = float(number) * units[s[len(number) :]]
    except (ValueError, KeyError):
        raise UserError(
            f"--cache-limit {text!r} is not a size: write e.g. 200GB, 500MiB or a number of bytes"
        ) from None
    if value < 1:
        raise UserError(f"--cache-limit {text!r} must be positive")
    return int(value)


def dataset_bytes(ds) -> int:
    """The bytes of every shard of the shard directory (a shards.ShardSet)."""
    return sum(int(e["bytes"]) for split in ds.splits for e in ds.shards(split))


def default_limit(folder: str, needed: int) -> int:
    """What the dataset needs, but at most 80% of the space the cache's disk has (free + already cached)."""
    os.makedirs(folder, exist_ok=True)
    disk = os.statvfs(folder)
    cached = sum(size for _, size, _ in _files(folder))
    return min(needed, int(0.8 * (disk.f_bavail * disk.f_frsize + cached)))

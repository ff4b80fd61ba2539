"""Where bytes live: local paths and fsspec URLs (s3://, gs://, any fsspec protocol) behind one set of functions.

Local paths use plain `os` calls: a file is written under a temporary name, fsynced and renamed (`atomic_file`), so
it is whole or absent.
A remote object is written with one PUT (a multipart upload above 50 MiB), which object stores make visible only
when complete: whole or absent there too. Credentials and endpoints come from each store's standard environment
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE, ... for S3; GOOGLE_APPLICATION_CREDENTIALS for GCS).
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import glob as globlib
import hashlib
import io
import json
import os
import posixpath
import shutil
import socket
import sys

import numpy as np

from .errors import CREDENTIAL_ERRORS, UserError

# the package fsspec needs for a protocol, and what installs it (an extra of pyproject.toml, where there is one)
PROTOCOL_PACKAGES = {
    "s3": ("s3fs", "'alexnet-wds[s3]'"),
    "s3a": ("s3fs", "'alexnet-wds[s3]'"),
    "gs": ("gcsfs", "'alexnet-wds[gcs]'"),
    "gcs": ("gcsfs", "'alexnet-wds[gcs]'"),
    "az": ("adlfs", "adlfs"),
    "abfs": ("adlfs", "adlfs"),
}


def is_url(path) -> bool:
    return "://" in os.fspath(path)


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts) if is_url(root) else os.path.join(root, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def absolute(path) -> str:
    """A URL as given (without a trailing slash), a local path made absolute (workers have other cwds)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def cache_dir(*parts: str) -> str:
    """A folder of this tool's local cache: $XDG_CACHE_HOME/alexnet-wds/... (default ~/.cache)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "alexnet-wds", *parts)


def filesystem(url: str):
    """(fsspec filesystem, path inside it); one line naming the package when the protocol's is missing."""
    import fsspec

    protocol = url.split("://", 1)[0]
    try:  # no listings cache: other processes (workers, other nodes) write here too
        fs, path = fsspec.core.url_to_fs(url, use_listings_cache=False)
    except ImportError:
        package, install = PROTOCOL_PACKAGES.get(protocol, (f"the fsspec implementation of {protocol}://",) * 2)
        raise UserError(
            f"{url}: {protocol}:// needs {package}: `pip install {install}` (make test / make demo install it)"
        ) from None
    except ValueError as e:
        raise UserError(f"{url}: {e}") from None
    _opened[id(fs)] = fs
    return fs, path


# Fork safety, for every pool (the writer's, verify's, stats') and every forked DataLoader worker, in one place.
# After a fork fsspec clears its instance cache in the child, so the child opens filesystems of its own on a loop
# of its own (reset_lock below is fsspec's documented call for that; recent versions also make it themselves).
# What stays dangerous is the parent's instances: once the cache no longer holds them, the child would
# garbage-collect them, and s3fs's finalizer would close the parent's aiohttp session from the child: "Task exception
# was never retrieved ... attached to a different loop", and worse, it takes the parent's pooled sockets out of the
# epoll set the two processes share, so the parent's next request on them hangs until a timeout. Holding every
# instance here for the life of the process means a child never closes one (pool processes end with os._exit).
_opened: dict[int, object] = {}  # by identity: a new instance may equal a cleared one


def _after_fork_in_child() -> None:
    if "fsspec.asyn" in sys.modules:
        sys.modules["fsspec.asyn"].reset_lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class StoreError(UserError):
    """An object store failed on one object (after its client's own retries): one line naming the object and
    saying what the store said. Never a hint to run `verify`: the bytes are not known to be wrong."""


NOT_STORE_FAILURES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, UserError)
STORE_CLIENTS = ("aiohttp", "botocore", "aiobotocore", "s3fs", "gcsfs", "google", "fsspec")


@contextlib.contextmanager
def naming(url: str, doing: str = "reading"):
    """Re-raise a store's failure on `url` as a StoreError. A missing object (FileNotFoundError), a refusal
    (PermissionError) and missing credentials keep their meaning: callers and errors.explain handle them."""
    try:
        yield
    except NOT_STORE_FAILURES:
        raise
    except Exception as e:
        client = type(e).__module__.split(".")[0] in STORE_CLIENTS
        if not (isinstance(e, OSError) or client) or type(e).__name__ in CREDENTIAL_ERRORS:
            raise
        raise StoreError(f"{doing} {url} failed: {store_words(e)}") from e


def store_words(e: BaseException) -> str:
    """What the store (or the connection to it) said, and what to do about it."""
    cause = e.__cause__ or e  # s3fs raises an OSError from botocore's ClientError
    response = getattr(cause, "response", None)
    if isinstance(response, dict) and "Error" in response:
        meta, error = response.get("ResponseMetadata", {}), response["Error"]
        status, code = meta.get("HTTPStatusCode"), error.get("Code", "")
        said = " ".join(w for w in (str(status), code if code != str(status) else "") if w)  # a HEAD has no body
        words = f"the store answered {said}: {error.get('Message', '')}".rstrip(": ")
        if meta.get("RetryAttempts"):
            words += f" (retried {meta['RetryAttempts']} times)"
        if status == 503 or "Slow" in code or "Throttl" in code:
            return f"{words}; it is throttling: rerun later, or allow more retries (AWS_MAX_ATTEMPTS, AWS_RETRY_MODE)"
        return f"{words}; rerun the same command" if isinstance(status, int) and status >= 500 else words
    if type(e).__name__ == "FlexibleChecksumError":
        return (
            f"{e} (the bytes do not match the checksum the store sent with them); rerun the same command. A store "
            "that sends the whole object's checksum with a byte range (rclone serve s3 1.75) needs "
            "AWS_RESPONSE_CHECKSUM_VALIDATION=when_required"
        )
    return f"{type(e).__name__}: {e}; the connection to the store failed: rerun the same command"


def request_counter(url: str):
    """A function returning how many HTTP requests this process has sent to the store of `url` since this call,
    retries included; None where the fsspec backend offers no hook (S3 does: botocore's before-send event)."""
    fs, _ = filesystem(url)
    client = getattr(fs, "s3", None)  # s3fs: the aiobotocore client (connects on first use)
    if client is None:
        return None
    sent = [0]

    def count(**_):
        sent[0] += 1

    client.meta.events.register("before-send.s3", count)
    return lambda: sent[0]


def isfile(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    fs, p = filesystem(path)
    with naming(path):  # not fs.isfile: it answers False to any error, and a 503 is not a missing file
        try:
            return fs.info(p)["type"] == "file"
        except FileNotFoundError:
            return False


def isdir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    fs, p = filesystem(path)
    with naming(path):
        return fs.isdir(p)


def size(path: str) -> int:
    if not is_url(path):
        return os.path.getsize(path)
    fs, p = filesystem(path)
    with naming(path):
        return fs.size(p)


def open(path: str, mode: str = "rb"):  # noqa: A001 - the file-like counterpart of builtins.open
    """A file object; on a store, read it through HashingReader(f, path) to have its failures named."""
    if not is_url(path):
        return builtins.open(path, mode)
    fs, p = filesystem(path)
    with naming(path):
        return fs.open(p, mode)


def read_bytes(path: str, start: int | None = None, end: int | None = None) -> bytes:
    """The whole file, or bytes [start, end): one ranged GET on an object store."""
    if not is_url(path):
        with builtins.open(path, "rb") as f:
            if start is None:
                return f.read()
            f.seek(start)
            return f.read(end - start)
    fs, p = filesystem(path)
    with naming(path):
        data = fs.cat_file(p, start=start, end=end)
        if start is None or len(data) == end - start:
            return data
        # short: a body cut off with a Content-Length to match passes every check but this one (S3 sends no
        # checksum with a range); once more, then say whether the object is that short or the transfer was
        data = fs.cat_file(p, start=start, end=end)
        if len(data) == end - start:
            return data
        whole = fs.size(p)
    if whole < end:
        raise StoreError(f"{path} has {whole:,} bytes, fewer than the {end:,} expected: it was changed or damaged")
    raise StoreError(
        f"reading bytes {start:,}-{end:,} of {path} failed: the store sent {len(data):,} of them, twice (the "
        "body ended early); rerun the same command"
    )


def read_json(path: str):
    return json.loads(read_bytes(path))


def read_many(paths: list[str]) -> dict[str, bytes]:
    """{path: bytes} of the files that exist (concurrent GETs on an object store); missing ones are left out."""
    remote = [p for p in paths if is_url(p)]
    found: dict[str, bytes] = {}
    if remote:
        fs, _ = filesystem(remote[0])
        stripped = {fs._strip_protocol(p): p for p in remote}
        with naming(store_root(remote[0])):
            got = fs.cat(list(stripped), on_error="return", **one_get(fs))
        for key, data in got.items():
            if isinstance(data, bytes):
                found[stripped[key]] = data
            elif not isinstance(data, FileNotFoundError):
                with naming(stripped[key]):
                    raise data
    for path in paths:
        if not is_url(path) and os.path.isfile(path):
            found[path] = read_bytes(path)
    return found


def one_get(fs) -> dict:
    """The keywords that make a whole-object read one GET. s3fs sends a HEAD first, to choose parallel ranged GETs
    for objects above its block size (max_concurrency > 1); ours are below it, or ranged by the caller."""
    import inspect

    return {"max_concurrency": 1} if "max_concurrency" in inspect.signature(fs._cat_file).parameters else {}


def store_root(url: str) -> str:
    """'s3://bucket' of 's3://bucket/some/key'."""
    protocol, rest = url.split("://", 1)
    return f"{protocol}://{rest.split('/', 1)[0]}"


def list_sizes(folder: str) -> dict[str, int]:
    """{name: bytes} of the files directly inside `folder` (one listing request on an object store)."""
    if not is_url(folder):
        if not os.path.isdir(folder):
            return {}
        return {e.name: e.stat().st_size for e in os.scandir(folder) if e.is_file()}
    fs, p = filesystem(folder)
    with naming(folder, "listing"):
        try:
            entries = fs.ls(p, detail=True, refresh=True)
        except FileNotFoundError:
            return {}
    return {posixpath.basename(e["name"]): e["size"] for e in entries if e["type"] == "file"}


def list_files(folder: str) -> list[str]:
    """Paths relative to `folder` ('/'-separated) of every file below it, recursively."""
    if not is_url(folder):
        found = []
        for root, _, names in os.walk(folder, followlinks=True):
            rel = os.path.relpath(root, folder)
            found += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/") for name in names]
        return found
    fs, p = filesystem(folder)
    p = p.rstrip("/")
    with naming(folder, "listing"):
        return [name[len(p) + 1 :] for name in fs.find(p, withdirs=False)]


def listdir(folder: str) -> list[str]:
    if not is_url(folder):
        return os.listdir(folder)
    fs, p = filesystem(folder)
    with naming(folder, "listing"):
        return [posixpath.basename(name.rstrip("/")) for name in fs.ls(p, detail=False)]


def makedirs(path: str) -> None:
    if not is_url(path):  # object stores have no folders
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    if not is_url(path):
        if os.path.exists(path):
            os.remove(path)
        return
    fs, p = filesystem(path)
    with contextlib.suppress(FileNotFoundError), naming(path, "deleting"):  # no such bucket (a missing key: no error)
        fs.rm_file(p)


def rmtree(path: str) -> None:
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = filesystem(path)
    with contextlib.suppress(FileNotFoundError), naming(path, "deleting"):
        fs.rm(p, recursive=True)


def check_writable(folder: str) -> None:
    """Create `folder` (on a disk) and write and delete a probe in it: raises OSError when it cannot be written."""
    makedirs(folder)
    probe = join(folder, f".probe-{socket.gethostname()}-{os.getpid()}")
    write_atomically(probe, b"")
    remove(probe)


def write_atomically(path: str, data: bytes | str) -> None:
    """Whole or absent: a local file through atomic_file, or one PUT to an object store."""
    data = data.encode() if isinstance(data, str) else data
    if is_url(path):
        fs, p = filesystem(path)
        with naming(path, "writing"):
            fs.pipe_file(p, data)
        return
    with atomic_file(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_file(path: str):
    """A binary file object for the local `path` that is whole or absent: it is written under a temporary name
    beside it, flushed to the disk (fsync) and renamed into place when the block ends; on any exception the
    temporary is removed. A process killed meanwhile leaves only `PATH.tmp-HOST-PID`, which remove_temporaries
    deletes. The one atomic local write of the project (shards, manifests, staged copies, checkpoints)."""
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"  # unique across the nodes of a cluster
    try:
        with builtins.open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on the disk before the new name points at it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def remove_temporaries(*folders: str) -> None:
    """Delete `*.tmp-*` files a killed run left in local folders (object stores never hold partial objects)."""
    for folder in folders:
        if not is_url(folder):
            for path in globlib.glob(os.path.join(folder, "*.tmp-*")):
                os.remove(path)


class HashingReader:
    """A read-only file object that feeds everything read through sha256: one pass both uses and checks the bytes.
    A store's failure while reading is a StoreError naming `path`."""

    def __init__(self, f, path: str = ""):
        self.f, self.path, self.digest, self.bytes = f, path, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        with naming(self.path) if is_url(self.path) else contextlib.nullcontext():
            data = self.f.read(n)
        self.digest.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> str:
        """Read the rest; the sha256 of everything, as hex."""
        while self.read(1 << 22):
            pass
        return self.digest.hexdigest()


def npy_bytes(array: np.ndarray) -> bytes:
    """.npy file content; written with write_atomically (np.save hides the errno of a full disk)."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def load_npy(path: str) -> np.ndarray:
    return np.load(io.BytesIO(read_bytes(path)))


def init_worker_process() -> None:
    """Pool initializer: Ctrl-C goes to the parent, which stops the pool and removes half-written files."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_worker()


def tune_worker() -> None:
    """What every shard worker process needs, in a local pool or on a Dask worker (idempotent, cheap):
    - one image at a time: torch's resize would otherwise start a thread per core in each worker process (set
      now if torch is imported, else through the variable its OpenMP runtime reads when imported, on the first
      resize);
    - glibc's malloc as in a plain process. Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, and
      setting any malloc threshold turns off glibc's dynamic mmap threshold: every image-sized buffer (over
      128 KiB) is then mmapped and unmapped again, page faults included, which slows a worker down
      (docs/benchmarks.md). Fixed thresholds above our buffers' sizes give the speed back."""
    if "torch" in sys.modules:  # verify and stats never import it
        sys.modules["torch"].set_num_threads(1)
    else:
        os.environ["OMP_NUM_THREADS"] = "1"
    global _malloc_tuned
    if _malloc_tuned or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    _malloc_tuned = True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to undo
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)


_malloc_tuned = False
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)

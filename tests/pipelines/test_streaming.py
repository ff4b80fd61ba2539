"""Training from an object store: whole shards streamed ahead of use into a verified node-local cache
(shards/cache.py, pipelines/source.py), against real S3 servers on 127.0.0.1 - moto_server and `rclone serve s3`
(the `s3` fixture runs a test on each) and moto behind the seeded fault layer (`faulty_s3`: moto only, by design).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from servers import ROOT
from stores import run_clean, s3fs_, upload

import pipelines
import shards
from pipelines.shard_files import rank_range
from shards.cache import CacheConfig, ShardCache, parse_size
from shards.convert import ShardConfig, convert
from shards.errors import UserError
from trainer.config import EvalConfig, TrainConfig
from trainer.evaluate import evaluate_command
from trainer.train import launch

pytestmark = pytest.mark.slow
FAULT_MIX = dict(slowdown=0.05, internal=0.02, reset=0.03)  # the mix


def loader(root, cache_dir, split="train", **kw):
    options = dict(batch_size=16, device="cpu", num_threads=1, seed=3, cache=CacheConfig(cache_dir=str(cache_dir)))
    return pipelines.build_loader(root, split, **{**options, **kw})


def epoch(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), labels.clone()) for images, labels in loader]


def same(a, b) -> bool:
    return len(a) == len(b) > 0 and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


def tar_gets(store) -> dict[str, int]:
    """{shard name: GETs of it} the fault layer counted."""
    by_key = store.counts()["by_key"]
    return {key.rsplit("/", 1)[1]: n for key, n in by_key.items() if key.startswith("GET ") and key.endswith(".tar")}


def cached_tars(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tar"))


@pytest.fixture(scope="module")
def small_shards(sample_tree, tmp_path_factory) -> str:
    """sample_tree in shards of 16: 12 train shards, 3 val (enough shards for a cache to hold a part of them)."""
    out = str(tmp_path_factory.mktemp("small") / "wds")
    convert(ShardConfig(src=sample_tree, out=out, shard_size=16, workers=2, progress=False))
    return out


# ------------------------------------------------------------------------------------------------ same batches
def test_store_cold_and_warm_give_the_local_batches(sample_shards, s3, tmp_path):
    """Same seed and epoch -> the same batches from local disk, from the store with an empty cache, and from the
    filled cache; on both servers. The cache holds the shards under their sha256, verified."""
    url = f"{s3}/wds"
    upload(sample_shards, url)
    expected = epoch(loader(sample_shards, tmp_path / "unused"))
    cold = loader(url, tmp_path / "cache")
    assert same(epoch(cold), expected)
    assert cold.window.cache.stats.fetched == 5 and cold.window.cache.stats.requests == 5  # 5 train shards, 1 GET
    warm = loader(url, tmp_path / "cache")  # (the process's one cache of that folder: its counts go on)
    assert same(epoch(warm), expected) and warm.window.cache.stats.fetched == 5
    folder = cold.window.cache.folder
    sha = {e["sha256"] for e in shards.open(sample_shards).shards("train")}
    assert cached_tars(folder) == sorted(f"{s}.tar" for s in sha)
    for name in cached_tars(folder):
        with open(os.path.join(folder, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == name[:-4]
    # evaluation: every image once over the ranks, in the local order, from the store too
    for world_size in (1, 2):
        for rank in range(world_size):
            kw = dict(rank=rank, world_size=world_size, batch_size=8)
            assert same(
                epoch(loader(url, tmp_path / "cache", "val", **kw)), epoch(loader(sample_shards, "", "val", **kw))
            )


def test_the_second_epoch_sends_no_data_requests(sample_shards, faulty_s3, tmp_path):
    url = f"{faulty_s3.url}/wds"
    upload(sample_shards, url)
    faulty_s3.store.reset_counts()
    stream = loader(url, tmp_path / "cache")
    first = epoch(stream)
    names = [e["name"] for e in shards.open(sample_shards).shards("train")]
    assert tar_gets(faulty_s3.store) == dict.fromkeys(names, 1)  # whole shards, one GET each, never per sample
    faulty_s3.store.reset_counts()
    second = epoch(stream)
    assert faulty_s3.store.counts()["requests"] == 0 and len(second) == len(first) == 12
    assert not same(first, second)  # a new epoch: other order, other crops


def test_faults_are_retried_and_a_cut_body_fetched_again(small_shards, faulty_s3, tmp_path):
    """503s, 500s, dropped connections and bodies cut short (with a Content-Length to match: only the length and
    the sha256 can tell) on the shard objects: the same batches as from local disk."""
    url = f"{faulty_s3.url}/wds"
    upload(small_shards, url)
    faulty_s3.store.configure(slowdown=0.15, internal=0.15, reset=0.15, short=0.1, match=r"^GET .*\.tar$")
    stream = loader(url, tmp_path / "cache")
    assert same(epoch(stream), epoch(loader(small_shards, "")))
    counts = faulty_s3.store.counts()
    assert min(counts[kind] for kind in ("slowdown", "internal", "reset", "short")) > 0, counts
    assert stream.window.cache.stats.refetched >= counts["short"] > 0  # caught by length, fetched again
    assert not [name for name in os.listdir(stream.window.cache.folder) if name.endswith(".part")]


def test_commands_come_through_the_fault_mix(sample_shards, faulty_s3, tmp_path):
    """train, eval and bench loader read through the issue's mix of faults; eval from the store equals eval on a
    local copy with the same checkpoint."""
    url, store, run = f"{faulty_s3.url}/wds", faulty_s3.store, str(tmp_path / "run")
    upload(sample_shards, url)
    store.reset_counts()
    store.configure(**FAULT_MIX)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    train = ["train", "--shards", url, "--out", run, "--gpus", "0", "--batch-size", "8", "--max-steps", "2"]
    run_clean("cli.py", *train, "--lr", "0.001", *cache)
    evaluate = ["eval", "--checkpoint", f"{run}/checkpoint.pt", "--gpus", "0", "--batch-size", "16", "--json"]
    from_store = json.loads(run_clean("cli.py", *evaluate, "--shards", url, *cache).splitlines()[-1])
    bench = ["bench", "loader", "--shards", url, "--batch-size", "8", "--workers", "1", "--batches", "2"]
    run_clean("cli.py", *bench, "--json", str(tmp_path / "bench.json"), *cache)
    faults = store.counts()
    store.configure(slowdown=0, internal=0, reset=0)
    from_disk = evaluate_command(EvalConfig(f"{run}/checkpoint.pt", shards=sample_shards, gpus=0, batch_size=16))
    assert sum(faults[kind] for kind in FAULT_MIX) > 0, faults  # the faults really happened
    assert {k: from_store[k] for k in ("loss", "top1_err", "top5_err", "count")} == {
        k: from_disk[k] for k in ("loss", "top1_err", "top5_err", "count")
    }
    with open(tmp_path / "bench.json") as f:
        numbers = json.load(f)
    assert numbers["cold_images_per_s"] > 0 and numbers["warm_images_per_s"] > 0 and numbers["local_images_per_s"] > 0
    assert numbers["bytes_fetched"] == sum(e["bytes"] for e in shards.open(sample_shards).shards("train"))
    assert numbers["requests_per_image"] > 0 and numbers["warm_bytes_fetched"] == 0


# ------------------------------------------------------------------------------------------------ failures
def one_line_failure(args, timeout=240):
    run = subprocess.run(
        [sys.executable, "cli.py", *args], cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=timeout
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stdout + run.stderr
    return lines[0]


def test_a_store_that_throttles_every_shard_is_one_line(sample_shards, faulty_s3, tmp_path, monkeypatch):
    url = f"{faulty_s3.url}/wds"
    upload(sample_shards, url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # the user's retry budget; the subprocess's timeout bounds the rest
    faulty_s3.store.configure(slowdown=1.0, match=r"^GET .*\.tar$")
    args = ["train", "--shards", url, "--out", str(tmp_path / "run"), "--gpus", "0", "--batch-size", "8"]
    line = one_line_failure([*args, "--max-steps", "1", "--cache-dir", str(tmp_path / "cache")])
    assert line.startswith(f"error: reading {url}/train/train-0000") and ".tar failed: the store answered 503" in line
    assert "throttling" in line and "verify" not in line  # the bytes are not known to be wrong


def test_a_damaged_shard_stops_before_any_of_its_samples(sample_shards, moto_s3, tmp_path):
    """(moto only: one server suffices to damage an object through the S3 API.)"""
    import tarfile

    url = f"{moto_s3}/wds"
    upload(sample_shards, url)
    kw = dict(batch_size=8, device="cpu", num_threads=1, with_params=True, shuffle_buffer=8)  # a shard at a time
    plan = pipelines.build_loader(sample_shards, "train", **kw).plan
    shard = plan.schedule(0)[-1][0]  # the shard the epoch reaches last: batches of the others come first
    entry = shards.open(sample_shards).shards("train")[shard]
    key = f"{url}/train/{entry['name']}"[len("s3://") :]
    data = bytearray(s3fs_().cat_file(key))
    data[3000] ^= 0xFF
    s3fs_().pipe_file(key, bytes(data))
    with tarfile.open(os.path.join(sample_shards, "train", entry["name"])) as tar:
        damaged = {json.loads(tar.extractfile(m).read())["source"] for m in tar if m.name.endswith(".json")}
    stream = pipelines.build_loader(url, "train", cache=CacheConfig(str(tmp_path)), **kw)
    seen = []
    with pytest.raises(UserError) as failure:
        for _, _, params in stream:
            seen += [json.loads(bytes(m).decode())["source"] for m in params["meta"].numpy()]
    assert str(failure.value).startswith(f"s3://{key}: the sha256 differs from the manifest, in each of 4 downloads")
    assert f"cli.py verify --shards {url}" in str(failure.value)
    assert seen and not damaged & set(seen)  # batches before it came; none of its samples did
    assert not [
        n
        for n in os.listdir(stream.window.cache.folder)
        if n.startswith(entry["sha256"][:16]) and n.endswith((".tar", ".part"))
    ]
    verify = subprocess.run(
        [sys.executable, "cli.py", "verify", "--shards", url], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert verify.returncode == 1 and f"BAD train/{entry['name']}: sha256 differs" in verify.stdout


def test_parse_size_reads_the_units_people_write():
    assert [parse_size(s) for s in ("200GB", "500MiB", "1.5T", "1000", " 2 kb")] == [
        200 * 10**9,
        500 * 2**20,
        1_500_000_000_000,
        1000,
        2000,
    ]
    for bad in ("lots", "-1GB", "3 parsecs"):
        with pytest.raises(UserError, match="--cache-limit"):
            parse_size(bad)


# ------------------------------------------------------------------------------------------------ the cache
def test_two_threads_pinning_one_shard_fetch_it_once_and_a_stale_part_is_never_used(sample_shards, moto_s3, tmp_path):
    url = f"{moto_s3}/wds"
    upload(sample_shards, url)
    entry = shards.open(sample_shards).shards("train")[0]
    cache = ShardCache(str(tmp_path / "cache"), 10**9)
    part = tmp_path / "cache" / f"{entry['sha256']}.part"
    part.write_bytes(b"what a killed run left")  # not the shard; never read, overwritten
    pins = []
    threads = [
        threading.Thread(
            target=lambda: pins.append(cache.pin(f"{url}/train/{entry['name']}", entry["bytes"], entry["sha256"]))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (cache.stats.fetched, cache.stats.hits, cache.stats.requests) == (1, 1, 1)
    with open(pins[0].path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == entry["sha256"]
    assert not part.exists() and pins[0].path == pins[1].path


def test_a_cache_smaller_than_the_dataset_streams_within_its_limit(small_shards, moto_s3, tmp_path):
    url = f"{moto_s3}/wds"
    upload(small_shards, url)
    train = sum(e["bytes"] for e in shards.open(small_shards).shards("train"))
    limit = int(train * 0.8)  # a loader may pin half of it: the 4 shards a batch can reach fit
    kw = dict(batch_size=8, shuffle_buffer=16)
    stream = pipelines.build_loader(
        url, "train", device="cpu", num_threads=1, seed=1, cache=CacheConfig(str(tmp_path), cache_limit=limit), **kw
    )
    cache, peak, done = stream.window.cache, [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], cache.used())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        batches = [epoch(stream) for _ in range(2)]
    finally:
        done.set()
        watcher.join()
    local = pipelines.build_loader(small_shards, "train", device="cpu", num_threads=1, seed=1, **kw)
    assert same(batches[0], epoch(local)) and same(batches[1], epoch(local))
    assert cache.stats.evicted > 0 and cache.stats.fetched > 12  # shards came and went, twice over
    assert 0 < peak[0] <= limit == cache.limit


def test_a_cache_too_small_for_one_batch_is_one_clear_error(small_shards, moto_s3, tmp_path):
    url = f"{moto_s3}/wds"
    upload(small_shards, url)
    with pytest.raises(UserError, match=r"--cache-limit 100\.0 kB is too small for .* use at least --cache-limit"):
        pipelines.build_loader(url, "train", batch_size=8, device="cpu", cache=CacheConfig(str(tmp_path), "100kB"))


# ------------------------------------------------------------------------------------------------ ranks and nodes
def part_shards(counts: list[int], rank: int, world_size: int) -> set[int]:
    start, end = rank_range(sum(counts), rank, world_size)
    first = [sum(counts[:i]) for i in range(len(counts))]
    return {i for i, (a, n) in enumerate(zip(first, counts, strict=True)) if a < end and a + n > start}


READ_AN_EPOCH = """
import sys
import pipelines
from shards.cache import CacheConfig
url, rank, world_size, cache = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for split in ("train", "val"):
    loader = pipelines.build_loader(url, split, batch_size=8, device="cpu", num_threads=1, rank=rank,
                                    world_size=world_size, cache=CacheConfig(cache))
    assert sum(1 for _ in loader) == len(loader) > 0
"""


def test_ranks_of_one_node_fetch_each_shard_once_and_nodes_their_own_parts(sample_shards, faulty_s3, tmp_path):
    url, store = f"{faulty_s3.url}/wds", faulty_s3.store
    upload(sample_shards, url)
    ds = shards.open(sample_shards)
    # one node: two gloo ranks training a whole epoch (192 images in 2 steps of 2 x 48), sharing one cache folder
    store.reset_counts()
    train = ["cli.py", "train", "--shards", url, "--batch-size", "48", "--max-steps", "2", "--lr", "0.001"]
    run_clean(*train, "--procs", "2", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "node"))
    names = [e["name"] for split in ("train", "val") for e in ds.shards(split)]
    assert tar_gets(store) == dict.fromkeys(names, 1)
    # two nodes: rank 0 and rank 1 of 2 on machines of their own, each with its own cache, reading an epoch
    store.reset_counts()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", READ_AN_EPOCH, url, str(rank), "2", str(tmp_path / f"node{rank}")],
            cwd=ROOT,
            env=os.environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    expected = {}
    for split in ("train", "val"):
        for rank in (0, 1):
            for i in part_shards(ds.shard_counts(split), rank, 2):
                name = ds.shards(split)[i]["name"]
                expected[name] = expected.get(name, 0) + 1
    assert tar_gets(store) == expected and 2 in expected.values()  # a shard on the parts' border: once per node


# ------------------------------------------------------------------------------------------------ a killed run
def final_val(run) -> dict:
    from trainer.metrics import read_metrics

    (last,) = [r for r in read_metrics(str(run)) if r["kind"] == "val"][-1:]
    return {k: last[k] for k in ("step", "val_loss", "top1_err", "top5_err")}


def test_a_run_killed_mid_download_resumes_exactly_and_never_uses_the_part(sample_shards, faulty_s3, tmp_path):
    url, store = f"{faulty_s3.url}/wds", faulty_s3.store
    upload(sample_shards, url)
    # the same run from a local copy, in this process: the reference the broken run must end equal to
    launch(
        TrainConfig(sample_shards, str(tmp_path / "unbroken"), 0, batch_size=8, lr=1e-4, max_steps=2, progress=False)
    )
    common = ["cli.py", "train", "--shards", url, "--gpus", "0", "--batch-size", "8", "--lr", "1e-4"]
    broken = ["--out", str(tmp_path / "broken")]
    run_clean(*common, *broken, "--max-steps", "1", "--cache-dir", str(tmp_path / "c2"))  # a checkpoint at step 1
    broken += ["--max-steps", "2", "--resume"]
    cache = tmp_path / "c3"  # empty: the continuation must download
    store.configure(latency=0.2)  # every request slow, so a download is under way for a while
    proc = subprocess.Popen(
        [sys.executable, *common, *broken, "--cache-dir", str(cache)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline, parts = time.monotonic() + 240, []
    while not parts and time.monotonic() < deadline and proc.poll() is None:
        parts = list(cache.rglob("*.part"))
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert parts and parts[0].exists(), "no download was under way"  # what the killed run left: a part, no tar
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    left = {p.name for p in folder.iterdir() if p.suffix in (".tar", ".part")}
    store.configure(latency=0)
    run_clean(*common, *broken, "--cache-dir", str(cache))
    assert final_val(tmp_path / "broken") == final_val(tmp_path / "unbroken")
    assert not list(folder.glob("*.part"))
    for tar in folder.glob("*.tar"):  # every finished name holds a verified shard (named by its sha256)
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == tar.stem
    assert any(name.endswith(".part") for name in left)

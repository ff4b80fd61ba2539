"""The seeded fault layer in front of moto (tests/servers.py), and what the store commands make of its faults.

moto only, by design: the layer wraps moto's WSGI app. The faults are what real stores do under load (503
SlowDown, 500 InternalError, connections dropped mid-body, bodies cut short); the commands must come through the
issue's mix (about 5% 503, 2% 500, 3% resets) with shards byte-identical to a fault-free run, and a store that
keeps failing is one line naming the object.
"""

import http.client
import os
import re
import subprocess
import sys
import time

import pytest
from servers import ROOT, free_port, start_faulty_moto, stop
from stores import local_files, remote_files, run_clean, upload

import shards

pytestmark = pytest.mark.slow
OBJECT = b"".join(i.to_bytes(4, "little") for i in range(25_000))  # 100 kB, every prefix distinct


def request(endpoint: str, method: str, bucket: str, key: str, body: bytes | None = None) -> str:
    """What a plain HTTP client sees of one signed request: 'ok', 'slowdown', 'internal', 'reset' or 'short' (the
    body a proper prefix of OBJECT with a Content-Length to match)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    url = client.generate_presigned_url(f"{method.lower()}_object", {"Bucket": bucket, "Key": key})
    connection = http.client.HTTPConnection(endpoint.split("//")[1], timeout=30)
    try:
        connection.request(method, url[len(endpoint) :], body=body)
        response = connection.getresponse()
        data = response.read()
    except (http.client.IncompleteRead, ConnectionError):
        return "reset"
    finally:
        connection.close()
    if response.status in (503, 500):
        code = {503: b"<Code>SlowDown</Code>", 500: b"<Code>InternalError</Code>"}[response.status]
        assert code in data, data
        return {503: "slowdown", 500: "internal"}[response.status]
    if response.status == 404:
        return "missing"
    assert response.status == 200, (response.status, data)
    if method == "GET" and data != OBJECT:
        assert OBJECT.startswith(data) and int(response.headers["Content-Length"]) == len(data) < len(OBJECT)
        return "short"
    return "ok"


def test_each_fault_happens_at_its_rate_and_is_counted(faulty_s3):
    store, bucket = faulty_s3.store, faulty_s3.url[5:]
    assert request(store.endpoint, "PUT", bucket, "object.bin", OBJECT) == "ok"
    store.reset_counts()
    store.configure(slowdown=0.2, internal=0.2, reset=0.2, short=0.2)
    seen = [request(store.endpoint, "GET", bucket, "object.bin") for _ in range(200)]
    counts = store.counts()
    for kind in ("slowdown", "internal", "reset", "short"):
        assert counts[kind] == seen.count(kind) and 20 <= counts[kind] <= 60, (kind, counts)
    assert seen.count("ok") == 200 - sum(counts[k] for k in ("slowdown", "internal", "reset", "short")) > 0
    assert counts["requests"] == 200 and counts["by_key"] == {f"GET {bucket}/object.bin": 200}

    # a dropped upload: the server read half the body and closed the connection; nothing was stored
    store.configure(slowdown=0, internal=0, reset=1.0, short=0)
    assert request(store.endpoint, "PUT", bucket, "other.bin", OBJECT) == "reset"
    store.configure(reset=0, latency=0.05)
    store.reset_counts()
    started = time.monotonic()
    assert request(store.endpoint, "GET", bucket, "other.bin") == "missing"
    assert time.monotonic() - started >= 0.05 and store.counts()["latency"] == 1


def test_same_seed_same_faults(faulty_s3):
    store, bucket = faulty_s3.store, faulty_s3.url[5:]
    assert request(store.endpoint, "PUT", bucket, "object.bin", OBJECT) == "ok"
    store.configure(slowdown=0.1, internal=0.1, reset=0.1, short=0.1)
    store.reset_counts()  # the draws start again from the first request of each key
    first = [request(store.endpoint, "GET", bucket, "object.bin") for _ in range(40)]
    store.reset_counts()
    assert [request(store.endpoint, "GET", bucket, "object.bin") for _ in range(40)] == first
    assert len(set(first)) == 5  # ok and all four faults
    other = start_faulty_moto(seed=1)
    try:
        import boto3

        boto3.client("s3", endpoint_url=other.endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        assert request(other.endpoint, "PUT", bucket, "object.bin", OBJECT) == "ok"
        other.configure(slowdown=0.1, internal=0.1, reset=0.1, short=0.1)
        other.reset_counts()
        assert [request(other.endpoint, "GET", bucket, "object.bin") for _ in range(40)] != first  # other seed
    finally:
        other.close()


def test_standalone_mode_prints_its_endpoint_and_serves():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "tests/servers.py", "faulty", "--port", str(port), "--latency", "0.04"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == f"http://127.0.0.1:{port}"
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/_faults")
        assert b'"latency": 0.04' in connection.getresponse().read()
    finally:
        stop(proc)


def test_verify_fetches_each_shard_once(sample_shards, faulty_s3):
    upload(sample_shards, f"{faulty_s3.url}/wds")
    faulty_s3.store.reset_counts()
    run_clean("cli.py", "verify", "--shards", f"{faulty_s3.url}/wds")
    gets = {k: n for k, n in faulty_s3.store.counts()["by_key"].items() if k.startswith("GET") and k.endswith(".tar")}
    names = [name for name in local_files(sample_shards) if name.endswith(".tar")]
    assert gets == {f"GET {faulty_s3.url[5:]}/wds/{name}": 1 for name in names} and len(names) == 7


def test_commands_come_through_the_fault_mix_byte_identical(sample_tree, sample_shards, faulty_s3, tmp_path):
    url, store = f"{faulty_s3.url}/wds", faulty_s3.store
    store.configure(slowdown=0.05, internal=0.02, reset=0.03)
    counts = {}
    run_clean("cli.py", "shard", "--src", sample_tree, "--out", url, "--shard-size", "40", "--workers", "2")
    counts["shard"] = store.counts()
    store.reset_counts()
    assert "OK: 7 shards intact" in run_clean("cli.py", "verify", "--shards", url)
    counts["verify"] = store.counts()
    store.reset_counts()
    run_clean("cli.py", "stage", "--shards", url, "--to", str(tmp_path / "staged"))
    counts["stage"] = store.counts()
    store.reset_counts()
    labels = [label for _, label in shards.webdataset(url, "val")]
    counts["webdataset"] = store.counts()
    store.configure(slowdown=0, internal=0, reset=0)
    print({command: {k: v for k, v in c.items() if k != "by_key"} for command, c in counts.items()})
    for kind in ("slowdown", "internal", "reset"):  # the faults really happened
        assert sum(c[kind] for c in counts.values()) > 0, counts
    assert remote_files(url) == local_files(sample_shards)  # a fault-free run's shards, byte for byte
    assert local_files(tmp_path / "staged") == local_files(sample_shards)
    assert labels == [label for _, label in shards.webdataset(sample_shards, "val")] and len(labels) == 48


def one_line(run) -> str:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stdout + run.stderr
    return lines[0]


def cli(*args):
    return subprocess.run(
        [sys.executable, "cli.py", *args], cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=300
    )


def test_a_store_that_throttles_everything_is_one_line(sample_shards, faulty_s3, monkeypatch):
    url = f"{faulty_s3.url}/wds"
    upload(sample_shards, url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # the user's own retry setting is the one used
    faulty_s3.store.configure(slowdown=1.0, match="^GET ")  # GETs, whose error bodies carry the store's words
    line = one_line(cli("verify", "--shards", url))
    expected = f"error: reading {url}/dataset.json failed: the store answered 503 SlowDown: Please reduce your request"
    assert line.startswith(expected) and "(retried 2 times)" in line, line
    assert "throttling" in line and "AWS_MAX_ATTEMPTS" in line and "cli.py verify" not in line
    from s3fs import S3FileSystem  # s3fs tries a SlowDown again itself, around botocore's attempts

    assert faulty_s3.store.counts()["by_key"][f"GET {url[5:]}/dataset.json"] == 3 * S3FileSystem.retries


def test_short_bodies_of_shards_are_made_up_by_reading_on(sample_shards, faulty_s3, tmp_path):
    """verify and stage read a shard as a file object, which asks for the rest of a body that ended early."""
    url = f"{faulty_s3.url}/wds"
    upload(sample_shards, url)
    faulty_s3.store.reset_counts()
    faulty_s3.store.configure(short=1.0, match=r"^GET .*/train-000000\.tar$")  # every body of this shard short
    assert "OK: 7 shards intact" in run_clean("cli.py", "verify", "--shards", url)
    run_clean("cli.py", "stage", "--shards", url, "--to", str(tmp_path / "staged"))
    assert local_files(tmp_path / "staged") == local_files(sample_shards)
    counts = faulty_s3.store.counts()
    assert counts["by_key"][f"GET {url[5:]}/train/train-000000.tar"] >= counts["short"] > 2, counts


def test_a_short_byte_range_is_read_again_then_one_line(faulty_s3):
    """A byte range (a member of an ILSVRC tarball): only its length can tell that its body was cut short."""
    from shards import io as store

    url = f"{faulty_s3.url}/archive.tar"
    store.write_atomically(url, OBJECT)
    faulty_s3.store.configure(short=1.0, match=r"archive\.tar$")
    faulty_s3.store.reset_counts()
    with pytest.raises(store.StoreError) as e:
        store.read_bytes(url, 4000, 8000)
    assert re.fullmatch(
        rf"reading bytes 4,000-8,000 of {re.escape(url)} failed: the store sent [0-9,]+ of them, twice "
        r"\(the body ended early\); rerun the same command",
        str(e.value),
    ), str(e.value)
    assert faulty_s3.store.counts()["by_key"][f"GET {url[5:]}"] == 2 == faulty_s3.store.counts()["short"]
    faulty_s3.store.configure(short=0)
    assert store.read_bytes(url, 4000, 8000) == OBJECT[4000:8000]
    with pytest.raises(store.StoreError, match=f"{url} has 100,000 bytes, fewer than the 100,004 expected"):
        store.read_bytes(url, 96_000, 100_004)

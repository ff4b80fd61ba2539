"""Real servers on 127.0.0.1 for the tests: an S3-compatible store (moto_server) and a Dask scheduler with workers.

Each runs as a subprocess in its own process group (so a test can kill a worker with everything it started) and
is stopped by the fixture that started it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

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


class DaskCluster:
    """`dask scheduler` and `dask worker ADDR --nthreads 1` processes importing the project via PYTHONPATH (the
    scheduler unpickles the tasks, so it needs the project too)."""

    def __init__(self, workers: int = 2, worker_env: dict | None = None, worker_cwd: str = ROOT):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler = start(
            [os.path.join(BIN, "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
            env={"PYTHONPATH": ROOT},
        )
        wait_for_port(self.port, self.scheduler)
        self.worker_env = {"PYTHONPATH": ROOT, **(worker_env or {})}
        self.worker_cwd = worker_cwd
        self.workers = [self.add_worker() for _ in range(workers)]
        self.wait_for_workers(workers)

    def add_worker(self) -> subprocess.Popen:
        return start(
            [os.path.join(BIN, "dask"), "worker", self.address, "--nthreads", "1", "--no-dashboard", "--nworkers", "1"],
            env=self.worker_env,
            cwd=self.worker_cwd,
        )

    def wait_for_workers(self, n: int, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout="20s") as client:
            client.wait_for_workers(n, timeout=timeout)

    def close(self) -> None:
        for proc in self.workers + [self.scheduler]:
            stop(proc)

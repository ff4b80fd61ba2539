"""`shard --cluster`: a real Dask scheduler and workers started as subprocesses on 127.0.0.1."""

import os
import signal
import subprocess
import sys
import sysconfig
import time

import pytest
from servers import ROOT, DaskCluster, free_port, s3_env
from stores import local_files, remote_files

pytestmark = pytest.mark.slow


def shard_cli(src, out, *extra, **kw):
    return subprocess.run(
        [sys.executable, "cli.py", "shard", "--src", str(src), "--out", str(out), "--shard-size", "40", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


def test_cluster_shards_are_byte_identical_to_local(sample_tree, sample_shards, dask_cluster, tmp_path):
    run = shard_cli(sample_tree, tmp_path / "wds", "--cluster", dask_cluster.address)
    assert run.returncode == 0, run.stdout + run.stderr
    assert local_files(tmp_path / "wds") == local_files(sample_shards)
    assert "train: 192 images in 5 shards" in run.stdout


def test_cluster_writes_to_s3(sample_tree, sample_shards, moto_s3, s3_endpoint):
    # workers find the store through their own standard AWS environment, as on a real cluster. One server is
    # enough: Dask's workers are fresh processes (no fork), running the store code the local tests run on both.
    s3 = moto_s3
    cluster = DaskCluster(workers=2, worker_env=s3_env(s3_endpoint))
    try:
        run = shard_cli(
            sample_tree, f"{s3}/wds", "--cluster", cluster.address, env={**os.environ, **s3_env(s3_endpoint)}
        )
    finally:
        cluster.close()
    assert run.returncode == 0, run.stdout + run.stderr
    assert remote_files(f"{s3}/wds") == local_files(sample_shards)


def test_killed_worker_leaves_the_output_unchanged(sample_tree, sample_shards, tmp_path):
    cluster = DaskCluster(workers=2)
    out = tmp_path / "wds"
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "cli.py",
                "shard",
                "--src",
                sample_tree,
                "--out",
                str(out),
                "--shard-size",
                "40",
                "--cluster",
                cluster.address,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        work = out / ".work" / "train"
        deadline = time.monotonic() + 300
        while not (work.is_dir() and any(n.endswith(".tar.json") for n in os.listdir(work))):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.05)
        os.killpg(cluster.workers[0].pid, signal.SIGKILL)  # the worker and everything it started, mid-run
        cluster.workers.append(cluster.add_worker())  # as a cluster manager would replace it
        output, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:  # Dask gave up on a task: a plain rerun finishes it
            rerun = shard_cli(sample_tree, out, "--cluster", cluster.address)
            assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    finally:
        cluster.close()
    assert local_files(out) == local_files(sample_shards)


def one_line_error(run):
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stdout + run.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in run.stderr, run.stderr
    return lines[0]


def test_unreachable_scheduler_is_one_line(sample_tree, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    line = one_line_error(shard_cli(sample_tree, tmp_path / "wds", "--cluster", address))
    assert f"cannot reach the Dask scheduler at {address}" in line and "dask scheduler" in line


def test_workers_that_cannot_import_the_project_is_one_line(sample_tree, tmp_path):
    # a worker with every distribution of this environment but the project: site-packages on the path and its .pth
    # files unread (-S, passed on to the processes it starts), so neither an editable install nor the checkout
    sites = os.pathsep.join(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    worker = [sys.executable, "-S", "-m", "distributed.cli.dask_worker"]
    cluster = DaskCluster(workers=1, worker_env={"PYTHONPATH": sites}, worker_cwd=str(tmp_path), worker_argv=worker)
    try:
        line = one_line_error(shard_cli(sample_tree, tmp_path / "wds", "--cluster", cluster.address))
    finally:
        cluster.close()
    assert "1 of 1 Dask workers cannot import this project" in line and "PYTHONPATH" in line
    assert not (tmp_path / "wds" / "train").exists() or os.listdir(tmp_path / "wds" / "train") == []


def test_interrupted_driver_keeps_committed_shards(sample_tree, sample_shards, dask_cluster, tmp_path):
    out = tmp_path / "wds"
    proc = subprocess.Popen(
        [
            sys.executable,
            "cli.py",
            "shard",
            "--src",
            sample_tree,
            "--out",
            str(out),
            "--shard-size",
            "40",
            "--cluster",
            dask_cluster.address,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    work = out / ".work" / "train"
    deadline = time.monotonic() + 300
    while not (work.is_dir() and any(n.endswith(".tar.json") for n in os.listdir(work))):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the driver's terminal (the workers run elsewhere)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, err
    # one line, no traceback (Ctrl-C inside distributed's sync() made it log a tornado ERROR with a NameError)
    assert len(err.splitlines()) == 1 and "are committed and kept" in err and "rerun the same command" in err, err
    dask_cluster.wait_until_idle()  # the shards the workers were still writing are committed now
    committed = len([n for n in os.listdir(work) if n.endswith(".tar.json")])
    rerun = shard_cli(sample_tree, out, "--cluster", dask_cluster.address)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"train: {committed} of 5 shards already finished" in rerun.stdout or committed == 5, rerun.stdout
    assert local_files(out) == local_files(sample_shards)

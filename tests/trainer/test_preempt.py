"""Stopping on signals (trainer/preempt.py), with real `cli.py train` processes and real signals: the state saved
at the step reached, an exact continuation, a second signal during the save, ranks that agree, one run per folder.

Each run starts in its own session with SIGINT at its default action: a background job of a non-interactive shell
inherits SIGINT ignored (which a run respects, like nohup), and then a Ctrl-C test would test nothing.
"""

import glob
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from servers import ROOT

from trainer.checkpoint import load_checkpoint
from trainer.config import TrainConfig
from trainer.metrics import read_metrics
from trainer.train import launch

TIMEOUT = 300  # seconds: a guard against a run that never stops, not a speed target
STOPPED = re.compile(r"stopped by (SIG\w+) at step (\d+) \(.*\): saved (\S+); continue with: (.+)")


def train_args(shards, out, *extra, procs=None) -> list[str]:
    device = ("--procs", str(procs)) if procs else ("--gpus", "0")
    common = ["--batch-size", "8", "--log-every", "1", "--lr", "1e-4"]
    return ["cli.py", "train", "--shards", shards, "--out", str(out), *common, *device, *extra]


class Train:
    """`cli.py train ARGS` as a real process; its output (stdout and stderr) read line by line as it comes."""

    def __init__(self, args: list[str]):
        self.args, self.lines, self.queue = args, [], queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def wait_for(self, prefix: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"the run ended before a line starting {prefix!r}:\n" + self.output)
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        pytest.fail(f"no line starting {prefix!r} within {TIMEOUT} s:\n" + self.output)

    def signal(self, sig: int, to: str = "parent") -> None:
        """to: "parent" (the process started), or "one rank" (one of the processes it spawned)."""
        if to == "parent":
            os.kill(self.proc.pid, sig)
            return
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        ranks = [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(ranks) == 2, ranks
        os.kill(max(ranks), sig)  # the later one: usually rank 1, which does not write the checkpoint

    def finish(self) -> int:
        """Wait for the end (at most TIMEOUT); the exit code (-N: killed by signal N)."""
        self.proc.wait(timeout=TIMEOUT)
        while (line := self.queue.get(timeout=TIMEOUT)) is not None:
            self.lines.append(line)
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stopped(self) -> tuple[str, int, list[str]]:
        """(signal name, step, the argv after `python` of the command it says continues the run)."""
        (line,) = [line for line in self.lines if line.startswith("stopped by")]
        name, step, path, command = STOPPED.fullmatch(line).groups()
        assert path == os.path.join(self.args[self.args.index("--out") + 1], "checkpoint.pt")
        command = shlex.split(command)
        assert command[0] == "python"
        return name, int(step), command[1:]


def step_of(out) -> int:
    return load_checkpoint(os.path.join(out, "checkpoint.pt"))["step"]


def assert_same_end(out, reference) -> None:
    """The same final validation, weights and momenta as the unbroken run."""
    (a,) = [r for r in read_metrics(str(reference)) if r["kind"] == "val"]
    b = [r for r in read_metrics(str(out)) if r["kind"] == "val"][-1]
    assert (b["step"], b["val_loss"], b["top1_err"], b["top5_err"]) == (
        a["step"],
        a["val_loss"],
        a["top1_err"],
        a["top5_err"],
    )
    assert_same_state(out, reference)


def assert_same_state(out, reference) -> int:
    """The same step, weights and momenta in the two runs' checkpoints; returns the step."""
    x, y = (load_checkpoint(os.path.join(d, "checkpoint.pt")) for d in (reference, out))
    assert x["step"] == y["step"]
    assert x["model"] and all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"])
    momenta = [
        (a["momentum_buffer"], b["momentum_buffer"])
        for a, b in zip(*(s["optimizer"]["state"].values() for s in (x, y)), strict=True)
    ]
    assert momenta and all(torch.equal(a, b) for a, b in momenta)
    return x["step"]


def wait_for_file(pattern: str, run: Train) -> str:
    while not (found := glob.glob(pattern)):
        assert run.proc.poll() is None, "the run ended before writing " + pattern + "\n" + run.output
        time.sleep(0.002)
    return found[0]


@pytest.mark.slow
def test_one_process_stops_on_sigterm_and_sigint_and_continues_exactly(sample_shards, tmp_path):
    out = tmp_path / "run"
    first = train_args(sample_shards, out, "--max-steps", "2")
    run = Train(first)
    run.wait_for("alexnet:")  # set up, before the first step
    run.signal(signal.SIGTERM)
    assert run.finish() == 128 + signal.SIGTERM, run.output
    name, step, command = run.stopped()
    assert (name, step, step_of(out)) == ("SIGTERM", 1, 1)  # the step in flight, finished and saved
    assert command == [*first, "--resume"]

    # a second signal during the save ends the run at once; the checkpoint on disk is still the last whole one
    run = Train(command)
    run.wait_for("resumed")
    run.signal(signal.SIGTERM)
    torn = wait_for_file(f"{out}/checkpoint.pt.tmp-*", run)
    run.signal(signal.SIGTERM)
    assert run.finish() == -signal.SIGTERM, run.output
    assert os.path.exists(torn) and step_of(out) == 1

    run = Train(command)  # Ctrl-C; the next run removes the torn temporary
    run.wait_for("resumed")
    assert not os.path.exists(torn)
    run.signal(signal.SIGINT)
    assert run.finish() == 128 + signal.SIGINT, run.output
    assert run.stopped() == ("SIGINT", 2, command) and step_of(out) == 2

    assert Train(command).finish() == 0  # the validation of step 2 was still owed
    rows = [(r["kind"], r["step"]) for r in read_metrics(str(out))]  # the killed run's step-2 row: dropped
    assert rows == [("train", 1), ("stop", 1), ("train", 2), ("stop", 2), ("val", 2)]
    reference = tmp_path / "unbroken"  # the same run, unbroken, in this process
    launch(
        TrainConfig(sample_shards, str(reference), 0, batch_size=8, log_every=1, lr=1e-4, max_steps=2, progress=False)
    )
    assert_same_end(out, reference)


@pytest.mark.slow
def test_two_gloo_processes_stop_at_one_step_when_one_rank_or_the_parent_is_signalled(sample_shards, tmp_path):
    out = tmp_path / "run"
    first = train_args(sample_shards, out, "--max-steps", "3", "--resume", "auto", procs=2)
    run = Train(first)
    run.wait_for("alexnet:")
    run.signal(signal.SIGTERM, to="one rank")  # the other rank learns it at the next step and stops with it
    assert run.finish() == 128 + signal.SIGTERM, run.output
    name, step, command = run.stopped()
    state = load_checkpoint(f"{out}/checkpoint.pt")
    assert name == "SIGTERM" and 1 <= step <= 2 and state["step"] == step and len(state["ranks"]) == 2
    assert command == first  # --resume auto: the same command continues

    run = Train(command)
    run.wait_for("resumed")
    run.signal(signal.SIGINT)  # the parent only (as Kubernetes signals PID 1): it passes the signal on
    assert run.finish() == 128 + signal.SIGINT, run.output
    name, later, _ = run.stopped()
    assert name == "SIGINT" and step < later <= 3 and step_of(out) == later

    # the weights and momenta saved at the second stop are those of an unbroken run to that step: both stops were
    # exact (continuing from a saved stop is the one-process test's last run)
    reference = tmp_path / "unbroken"  # launched from this process
    launch(TrainConfig(sample_shards, str(reference), procs=2, batch_size=8, log_every=1, lr=1e-4, max_steps=later))
    assert assert_same_state(out, reference) == later


@pytest.mark.slow
def test_one_run_per_directory_a_killed_runs_lock_never_blocks_and_sigusr1_stops(sample_shards, tmp_path):
    out = tmp_path / "run"
    args = train_args(sample_shards, out, "--max-steps", "100")  # runs until it is stopped below
    first = Train(args)
    first.wait_for("config:")
    second = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert first.proc.poll() is None  # refused while the first one runs
    assert second.returncode == 2 and second.stdout == "", second.stderr
    assert second.stderr.startswith(
        f"error: {out} is in use by another training run (pid {first.proc.pid} on {socket.gethostname()}, since "
    )
    assert second.stderr.count("\n") == 1
    first.wait_for("step ")
    first.signal(signal.SIGTERM)
    assert first.finish() == 128 + signal.SIGTERM, first.output
    _, step, _ = first.stopped()
    rows = [(r["kind"], r["step"]) for r in read_metrics(str(out))]
    assert rows == [("train", i) for i in range(1, step + 1)] + [("stop", step)]  # its own rows only

    resume = train_args(sample_shards, out, "--max-steps", "100", "--resume", "auto")
    killed = Train(resume)
    killed.wait_for("resumed")
    killed.proc.kill()
    assert killed.finish() == -signal.SIGKILL
    again = Train(resume)
    again.wait_for(f"resumed {out}/checkpoint.pt: epoch 0, step {step}")  # the dead run's lock went with it
    again.signal(signal.SIGUSR1)  # --stop-signal's default (Slurm's --signal=USR1@SECONDS)
    assert again.finish() == 128 + signal.SIGUSR1, again.output
    assert again.stopped()[:2] == ("SIGUSR1", step + 1)

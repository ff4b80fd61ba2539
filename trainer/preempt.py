"""Stopping a run without losing it: signals that ask every rank to stop at the same step, and one run per folder.

Schedulers stop jobs with a signal: Slurm and Kubernetes send SIGTERM (then SIGKILL a grace period later), Slurm's
`--signal=USR1@120` sends SIGUSR1 ahead of a time limit, a person presses Ctrl-C (SIGINT). `StopRequest` turns
the first of them into a request; `poll()`, called by every rank after every step and validation batch, makes all
ranks agree on the step to stop at, whether the signal reached one rank or all. The trainer then saves the exact
state and exits with 128 + the signal's number.

A second signal ends at once a process that a person or a scheduler started directly (the signal's default
action; the atomic checkpoint write leaves the last complete checkpoint). A rank started by a launcher ignores
repeats, because it often gets the same signal twice (from the scheduler, which signals every process of a job,
and passed on by the launcher): there the launcher ends it (`distributed.spawn` on its own second signal;
torchrun 30 s after passing its first one on).

`RunLock` holds an exclusive `flock` on RUN/.lock for the run's life. The kernel drops it when the process ends,
however it ends (SIGKILL included), so a lock left by a dead run never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys
import threading
import time

import torch
import torch.distributed as dist

from shards.errors import UserError

from .distributed import DistInfo, under_launcher

ALWAYS = (signal.SIGTERM, signal.SIGINT)
LOCK_NAME = ".lock"


def stop_signals(extra: str | None) -> tuple[signal.Signals, ...]:
    """SIGTERM, SIGINT and `extra` ("USR1", "SIGUSR2", ...; None: no other). A name that is no signal, or one
    that cannot be caught, is a UserError."""
    if not extra:
        return ALWAYS
    name = "SIG" + extra.upper().removeprefix("SIG")
    if name not in signal.Signals.__members__ or name in ("SIGKILL", "SIGSTOP"):
        raise UserError(f"--stop-signal {extra}: not a signal a process can catch (e.g. USR1, USR2, HUP)")
    return tuple(dict.fromkeys((*ALWAYS, signal.Signals[name])))


class StopRequest:
    """The stop signals of one rank (a context manager: the handlers are installed on entry and restored on exit).
    `received`: the first signal this process got (0: none); `agreed`: the signal every rank stops on."""

    def __init__(self, signals: tuple[signal.Signals, ...], info: DistInfo):
        self.signals, self.info, self.received, self.received_at, self.agreed = signals, info, 0, 0.0, 0
        self.hard_second = not under_launcher()  # the process a person or a scheduler started itself
        self.group = self.pending = None  # pending: (work, flag) of the reduction started at the previous poll
        self.previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # Python only lets the main thread catch signals
            for sig in self.signals:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup, or a background job of a script: respected
                    self.previous[sig] = signal.signal(sig, self._handle)
        if self.info.distributed:  # collective, after the handlers: once any rank is past it, all of them listen
            # the flags travel over gloo on the CPU, never through the GPU's stream: no device sync per step
            try:
                self.group = dist.new_group(backend="gloo")
            except BaseException:
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc) -> None:
        if self.pending is not None:  # every rank started the same reduction: it completes
            self.pending[0].wait()
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum, frame) -> None:
        if self.received:
            return  # a repeat that reached a rank (see the module docstring)
        self.received, self.received_at = signum, time.monotonic()
        if self.hard_second:  # the next one gets the default action: the process ends at once
            for sig in self.previous:
                signal.signal(sig, signal.SIG_DFL)

    def poll(self) -> int:
        """0 to go on, else the signal to stop on now; the same answer on every rank, as long as every rank calls
        it at the same points. Across ranks each poll waits for the reduction the previous one started (done by
        then: a step has passed) and starts the next, so a signal stops the run one step later there."""
        if self.group is None:
            self.agreed = self.received
            return self.agreed
        if self.pending is not None:
            work, flag = self.pending
            work.wait()
            self.pending, self.agreed = None, int(flag.item())
            if self.agreed:
                return self.agreed
        flag = torch.tensor([self.received], dtype=torch.int32)
        self.pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True), flag)
        return 0

    def barrier(self) -> None:
        """Every rank waits here (after the checkpoint is written, so no rank ends before it is whole)."""
        if self.group is not None:
            dist.barrier(group=self.group)

    def seconds(self) -> float | None:
        """Seconds since this process got the signal (None when only another rank got it)."""
        return time.monotonic() - self.received_at if self.received else None


class RunLock:
    """An exclusive lock on RUN for the life of a run (a context manager). A second run into the same folder is a
    UserError naming the holder; a folder on a filesystem without locks runs unlocked, with a warning."""

    def __init__(self, folder: str):
        self.folder, self.path, self.fd = folder, os.path.join(folder, LOCK_NAME), None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # never deleted: deleting races a waiting opener
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "it has not written its name yet"
            os.close(fd)
            raise UserError(
                f"{self.folder} is in use by another training run ({holder}): wait for it to end, stop it with "
                "SIGTERM (it saves and exits), or choose another --out"
            ) from None
        except OSError as e:  # e.g. Lustre mounted without -o flock
            os.close(fd)
            print(f"warning: cannot lock {self.path} ({e.strerror}): one run per --out is unchecked", file=sys.stderr)
            return self
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%F %T')}".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the lock

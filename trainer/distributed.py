"""Distributed set-up, in one place (like torchvision's `utils.init_distributed_mode` / timm's
`utils/distributed.py`): who am I (rank, local rank, world size), which device, which backend.

The environment decides, the way torchrun sets it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT);
`spawn` sets the same variables for the processes it starts itself (`--gpus N`, `--procs N`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from shards.errors import UserError

ENV_DEVICE = "ALEXNET_DEVICE"  # "cuda" or "cpu": set by spawn so every child makes the same choice


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_primary(self) -> bool:  # nanoGPT's master_process: the only rank that prints and writes
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch(worker, cfg, forward: tuple[signal.Signals, ...] = ()):
    """Run `worker(cfg, info)` once per process: in this process, in one spawned process per GPU / per CPU
    process (`cfg.gpus`, `cfg.procs`), or in the group torchrun set up. Returns the worker's result (the
    primary rank's when processes were spawned). Train and eval both start here; `forward`: the signals a
    parent of spawned processes passes on to them (see `spawn`)."""
    backend = getattr(cfg, "backend", None)
    if under_launcher():
        return _run(worker, cfg)
    nprocs, kind = plan_processes(cfg.gpus, cfg.procs)
    if backend == "nccl" and kind != "cuda":
        raise UserError("--backend nccl needs GPUs; CPU processes (--procs N, --gpus 0) use gloo")
    if nprocs == 1:
        return _run(worker, cfg, kind)
    return spawn(_run, (worker, cfg), nprocs, kind, forward)


def _run(worker, cfg, device_kind: str | None = None):
    info = setup_distributed(device_kind, getattr(cfg, "backend", None))
    try:
        return worker(cfg, info)
    finally:
        cleanup_distributed()


def say(info: DistInfo, msg: str) -> None:
    """Print on the primary rank only (nanoGPT's master_process), above a progress bar if one is drawn."""
    if info.is_primary:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()


def under_launcher() -> bool:
    """True when torchrun (or `spawn` below) has set up the rank environment."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def plan_processes(gpus: int | None, procs: int | None) -> tuple[int, str]:
    """(number of processes, device kind) for `--gpus N` / `--procs N`; asking for what is not there is a
    UserError. Default: one process per visible GPU, else one CPU process."""
    available = torch.cuda.device_count()
    if procs is not None and gpus not in (None, 0):
        raise UserError("--procs runs CPU processes over gloo; use either --gpus N or --procs N, not both")
    if procs is not None:
        if procs < 1:
            raise UserError(f"--procs must be at least 1 (got {procs})")
        return procs, "cpu"
    if gpus is None:
        return (available, "cuda") if available else (1, "cpu")
    if gpus < 0:
        raise UserError(f"--gpus must be 0 (CPU) or more (got {gpus})")
    if gpus > available:
        raise UserError(
            f"--gpus {gpus} asked for {gpus} GPU(s) but {available} CUDA device(s) are visible; "
            "use --gpus 0 for the CPU or --procs N to run N CPU processes over gloo"
        )
    return (gpus, "cuda") if gpus else (1, "cpu")


def setup_distributed(device_kind: str | None = None, backend: str | None = None) -> DistInfo:
    """Rank, local rank, world size and device of this process; joins the process group when world size > 1.

    device_kind: "cuda"/"cpu" (default: $ALEXNET_DEVICE, else cuda when available). backend: "nccl"/"gloo"
    (default: nccl on CUDA, gloo on CPU). NCCL without a GPU is a UserError.
    """
    device_kind = device_kind or os.environ.get(ENV_DEVICE) or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_kind == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA was asked for but no GPU is visible; use --gpus 0 (CPU) or --procs N (gloo)")
    backend = backend or ("nccl" if device_kind == "cuda" else "gloo")
    if backend == "nccl" and device_kind != "cuda":
        raise UserError("the NCCL backend needs GPUs; on CPU use gloo (--procs N, or --backend gloo)")
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if local_procs > 1:  # CPU processes share the cores instead of each starting one thread per core
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_procs))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            device_id=device if device_kind == "cuda" else None,
        )
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of a tensor over ranks (in place, returned); a no-op in one process."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj, info: DistInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] (pickled; only used at checkpoint time)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(local_rank: int, fn, args, nprocs: int, device_kind: str, port: int, results) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nprocs),
        LOCAL_WORLD_SIZE=str(nprocs),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    os.environ[ENV_DEVICE] = device_kind
    try:
        result = fn(*args)
    except UserError as e:  # hand the one-line message back to the parent, which raises it again
        results.put(("error", str(e)))
        raise SystemExit(2) from None
    if local_rank == 0:
        results.put(("result", result))


def spawn(fn, args: tuple, nprocs: int, device_kind: str, forward: tuple[signal.Signals, ...] = ()):
    """Run fn(*args) in nprocs fresh processes (one per GPU, or CPU processes over gloo) with the torchrun
    environment set; returns rank 0's result. A UserError in any of them is raised here, once.

    The first of the `forward` signals this parent gets is passed on to every process (a scheduler or a person
    may signal only the parent); a second one kills them (SIGKILL) and ends the parent at once."""
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    with _Relay(forward) as relay:
        context = mp.start_processes(
            _child, args=(fn, args, nprocs, device_kind, _free_port(), results), nprocs=nprocs, join=False
        )
        relay.start(context.pids())
        try:
            while not context.join():
                pass
        except mp.ProcessExitedException as e:
            for kind, value in _drain(results):
                if kind == "error":
                    raise UserError(value) from None
            if relay.received:
                raise SystemExit(_stopped_early(relay.received)) from None
            raise RuntimeError(f"a training process exited with code {e.exit_code}; see its output above") from None
    for kind, value in _drain(results):
        if kind == "result":
            return value
    if relay.received:  # the processes ended before they could run (a signal while they were starting)
        raise SystemExit(_stopped_early(relay.received))
    return None


def _drain(queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items


def _stopped_early(signum: int) -> int:
    print(f"stopped by {signal.Signals(signum).name} while the processes started; nothing new was saved", flush=True)
    return 128 + signum


class _Relay:
    """The signal handlers of a parent of spawned processes (a context manager; restored on exit)."""

    def __init__(self, signals: tuple[signal.Signals, ...]):
        self.signals, self.pids, self.received, self.previous = signals, [], 0, {}

    def __enter__(self) -> _Relay:
        for sig in self.signals if threading.current_thread() is threading.main_thread() else ():
            if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal stays ignored (nohup)
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def start(self, pids: list[int]) -> None:
        self.pids = pids
        if self.received:  # it came while they were being started
            self._send(self.received)

    def _handle(self, signum, frame) -> None:
        if self.received:
            self._send(signal.SIGKILL)
            os._exit(128 + signum)
        self.received = signum
        self._send(signum)

    def _send(self, signum: int) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

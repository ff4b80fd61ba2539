"""Who runs the shard tasks: a local process pool (the default) or a Dask cluster (`cli.py shard --cluster`).

Either way one task = one output shard = one call of `writer.build_shard`. Workers write the shards themselves
(to OUT: a local disk, a shared filesystem or an object store) and return only the shard's record (counts,
sha256, pixel sums, fingerprints); the driver plans, submits what is not finished yet and writes the manifest.

Failures: a worker that dies mid-task is replaced by Dask, which runs the task again elsewhere (the output is
deterministic, so unchanged). A driver that dies or is interrupted leaves every committed shard in place for the
rerun, and says how many that is. SRC and OUT must be reachable under the same name from every worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable

from . import io as store
from .errors import UserError
from .writer import ShardTask, build_shard, finished_records

CONNECT_TIMEOUT = "10s"
WORKER_WAIT_S = 60
POLL_S = 0.1  # how often the driver of a cluster run looks for finished tasks and for Ctrl-C


def run_tasks(todo: list[ShardTask], workers: int, cluster: str | None, bar) -> list[dict]:
    """The records of `todo`'s shards, in order; `bar` advances by images as they are done. Ctrl-C ends it with
    one line saying how many of these shards are committed and kept."""
    try:
        if cluster:
            return run_on_cluster(cluster, build_shard, todo, on_done=lambda task: bar.update(len(task.items)))
        return run_local(todo, workers, bar)
    except KeyboardInterrupt:
        kept = len(finished_records(todo))
        running = "; the shards the Dask workers are still writing will be committed too" if cluster else ""
        raise KeyboardInterrupt(
            f"interrupted: {kept} of the {len(todo)} {todo[0].split} shards this run had to write are committed "
            f"and kept{running}; rerun the same command to write the rest"
        ) from None


# The local pool's workers are forked from a process that has imported these once (multiprocessing's
# forkserver): torch takes over a second to import, and is then paid once per run, not once per worker, while the
# driver finds the inputs and plans the shards. shards.writer is preloaded when the server can import it (the
# same checkout or an installed package); otherwise each worker imports our own modules, a few milliseconds.
PRELOAD = ["numpy", "PIL.Image", "simplejpeg", "torch", "shards.writer"]
_START_METHOD = "forkserver"
# A worker of multiprocessing's forkserver (as under spawn) also runs the driver's main script again before its first
# task: cli.py, whose imports are then found already loaded. (Preloading "__main__" itself would avoid that, but
# CPython 3.11's forkserver drops the script's path: docs/benchmarks.md.)
_SERVER_PRELOAD = [*PRELOAD, "cli"]


def start_workers_server() -> None:
    """Start the process the local pool's workers are forked from, so that its imports overlap the planning."""
    import multiprocessing.forkserver

    mp.set_forkserver_preload(_SERVER_PRELOAD)
    multiprocessing.forkserver.ensure_running()


_progress = None  # in a pool process: the images counter shared with the parent


def _init_worker(counter, environ: dict) -> None:
    global _progress
    _progress = counter
    os.environ.clear()  # the driver's environment now (object-store credentials), not the server's at its start
    os.environ.update(environ)
    store.init_worker_process()


def _run_task(task: ShardTask) -> dict:
    return build_shard(task, _progress)


def run_local(todo: list[ShardTask], workers: int, bar) -> list[dict]:
    """A fork pool of `workers` processes; on any failure (Ctrl-C, a full disk) it is stopped and its
    half-written temporaries removed before the exception goes on."""
    start_workers_server()
    ctx = mp.get_context(_START_METHOD)
    counter = ctx.Value("q", 0)
    processes = max(1, min(workers, len(todo)))
    try:
        with ctx.Pool(processes, initializer=_init_worker, initargs=(counter, dict(os.environ))) as pool:
            pending = pool.map_async(_run_task, todo, chunksize=1)
            while not pending.ready():
                pending.wait(0.25)
                bar.update(counter.value - bar.n)
            return pending.get()  # re-raises a worker's exception (e.g. disk full) here
    except BaseException:
        store.remove_temporaries(todo[0].folder, todo[0].work)
        raise
    finally:
        bar.update(counter.value - bar.n)


def connect(address: str, interrupted: threading.Event):
    """A Dask client of the scheduler at `address`; one line saying what to do when it cannot be reached."""
    try:
        from distributed import Client
    except ModuleNotFoundError:
        raise UserError(
            "--cluster needs Dask: `pip install 'alexnet-wds[cluster]'` (make test / make demo install it)"
        ) from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise UserError(
            f"cannot reach the Dask scheduler at {address} ({e.__class__.__name__}): start one with "
            f"`dask scheduler` and pass its address (tcp://HOST:8786), or check the address"
        ) from None
    deadline = time.monotonic() + WORKER_WAIT_S
    while not client.scheduler_info(n_workers=1)["workers"]:  # asked again and again: Ctrl-C is seen meanwhile
        if interrupted.wait(POLL_S):
            client.close()
            raise KeyboardInterrupt
        if time.monotonic() > deadline:
            client.close()
            raise UserError(
                f"no Dask worker joined the scheduler at {address} within {WORKER_WAIT_S} s: start "
                f"`dask worker {address} --nthreads 1` on each node (see README, 'On a cluster')"
            )
    return client


def check_environment(client, address: str) -> None:
    """The scheduler (it unpickles the tasks) and every worker can import this project: the same checkout or
    installed package, with its image libraries."""
    try:
        client.run_on_scheduler(exec, "import shards.writer")
    except Exception as e:  # noqa: BLE001 - whatever the import raised there, the remedy is the same
        raise UserError(
            f"the Dask scheduler at {address} cannot import this project ({e.__class__.__name__}: {e}): "
            "start `dask scheduler` with the project's .venv and PYTHONPATH=/path/to/checkout, or "
            "`pip install /path/to/checkout` in its environment"
        ) from None
    # the workers import what the writer needs now (torch too, which it imports on the first resize): a worker
    # without it fails here with this message, not in its first task, and no task pays for the import
    results = client.run(exec, "import " + ", ".join(PRELOAD), on_error="return")
    broken = {worker: error for worker, error in results.items() if isinstance(error, BaseException)}
    if broken:
        worker, error = sorted(broken.items())[0]
        raise UserError(
            f"{len(broken)} of {len(results)} Dask workers cannot import this project (first: {worker}: "
            f"{error.__class__.__name__}: {error}): start them with the project's .venv and "
            "PYTHONPATH=/path/to/checkout, or `pip install /path/to/checkout` in their environment"
        )


def run_on_cluster(address: str, fn: Callable, tasks: list, on_done: Callable) -> list:
    """[fn(task) for task in tasks] computed on the cluster, in the order of `tasks`; on_done(task) as each ends."""
    from distributed import as_completed

    with deferred_interrupt() as interrupted:
        client = connect(address, interrupted)
        futures = []
        try:
            check_environment(client, address)
            futures = [client.submit(fn, task, pure=False) for task in tasks]
            task_of = {future.key: task for future, task in zip(futures, tasks, strict=True)}
            results = {}
            pending = as_completed(futures, loop=client.loop)
            while not pending.is_empty():
                for future in pending.next_batch(block=False):
                    results[future.key] = future.result()  # re-raises a task's exception (e.g. a full disk)
                    on_done(task_of[future.key])
                if interrupted.wait(POLL_S):
                    raise KeyboardInterrupt
            return [results[future.key] for future in futures]
        finally:  # also on Ctrl-C: nothing more is started; running tasks finish and commit their shards
            if futures:
                client.cancel(futures)
            client.close()


@contextlib.contextmanager
def deferred_interrupt():
    """While a cluster run talks to Dask, Ctrl-C sets an event that the driver checks every POLL_S, instead of
    raising wherever the main thread is. Raised inside distributed's blocking calls (utils.sync), it makes
    distributed log a tornado ERROR traceback (its cancel callback reads `future` before it is assigned)."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)

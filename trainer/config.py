"""The settings of `cli.py train` and `cli.py eval`, declared once: the CLI builds its options from these fields
(their defaults, the choices below), and the commands take the dataclasses. Nothing heavy is imported here."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.config import MEANS
from shards.cache import CacheConfig
from shards.format import DEFAULT_SHARDS

ARCHS = ("alexnet", "alexnet-2012")  # one tower (the common form), or the paper's two towers (Fig. 2)
SCHEDULES = ("plateau", "step")
BACKENDS = ("nccl", "gloo")
__all__ = ["ARCHS", "BACKENDS", "MEANS", "SCHEDULES", "EvalConfig", "TrainConfig"]


@dataclass
class TrainConfig:
    """Every knob of `cli.py train` (the CLI's options have these names); the paper's defaults (Sec. 5)."""

    shards: str = DEFAULT_SHARDS
    out: str = "./runs/alexnet"
    gpus: int | None = None  # processes, one per GPU; 0 = CPU; None = all visible GPUs, else CPU
    procs: int | None = None  # N CPU processes over gloo
    backend: str | None = None  # None: nccl on GPUs, gloo on CPU
    epochs: int = 90  # "roughly 90 cycles through the training set"
    batch_size: int = 128  # per process
    lr: float | None = None  # None: 0.01 (the paper) for a new run, the checkpoint's lr on --resume
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "plateau"  # "plateau": /10 when validation error stops improving; "step": /10 every N
    lr_factor: float = 0.1
    plateau_patience: int = 5  # our choice: the paper does not say how long "stopped improving" is
    step_epochs: int = 30  # --schedule step (torchvision's reference recipe)
    dropout: float = 0.5  # Sec. 4.2
    arch: str = "alexnet"  # or "alexnet-2012" (two towers, Fig. 2)
    mean: str = "image"  # Sec. 2: subtract the mean image of the training set; or "channel" (RGB)
    max_steps: int | None = None  # stop after this many optimizer steps (counted over the whole run)
    resume: bool | str = False  # True: continue RUN/checkpoint.pt; "auto": continue it if it exists, else start
    stop_signal: str | None = "USR1"  # stops the run like SIGTERM and SIGINT do (Slurm: --signal=USR1@120)
    compile: bool = False  # torch.compile (CUDA only)
    seed: int = 0
    checkpoint_minutes: float = 30.0
    log_every: int = 50  # steps between human lines / JSONL rows (the only host syncs)
    workers: int | None = None  # loader threads per process (None: the loader's default)
    cache: CacheConfig = field(default_factory=CacheConfig)  # shards on a store: the node-local cache
    progress: bool = True  # a progress bar on a terminal (never when stderr is not a TTY)


@dataclass
class EvalConfig:
    checkpoint: str  # RUN/best.pt or RUN/checkpoint.pt
    shards: str = DEFAULT_SHARDS
    ten_crop: bool = False  # Sec. 4.1: average the softmax over 10 patches
    batch_size: int = 128  # images per process (10 views each with ten_crop)
    gpus: int | None = None
    procs: int | None = None
    workers: int | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    as_json: bool = False

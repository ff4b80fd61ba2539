"""Every knob of the data pipelines in one place; the defaults are the paper's values (Krizhevsky et al. 2012).

Built by `pipelines.build_loader(**options)` (and by the CLI through it); printed/saved by whoever owns the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from shards.errors import UserError

MODES = ("train", "center", "ten_crop")
MEANS = ("channel", "image")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class PipelineConfig:
    # "train": random crop + flip + lighting (Sec. 4.1); "center": one centre crop; "ten_crop": 4 corners +
    # centre and their mirrors (Sec. 4.1, test-time averaging). Evaluation modes see every image exactly once.
    mode: str = "train"
    # Sec. 4.1 says 224x224 patches, but conv1 (11x11, stride 4, no padding) needs 227 to give 55x55 maps.
    crop: int = 227
    # Sec. 4.1: "horizontal reflections" - a mirror with probability 0.5 (train mode only).
    flip_prob: float = 0.5
    # Sec. 4.1: PCA lighting, alpha ~ N(0, 0.1^2) per image and component. 0 turns it off.
    lighting_std: float = 0.1
    # Sec. 2: "subtracting the mean activity over the training set from each pixel" = the mean *image*
    # (mean_image.npy, subtracted before the crop so the window matches). "channel" = per-channel RGB mean.
    mean: str = "image"
    # Not in the paper (it only centres); True also divides by the per-channel std of stats.json.
    std: bool = False
    # Output dtype on the device. DALI has no bfloat16: that one is cast by torch after the pipeline.
    dtype: str = "float32"
    # Training order: the part's shards in a seeded random order, then the samples mixed within consecutive
    # blocks of this many (pipelines.source.EpochPlan; the writer already shuffled the split). <= 1: in order.
    shuffle_buffer: int = 1024
    # DALI CPU threads (None: the cores of this process / ranks on CPU, up to 8 per GPU) and batches in flight.
    num_threads: int | None = None
    prefetch: int = 2
    # Share of JPEGs for the hardware decoder on A100/H100-class GPUs (DALI's default); ignored elsewhere.
    hw_decoder_load: float = 0.65

    @property
    def evaluation(self) -> bool:
        """Evaluation modes read in order, once each, padded with label -1; training shuffles and drops."""
        return self.mode != "train"

    def to_dict(self) -> dict:
        return asdict(self)


def make_config(split: str, **options) -> PipelineConfig:
    """PipelineConfig from build_loader's options; mode defaults to train for 'train', center otherwise."""
    known = {f.name for f in fields(PipelineConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown loader option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    options = {k: v for k, v in options.items() if v is not None}  # None = the default
    options.setdefault("mode", "train" if split == "train" else "center")
    cfg = PipelineConfig(**options)
    check_config(cfg)
    return cfg


def check_config(cfg: PipelineConfig) -> None:
    for name, value, allowed in (("mode", cfg.mode, MODES), ("mean", cfg.mean, MEANS), ("dtype", cfg.dtype, DTYPES)):
        if value not in allowed:
            raise UserError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    if not 0 <= cfg.flip_prob <= 1:
        raise UserError(f"flip_prob={cfg.flip_prob} must lie in [0, 1]")
    if cfg.lighting_std < 0 or cfg.crop < 1 or cfg.shuffle_buffer < 0 or cfg.prefetch < 1:
        raise UserError("lighting_std and shuffle_buffer must be >= 0, crop and prefetch >= 1")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise UserError(f"num_threads={cfg.num_threads} must be at least 1")

"""DALI data pipelines for AlexNet (Krizhevsky et al. 2012): shard directory -> augmented batches for PyTorch.

Stable API: `pipelines.build_loader(DIR, split="train"|"val", batch_size, device="cuda"|"cpu", rank=0,
world_size=1, seed=0, **options)` -> iterable of `(images, labels)` with a `len()`, `state_dict()` and
`load_state_dict()`; options are the fields of `PipelineConfig` (mode, mean, std, dtype, lighting_std, ...).
`pipelines.reference` holds the same augmentations in NumPy (tests and the benchmark baseline).
"""

from .config import PipelineConfig

__all__ = ["DaliLoader", "PipelineConfig", "build_loader"]


def __getattr__(name: str):
    """The loader (torch, DALI) is imported when first asked for: `pipelines.config` alone stays light (the CLI
    reads its choices)."""
    if name in ("DaliLoader", "build_loader"):
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")

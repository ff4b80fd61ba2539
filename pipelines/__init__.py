"""DALI data pipelines for AlexNet (Krizhevsky et al. 2012): shard directory -> augmented batches for PyTorch.

Stable API: `pipelines.build_loader(DIR, split="train"|"val", batch_size, device="cuda"|"cpu", rank=0,
world_size=1, seed=0, **options)` -> iterable of `(images, labels)` with a `len()`, `state_dict()` and
`load_state_dict()`; options are the fields of `PipelineConfig` (mode, mean, std, dtype, lighting_std, ...).
`pipelines.reference` holds the same augmentations in NumPy (tests and the benchmark baseline).
"""

from .config import PipelineConfig
from .loader import DaliLoader, build_loader

__all__ = ["DaliLoader", "PipelineConfig", "build_loader"]

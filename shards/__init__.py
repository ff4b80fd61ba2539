"""Offline stage: raw ImageNet -> 256x256 WebDataset shards with manifest, DALI index files and statistics.

Reader API (stable): `shards.open(DIR)` -> ShardSet (`.classes`, `.stats`, `.urls(split)`, `.count(split)`, ...),
`shards.webdataset(DIR, split)` -> webdataset.WebDataset of (PIL image, label).
"""

from .api import ShardSet, Stats, webdataset
from .errors import UserError

__all__ = ["ShardSet", "Stats", "UserError", "open", "webdataset"]


def open(root: str) -> ShardSet:  # noqa: A001 - the documented API name (shards.open(DIR))
    """Open a finished shard directory; a missing or foreign manifest is a UserError with a hint."""
    return ShardSet(root)

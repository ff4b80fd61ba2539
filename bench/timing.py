"""What every benchmark times with (airbench's honest timing): untimed warm-up, then the device synchronised
at both ends of the measured span."""
from __future__ import annotations

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(loader):
    """Batches of a loader epoch after epoch."""
    while True:
        yield from loader

"""What every benchmark times and reports with: airbench's honest timing (untimed warm-up, then the device
synchronised at both ends of the measured span) and one table format (a title, aligned images/s, optional JSON)."""

from __future__ import annotations

import json

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(loader):
    """Batches of a loader epoch after epoch."""
    while True:
        yield from loader


def report_rates(
    title: str, rows: list[tuple[str, float, str]], footer: list[str], result: dict, json_out: str | None = None
) -> dict:
    """rows: (label, images/s, note after the number). The JSON file gets `result` as it is."""
    width = max(len(label) for label, _, _ in rows) + 2
    print(title)
    print(f"  {'':<{width}}{'images/s':>12}")
    for label, rate, note in rows:
        print(f"  {label:<{width}}{rate:>12,.1f}{note}")
    for line in footer:
        print(f"  {line}")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {json_out}")
    return result

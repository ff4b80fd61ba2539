"""`cli.py bench train`: training images/s of the model alone (synthetic input already on the device) next to
end to end from the shards (DALI loader + the same step), so a user sees whether data or compute limits them.

Honest timing (airbench): warm-up steps are not counted, and the device is synchronised around the measured
steps. Both rows run in the same process on the same device, one after the other.
"""
from __future__ import annotations

import time

import torch

from shards.errors import UserError
from shards.report import report_rates

from .evaluate import to_model_input
from .loop import train_step
from .model import build_model

WARMUP_STEPS = 3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, optimizer, batches, steps: int, device: torch.device) -> tuple[float, float]:
    """(seconds for `steps` steps after WARMUP_STEPS untimed ones, seconds of it spent waiting for data)."""
    wait = 0.0
    for i in range(WARMUP_STEPS + steps):
        if i == WARMUP_STEPS:
            sync(device)
            start, wait = time.perf_counter(), 0.0
        t0 = time.perf_counter()
        images, labels = next(batches)
        wait += time.perf_counter() - t0
        train_step(model, optimizer, to_model_input(images, device), labels.to(device, non_blocking=True))
    sync(device)
    return time.perf_counter() - start, wait


def endless(loader):
    while True:
        yield from loader


def bench_train(shards_dir: str, device: str = "cpu", batch_size: int = 128, steps: int = 20,
                json_out: str | None = None, workers: int | None = None, arch: str = "alexnet") -> dict:
    import pipelines
    import shards

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no GPU is visible; use --device cpu")
    if steps < 1 or batch_size < 1:
        raise UserError("--steps and --batch-size must be at least 1")
    num_classes = len(shards.open(shards_dir).classes)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = build_model(num_classes, arch).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    # Model alone: one fixed batch that already lives on the device (upper bound of the step's speed).
    synthetic = (torch.randn(batch_size, 3, 227, 227, device=dev) * 60, torch.randint(0, num_classes,
                                                                                     (batch_size,), device=dev))
    model_s, _ = time_steps(model, optimizer, iter(lambda: synthetic, None), steps, dev)

    # End to end: the training loader (decode, augment, mean subtraction on the device) feeding the same step.
    loader = pipelines.build_loader(shards_dir, split="train", batch_size=batch_size, device=device, mode="train",
                                    mean="image",
                                    **({} if workers is None else {"num_threads": workers}))
    e2e_s, wait_s = time_steps(model, optimizer, endless(loader), steps, dev)

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    result = {"device": name, "arch": arch, "batch_size": batch_size, "steps": steps, "warmup_steps": WARMUP_STEPS,
              "model_alone_images_per_s": steps * batch_size / model_s,
              "end_to_end_images_per_s": steps * batch_size / e2e_s,
              "end_to_end_data_wait_share": wait_s / e2e_s}
    result["limited_by"] = "data" if result["end_to_end_data_wait_share"] > 0.2 else "compute"
    return report_rates(
        f"bench train: {arch}, batch {batch_size}, {steps} timed steps after {WARMUP_STEPS} warm-up, {name}",
        [("model alone (synthetic on device)", result["model_alone_images_per_s"], ""),
         ("end to end (shards -> DALI)", result["end_to_end_images_per_s"],
          f"   (data wait {result['end_to_end_data_wait_share']:.0%} of step time)")],
        [f"limited by {result['limited_by']}"], result, json_out)

"""`cli.py bench train`: training images/s of the model alone (synthetic input already on the device) next to
end to end from the shards (DALI loader + the same step), so a user sees whether data or compute limits them,
and the model FLOP/s utilisation of both: FLOPs per image counted by torch's FlopCounterMode (convolutions
and matmuls, forward + backward) x images/s, over the device's dense bf16 peak.

Honest timing (airbench): warm-up steps are not counted (with --compile they include the compilation), and
the device is synchronised around the measured steps. Both rows run in the same process, one after the other.
"""

from __future__ import annotations

import math
import time

import torch

from shards.errors import UserError
from trainer.device import place_model, setup_device, to_model_input
from trainer.model import build_model
from trainer.train import train_step

from .timing import endless, report_rates, sync

WARMUP_STEPS = 3
# Dense bf16 tensor-core peaks (TFLOP/s, vendor data sheets); the first name contained in the device's wins.
PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10", 125.0),
    ("L4", 121.0),
]


def flops_per_image(arch: str, num_classes: int) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one 227x227 image, counted on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(num_classes, arch)
        x = torch.randn(1, 3, 227, 227)
    fix = {torch.ops.aten.convolution_backward: conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=fix) as forward:
        model(x)
    with FlopCounterMode(display=False, custom_mapping=fix) as both:
        model(x).sum().backward()
    return float(forward.get_total_flops()), float(both.get_total_flops())


def conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    bias,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """Each gradient (input, weight) of a convolution costs what its forward costs: 2 x batch x output pixels x
    weights (w_shape is per group). torch's own formula ignores `groups` for the weight gradient, which
    counts alexnet-2012's grouped convs' weight gradients twice (4.96 instead of 4.14 GFLOP per image)."""
    forward = 2 * grad_out_shape[0] * math.prod(grad_out_shape[2:]) * math.prod(w_shape)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def known_peak(device_name: str) -> float | None:
    return next((peak for name, peak in PEAK_TFLOPS if name in device_name), None)


def time_steps(net, optimizer, batches, steps: int, device: torch.device) -> tuple[float, float]:
    """(seconds for `steps` steps after WARMUP_STEPS untimed ones, seconds of it spent waiting for data)."""
    wait = 0.0
    for i in range(WARMUP_STEPS + steps):
        if i == WARMUP_STEPS:
            sync(device)
            start, wait = time.perf_counter(), 0.0
        t0 = time.perf_counter()
        images, labels = next(batches)
        wait += time.perf_counter() - t0
        train_step(net, optimizer, to_model_input(images, device), labels.to(device, non_blocking=True))
    sync(device)
    return time.perf_counter() - start, wait


def bench_train(
    shards: str,
    device: str = "cpu",
    batch_size: int = 128,
    steps: int = 20,
    json_out: str | None = None,
    workers: int | None = None,
    arch: str = "alexnet",
    compile: bool = False,
    peak_tflops: float | None = None,
) -> dict:
    import pipelines
    from shards import open as open_shards

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no GPU is visible; use --device cpu")
    if steps < 1 or batch_size < 1:
        raise UserError("--steps and --batch-size must be at least 1")
    num_classes = len(open_shards(shards).classes)
    dev = torch.device(device)
    setup_device(dev)
    torch.manual_seed(0)
    model = place_model(build_model(num_classes, arch), dev)
    net = torch.compile(model) if compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    # Model alone: one fixed batch that already lives on the device (upper bound of the step's speed).
    synthetic = (
        torch.randn(batch_size, 3, 227, 227, device=dev) * 60,
        torch.randint(0, num_classes, (batch_size,), device=dev),
    )
    model_s, _ = time_steps(net, optimizer, iter(lambda: synthetic, None), steps, dev)

    # End to end: the training loader (decode, augment, mean subtraction on the device) feeding the same step.
    loader = pipelines.build_loader(
        shards, split="train", batch_size=batch_size, device=dev, mode="train", mean="image", num_threads=workers
    )
    e2e_s, wait_s = time_steps(net, optimizer, endless(loader), steps, dev)

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    forward, train_flops = flops_per_image(arch, num_classes)
    peak = peak_tflops or (known_peak(name) if dev.type == "cuda" else None)
    result = {
        "device": name,
        "arch": arch,
        "batch_size": batch_size,
        "steps": steps,
        "warmup_steps": WARMUP_STEPS,
        "compile": compile,
        "gflop_per_image_forward": forward / 1e9,
        "gflop_per_image_train_step": train_flops / 1e9,
        "peak_tflops": peak,
        "model_alone_images_per_s": steps * batch_size / model_s,
        "end_to_end_images_per_s": steps * batch_size / e2e_s,
        "end_to_end_data_wait_share": wait_s / e2e_s,
    }
    rows = []
    for key, label in (
        ("model_alone", "model alone (synthetic on device)"),
        ("end_to_end", "end to end (shards -> DALI)"),
    ):
        tflops = result[f"{key}_images_per_s"] * train_flops / 1e12
        result[f"{key}_tflops"] = tflops
        result[f"{key}_mfu"] = tflops / peak if peak else None
        note = f"   {tflops:.3g} TFLOP/s" + (f" = {tflops / peak:.1%} of {peak:g}" if peak else "")
        if key == "end_to_end":
            note += f"; data wait {result['end_to_end_data_wait_share']:.0%} of step time"
        rows.append((label, result[f"{key}_images_per_s"], note))
    result["limited_by"] = "data" if result["end_to_end_data_wait_share"] > 0.2 else "compute"
    return report_rates(
        f"bench train: {arch}{' (torch.compile)' if compile else ''}, batch {batch_size}, {steps} timed steps "
        f"after {WARMUP_STEPS} warm-up, {name}",
        rows,
        [
            f"FLOPs per image (FlopCounterMode): forward {forward / 1e9:.2f} G, train step (fwd+bwd) "
            f"{train_flops / 1e9:.2f} G" + ("" if peak else "; no known peak for this device (--peak-tflops)"),
            f"limited by {result['limited_by']}",
        ],
        result,
        json_out,
    )

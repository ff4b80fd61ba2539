"""How training, evaluation and `bench train` run the model on a device, written once for all three:
cuDNN/TF32 flags, the model's memory format, bf16 autocast and the input layout.
"""

from __future__ import annotations

import contextlib

import torch


def setup_device(device: torch.device) -> None:
    """Fixed input size: let cuDNN pick its fastest algorithms; TF32 for what autocast leaves in fp32."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def place_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """On the device; channels_last (NHWC) on CUDA, cuDNN's fastest layout for tensor-core convolutions."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Images [B,3,H,W] on the device, channels_last on CUDA.

    The CUDA loader already yields them so: DALI writes HWC and the loader hands out `permute(0, 3, 1, 2)` of
    it, a channels_last view, so this is a no-op there (no CHW -> NHWC copy per batch); other inputs are copied.
    """
    images = images.to(device, non_blocking=True)
    if device.type == "cuda" and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images

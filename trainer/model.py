"""AlexNet as in Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural
Networks" (NIPS 2012), with the paper's initialisation and local response normalisation.

Two variants (`ARCHS`):
- "alexnet": one tower, every layer connected to every channel of the previous one (~62.4M parameters at
  1000 classes) - what fits on one modern GPU.
- "alexnet-2012": the paper's two-GPU model (Fig. 2). conv2, conv4 and conv5 only see the kernel maps of
  their own half (groups=2) and LRN normalises within each half; conv3 and the FC layers cross (~61.0M; the
  paper says "60 million").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ARCHS

# Sec. 3.3: b = a / (k + alpha * sum_{n neighbours} a^2)^beta with k=2, n=5, alpha=1e-4, beta=0.75.
LRN_K, LRN_SIZE, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75


def window_sum(t: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Sum over the LRN_SIZE neighbouring channels (zero-padded at the ends, and at each group's ends) as one
    pooling op over the channel axis, on a free view in either memory format: no padded copy, no stack."""
    n, c, h, w = t.shape
    half = LRN_SIZE // 2
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():  # memory [N, H, W, C]
        s = F.avg_pool2d(
            t.permute(0, 2, 3, 1).reshape(-1, 1, c // groups, 1), (LRN_SIZE, 1), 1, (half, 0), divisor_override=1
        )
        return s.view(n, h, w, c).permute(0, 3, 1, 2)
    s = F.avg_pool2d(t.reshape(n * groups, 1, c // groups, h * w), (LRN_SIZE, 1), 1, (half, 0), divisor_override=1)
    return s.view(n, c, h, w)


class _LRN(torch.autograd.Function):
    """b = a * d^-beta, d = k + alpha * window_sum(a^2): two saved tensors (a, d) and one window sum each way.

    Backward (the window is symmetric, so its transpose is itself):
    da = g * d^-beta - 2 alpha beta * a * window_sum(g * a * d^(-beta-1)).
    d and the sums are kept in float32 when a is bf16/fp16 (k + alpha * sum needs more than 8 mantissa bits);
    the output is in a's dtype.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, groups: int) -> torch.Tensor:
        a32 = _wide(a)
        d = window_sum(a32 * a32, groups).mul_(LRN_ALPHA).add_(LRN_K)
        ctx.save_for_backward(a, d)
        ctx.groups = groups
        return (a32 * d.pow(-LRN_BETA)).to(a.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, d = ctx.saved_tensors
        a32, g32 = _wide(a), _wide(g)
        scale = d.pow(-LRN_BETA)
        inner = window_sum(g32 * a32 * scale / d, ctx.groups)
        return (g32 * scale - (2 * LRN_ALPHA * LRN_BETA) * a32 * inner).to(a.dtype), None


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class LocalResponseNorm(nn.Module):
    """The paper's LRN (Sec. 3.3), optionally within each of `groups` channel halves (one per GPU tower).

    The paper's alpha multiplies the plain sum (torch's nn.LocalResponseNorm divides alpha by the window size).
    A fused autograd function (`_LRN`) instead of torch's: 2 saved tensors and ~4 elementwise passes instead
    of torch's pad + 3-d pooling + 5 autograd-saved intermediates; tests hold it to nn.LocalResponseNorm.
    """

    def __init__(self, groups: int = 1):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LRN.apply(x, self.groups)


class AlexNet(nn.Module):
    """5 conv + 3 FC layers (Sec. 3.5); input [B,3,227,227] -> logits [B,num_classes]."""

    def __init__(self, num_classes: int = 1000, arch: str = "alexnet", dropout: float = 0.5):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, not {arch!r}")
        g = 2 if arch == "alexnet-2012" else 1  # Fig. 2: conv2/4/5 connect only within each GPU's half
        self.arch, self.num_classes = arch, num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 11, stride=4),
            nn.ReLU(inplace=True),  # 227 -> 55
            LocalResponseNorm(g),
            nn.MaxPool2d(3, stride=2),  # Sec. 3.4: overlapping pooling, z=3, s=2 -> 27
            nn.Conv2d(96, 256, 5, padding=2, groups=g),
            nn.ReLU(inplace=True),
            LocalResponseNorm(g),
            nn.MaxPool2d(3, stride=2),  # -> 13
            nn.Conv2d(256, 384, 3, padding=1),
            nn.ReLU(inplace=True),  # conv3 crosses towers
            nn.Conv2d(384, 384, 3, padding=1, groups=g),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=g),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),  # -> 6x6x256
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),  # Sec. 4.2: dropout 0.5 in the first two fully-connected layers
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )  # torch's default initialisation, replaced by build_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

    def layers(self) -> list[nn.Module]:
        """conv1..conv5, fc6..fc8 in order."""
        return [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def init_paper_weights(model: AlexNet) -> None:
    """Sec. 5: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC layers (to give the
    ReLUs positive inputs early on), 0 in conv1, conv3 and the output layer."""
    ones = {1, 3, 4, 5, 6}  # indices in conv1..fc8 order
    for i, layer in enumerate(model.layers()):
        nn.init.normal_(layer.weight, mean=0.0, std=0.01)
        nn.init.constant_(layer.bias, 1.0 if i in ones else 0.0)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(num_classes: int, arch: str = "alexnet", dropout: float = 0.5, weights: dict | None = None) -> AlexNet:
    """The paper's initial weights, or `weights` (a state dict: evaluating, resuming): the model is then built on
    the meta device and takes those tensors, nothing drawn from the RNG, allocated or copied, which saves the
    second that torch's default initialisation and the paper's take on a CPU (docs/benchmarks.md)."""
    if weights is None:
        model = AlexNet(num_classes=num_classes, arch=arch, dropout=dropout)
        init_paper_weights(model)
        return model
    with torch.device("meta"):
        model = AlexNet(num_classes=num_classes, arch=arch, dropout=dropout)
    # the parameters become those tensors, nothing allocated or copied (contiguous: as drawn weights are, also
    # where a CUDA run saved its convolutions channels_last)
    model.load_state_dict({k: v.contiguous() for k, v in weights.items()}, assign=True)
    return model


def describe(model: AlexNet) -> str:
    """One line with the parameter count, e.g. 'alexnet: 62,378,344 parameters (1000 classes)'."""
    return f"{model.arch}: {count_parameters(model):,} parameters ({model.num_classes} classes)"

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
from torch import nn

ARCHS = ("alexnet", "alexnet-2012")

# Sec. 3.3: b = a / (k + alpha * sum_{n neighbours} a^2)^beta with k=2, n=5, alpha=1e-4, beta=0.75.
LRN_K, LRN_SIZE, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75


class LocalResponseNorm(nn.Module):
    """The paper's LRN (Sec. 3.3), optionally within each of `groups` channel halves (one per GPU tower).

    torch's LocalResponseNorm divides alpha by the window size; the paper does not, so we pass alpha * n.
    """

    def __init__(self, groups: int = 1):
        super().__init__()
        self.groups = groups
        self.lrn = nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return self.lrn(x)
        return torch.cat([self.lrn(part) for part in x.chunk(self.groups, dim=1)], dim=1)


class AlexNet(nn.Module):
    """5 conv + 3 FC layers (Sec. 3.5); input [B,3,227,227] -> logits [B,num_classes]."""

    def __init__(self, num_classes: int = 1000, arch: str = "alexnet", dropout: float = 0.5):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, not {arch!r}")
        g = 2 if arch == "alexnet-2012" else 1  # Fig. 2: conv2/4/5 connect only within each GPU's half
        self.arch, self.num_classes = arch, num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True),  # 227 -> 55
            LocalResponseNorm(g),
            nn.MaxPool2d(3, stride=2),  # Sec. 3.4: overlapping pooling, z=3, s=2 -> 27
            nn.Conv2d(96, 256, 5, padding=2, groups=g), nn.ReLU(inplace=True),
            LocalResponseNorm(g),
            nn.MaxPool2d(3, stride=2),  # -> 13
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),  # conv3 crosses towers
            nn.Conv2d(384, 384, 3, padding=1, groups=g), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=g), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),  # -> 6x6x256
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),  # Sec. 4.2: dropout 0.5 in the first two fully-connected layers
            nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        init_paper_weights(self)

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


def build_model(num_classes: int, arch: str = "alexnet", dropout: float = 0.5) -> AlexNet:
    return AlexNet(num_classes=num_classes, arch=arch, dropout=dropout)


def describe(model: AlexNet) -> str:
    """One line with the parameter count, e.g. 'alexnet: 62,378,344 parameters (1000 classes)'."""
    return f"{model.arch}: {count_parameters(model):,} parameters ({model.num_classes} classes)"

"""VGG networks for 32 px inputs (and a tiny one for CPU smoke runs), as dynamic sparse
training papers use them: the ITOP paper trains VGG-16 on CIFAR-10 (Liu et al. 2021, after
the RigL/SNIP CIFAR setups). Conv-BN-ReLU stages, 2×2 max-pooling between stages, global
average pooling and one linear classifier; Kaiming fan-out init as torchvision's VGG-BN.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn as nn
from torch import Tensor

from harness.models._registry import register_model

__all__ = ["MODEL_CFGS", "VGG", "VGGConfig"]


@dataclass(frozen=True)
class VGGConfig:
    stages: tuple[tuple[int, ...], ...]  # conv widths per stage; a max-pool follows each stage
    num_classes: int = 10
    in_channels: int = 3
    resolution: int = 32

    def __post_init__(self) -> None:
        if not self.stages or any(not s or min(s) <= 0 for s in self.stages):
            raise ValueError(f"stages={self.stages!r}: every stage needs widths > 0")
        if self.resolution < 1:
            raise ValueError(f"resolution={self.resolution}: must be at least 1")


class VGG(nn.Module):
    def __init__(self, cfg: VGGConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = cfg.in_channels
        for stage in cfg.stages:
            for width in stage:
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False),
                           nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                c_in = width
            # ceil_mode: a 1×1 map stays 1×1 (tiny dry-run inputs); even sizes are unchanged
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


MODEL_CFGS = {
    # VGG-16 (13 convs) with one linear classifier, as in the sparse-training CIFAR setups.
    "vgg16_cifar": VGGConfig(stages=((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                                     (512, 512, 512))),
    # Smoke: five convs in three stages (~0.24M conv weights) at 16 px.
    "vgg_tiny": VGGConfig(stages=((32,), (64, 64), (128, 128)), resolution=16),
}


def _create(name: str, **overrides) -> VGG:
    cfg = replace(MODEL_CFGS[name], **overrides)
    return VGG(cfg)


@register_model
def vgg16_cifar(**overrides) -> VGG:
    """VGG-16 with BatchNorm for 32 px inputs (CIFAR)."""
    return _create("vgg16_cifar", **overrides)


@register_model
def vgg_tiny(**overrides) -> VGG:
    """A five-conv VGG for CPU smoke runs: 16 px, 10 classes."""
    return _create("vgg_tiny", **overrides)

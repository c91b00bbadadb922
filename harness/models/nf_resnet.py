"""Normalizer-Free ResNets (NF-ResNet) and their BatchNorm twins.

Brock, De & Smith, "Characterizing signal propagation to close the performance gap in
unnormalized ResNets", ICLR 2021, https://arxiv.org/abs/2101.08692; used with Adaptive
Gradient Clipping in Brock et al., "High-Performance Large-Scale Image Recognition Without
Normalization", ICML 2021, https://arxiv.org/abs/2102.06171. Reference code: DeepMind's
``nfnets/nf_resnet.py`` and timm's ``models/nfnet.py`` (read, not copied).

An NF-ResNet is a pre-activation ResNet without any normalisation layer:

* residual block ``h_{i+1} = h_i + alpha * s_i * f_i(h_i / beta_i)`` with ``alpha = 0.2``,
  ``beta_i = sqrt(Var(h_i))`` the *expected* standard deviation of the residual stream, and
  ``s_i`` a zero-initialised SkipInit scalar gain;
* the expected variance starts at 1 after the stem, grows by ``alpha**2`` per block and is
  reset to ``1 + alpha**2`` after each transition block (the block whose shortcut is a
  projection, which takes ``h_i / beta_i`` as its input and so outputs unit variance);
* every conv is a ``ScaledStdConv2d`` (Scaled Weight Standardization) and every ReLU is scaled
  by ``gamma = sqrt(2 / (1 - 1/pi))`` so that it maps N(0, 1) to unit variance.

``NFResNetConfig(norm="batch")`` builds the same network shape (same convs, kernel sizes,
strides and widths) as a standard post-activation ResNet with BatchNorm: plain convs + BN, no
alpha/beta, no SkipInit. NF and BN twins then differ only in normalisation; their parameter
counts differ by exactly one SkipInit scalar per block, because every NF conv carries a gain
and a bias where the BN twin has a BN weight and bias.

Weights are initialised as in DeepMind's code: fan-in normal for the NF convs (unit-norm rows,
which matters for AGC's ratio ||G_i|| / ||W_i||), Kaiming fan-out for the BN convs (as
torchvision), and N(0, 0.01) for the classifier of both twins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from harness.models._registry import register_model

__all__ = [
    "GAMMA_RELU",
    "NFResNet",
    "NFResNetConfig",
    "ScaledStdConv2d",
    "StreamVariance",
    "residual_stream_variances",
]

GAMMA_RELU = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))  # 1.7128..., Var(gamma*relu(z)) = 1


@dataclass(frozen=True)
class NFResNetConfig:
    """Architecture of an NF-ResNet (``norm="none"``) or of its BatchNorm twin (``"batch"``)."""

    stem_width: int = 16
    depths: tuple[int, ...] = (1, 1, 1)
    widths: tuple[int, ...] = (16, 32, 64)  # block output widths (4x the bottleneck width)
    strides: tuple[int, ...] = (1, 2, 2)
    bottleneck: bool = False
    bottle_ratio: float = 0.25  # bottleneck width = width * bottle_ratio
    alpha: float = 0.2
    num_classes: int = 10
    in_channels: int = 3
    resolution: int = 32  # input size the model is meant for (read by data/complexity code)
    stem_type: str = "cifar"  # "cifar": 3x3 s1 conv; "resnet": 7x7 s2 conv + 3x3 s2 max pool
    norm: str = "none"  # "none": normalizer-free; "batch": the BatchNorm twin
    std_conv_eps: float = 1e-4  # floor on Var(W)*fan_in in weight standardization
    fc_init_std: float = 0.01  # classifier weights ~ N(0, std), as DeepMind's; 0 gives zeros

    def __post_init__(self) -> None:
        for f in ("depths", "widths", "strides"):  # lists from overrides: keep configs hashable
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if not len(self.depths) == len(self.widths) == len(self.strides):
            raise ValueError("depths, widths and strides must have the same length")
        if self.norm not in ("none", "batch"):
            raise ValueError(f"norm must be 'none' or 'batch', got {self.norm!r}")
        if self.stem_type not in ("cifar", "resnet"):
            raise ValueError(f"stem_type must be 'cifar' or 'resnet', got {self.stem_type!r}")


# --------------------------------------------------------------------------------------------
# Layers


class ScaledStdConv2d(nn.Conv2d):
    """Conv2d with Scaled Weight Standardization: W^ = gain * (W - mean) / (std * sqrt(fan_in)).

    Mean and std are per output channel. Each standardized row has unit norm and zero mean, so
    the conv preserves the variance of i.i.d. inputs and removes their mean. ``gain`` is a
    learnable per-output-channel vector (1-D, so AGC clips it with one whole-tensor norm, as
    the paper's gains). As in DeepMind's code the variance term is floored by ``eps``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        bias: bool = True,
        eps: float = 1e-4,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=bias
        )
        self.gain = nn.Parameter(torch.ones(out_channels))
        self.eps = eps
        # Fan-in normal init (unit-norm rows); the forward pass ignores the scale, AGC does not.
        nn.init.normal_(self.weight, std=self.weight[0].numel() ** -0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def standardized_weight(self) -> Tensor:
        w = self.weight
        fan_in = w[0].numel()
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, correction=0)
        scale = torch.rsqrt(torch.clamp(var * fan_in, min=self.eps))
        return (w - mean) * (scale * self.gain.view(-1, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


class GammaReLU(nn.Module):
    """``gamma * relu(x)``: the ReLU rescaled to keep unit variance on N(0, 1) inputs."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x) * GAMMA_RELU


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


def _branch_shape(c_in: int, c_out: int, stride: int, cfg: NFResNetConfig) -> list[tuple]:
    """(c_in, c_out, kernel, stride) of the residual branch's convs, shared by both variants."""
    if cfg.bottleneck:
        mid = max(1, round(c_out * cfg.bottle_ratio))
        return [(c_in, mid, 1, 1), (mid, mid, 3, stride), (mid, c_out, 1, 1)]  # stride on 3x3
    return [(c_in, c_out, 3, stride), (c_out, c_out, 3, 1)]


# --------------------------------------------------------------------------------------------
# Blocks


class NFBlock(nn.Module):
    """Pre-activation NF residual block: ``h + alpha * skip_gain * f(h / beta)``.

    In a transition block the shortcut is a strided 1x1 ``ScaledStdConv2d`` applied to the
    scaled, activated input, so the block's output variance restarts at ``1 + alpha**2``.
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, beta: float, cfg: NFResNetConfig
    ) -> None:
        super().__init__()
        self.alpha, self.beta = cfg.alpha, beta
        self.act = GammaReLU()
        self.shortcut = (
            ScaledStdConv2d(c_in, c_out, 1, stride, eps=cfg.std_conv_eps)
            if stride != 1 or c_in != c_out
            else None
        )
        self.convs = nn.ModuleList(
            ScaledStdConv2d(i, o, k, s, eps=cfg.std_conv_eps)
            for i, o, k, s in _branch_shape(c_in, c_out, stride, cfg)
        )
        self.skip_gain = nn.Parameter(torch.zeros(()))  # SkipInit: the block starts as identity
        # Variance of the residual stream the schedule expects at the block's input and output.
        self.expected_var_in = beta**2
        self.expected_var_out = (1.0 if self.shortcut is not None else beta**2) + cfg.alpha**2

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(x / self.beta)
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.convs[0](out)
        for conv in self.convs[1:]:
            out = conv(self.act(out))
        return shortcut + out * (self.alpha * self.skip_gain)


class BNBlock(nn.Module):
    """Standard post-activation ResNet block (v1.5: stride on the 3x3) with BatchNorm."""

    def __init__(self, c_in: int, c_out: int, stride: int, cfg: NFResNetConfig) -> None:
        super().__init__()
        self.shortcut = _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else None
        self.convs = nn.ModuleList(_conv_bn(*s) for s in _branch_shape(c_in, c_out, stride, cfg))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = x
        for i, conv_bn in enumerate(self.convs):
            out = conv_bn(out if i == 0 else F.relu(out))
        return F.relu(out + shortcut)


# --------------------------------------------------------------------------------------------
# Model


class NFResNet(nn.Module):
    """NF-ResNet (or, with ``cfg.norm == "batch"``, its BatchNorm twin); classifier ``fc``."""

    def __init__(self, cfg: NFResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        nf = cfg.norm == "none"
        k, s = (3, 1) if cfg.stem_type == "cifar" else (7, 2)
        if nf:
            # No activation after the stem: the first block applies its own, as in DeepMind's.
            stem: list[nn.Module] = [ScaledStdConv2d(cfg.in_channels, cfg.stem_width, k, s)]
        else:
            stem = [*_conv_bn(cfg.in_channels, cfg.stem_width, k, s), nn.ReLU()]
        if cfg.stem_type == "resnet":
            stem.append(nn.MaxPool2d(3, 2, padding=1))
        self.stem = nn.Sequential(*stem)

        stages, c_in, expected_var = [], cfg.stem_width, 1.0
        for depth, width, stride in zip(cfg.depths, cfg.widths, cfg.strides, strict=True):
            blocks: list[nn.Module] = []
            for b in range(depth):
                st = stride if b == 0 else 1
                if nf:
                    block = NFBlock(c_in, width, st, math.sqrt(expected_var), cfg)
                    expected_var = block.expected_var_out
                else:
                    block = BNBlock(c_in, width, st, cfg)
                blocks.append(block)
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # Pre-activation nets end with an activation; the BN blocks end with a ReLU already.
        self.final_act = GammaReLU() if nf else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, cfg.num_classes)
        # Same for both twins, so that they differ only in normalisation.
        nn.init.normal_(self.fc.weight, std=cfg.fc_init_std)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.final_act(self.stages(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.forward_features(x)), 1))


class StreamVariance(NamedTuple):
    """Expected (schedule) and measured variance of the residual stream after one module."""

    name: str
    expected: float
    measured: float


@torch.no_grad()
def residual_stream_variances(model: NFResNet, x: Tensor) -> list[StreamVariance]:
    """Measure the residual stream after the stem and after every block, on input ``x``.

    The measured variance is the average channel variance (per channel over batch and space,
    then averaged over channels), the quantity of the NF paper's signal propagation plots.
    The schedule assumes non-zero SkipInit gains: set them to 1 to compare at initialisation.
    """
    if model.cfg.norm != "none":
        raise ValueError("the variance schedule is defined for normalizer-free models only")
    names = {m: n for n, m in model.named_modules()}
    expected = {model.stem: 1.0}
    expected.update({m: m.expected_var_out for m in model.modules() if isinstance(m, NFBlock)})
    seen: list[StreamVariance] = []

    def hook(module: nn.Module, _inp: tuple, out: Tensor) -> None:
        var = out.double().var(dim=(0, 2, 3), correction=0).mean().item()
        seen.append(StreamVariance(names[module], expected[module], var))

    handles = [m.register_forward_hook(hook) for m in expected]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


# --------------------------------------------------------------------------------------------
# Configurations and registered constructors

_cfgs: dict[str, NFResNetConfig] = {
    # ~78K params: trains on 2 CPU cores in seconds per epoch at 32 px.
    "resnet_tiny": NFResNetConfig(),
    # ResNet-18 for 32 px inputs (3x3 stem, no max pool), ~11.2M params.
    "resnet18_cifar": NFResNetConfig(
        stem_width=64, depths=(2, 2, 2, 2), widths=(64, 128, 256, 512), strides=(1, 2, 2, 2)
    ),
    # ImageNet ResNet-50 (v1.5); the BN twin is torchvision's resnet50, 25,557,032 params.
    "resnet50": NFResNetConfig(
        stem_width=64,
        depths=(3, 4, 6, 3),
        widths=(256, 512, 1024, 2048),
        strides=(1, 2, 2, 2),
        bottleneck=True,
        num_classes=1000,
        resolution=224,
        stem_type="resnet",
    ),
}


def _build(name: str, norm: str, overrides: dict) -> NFResNet:
    return NFResNet(replace(_cfgs[name], **{"norm": norm, **overrides}))


@register_model
def nf_resnet_tiny(**overrides) -> NFResNet:
    """Tiny NF-ResNet (basic blocks, depths 1-1-1, widths 16-32-64) for 32 px smoke runs."""
    return _build("resnet_tiny", "none", overrides)


@register_model
def bn_resnet_tiny(**overrides) -> NFResNet:
    """BatchNorm twin of ``nf_resnet_tiny``."""
    return _build("resnet_tiny", "batch", overrides)


@register_model
def nf_resnet18_cifar(**overrides) -> NFResNet:
    """NF-ResNet-18 for 32 px inputs."""
    return _build("resnet18_cifar", "none", overrides)


@register_model
def bn_resnet18_cifar(**overrides) -> NFResNet:
    """BatchNorm ResNet-18 for 32 px inputs, the twin of ``nf_resnet18_cifar``."""
    return _build("resnet18_cifar", "batch", overrides)


@register_model
def nf_resnet50(**overrides) -> NFResNet:
    """NF-ResNet-50 (ImageNet, 224 px), the paper's model."""
    return _build("resnet50", "none", overrides)


@register_model
def bn_resnet50(**overrides) -> NFResNet:
    """BatchNorm ResNet-50 v1.5, the twin of ``nf_resnet50``."""
    return _build("resnet50", "batch", overrides)

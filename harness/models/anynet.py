"""AnyNet family: RegNetX/Y and ResNet-50 as stacks of residual bottleneck stages.

Papers: Radosavovic et al., "Designing Network Design Spaces", CVPR 2020
(https://arxiv.org/abs/2003.13678); Dollár et al., "Fast and Accurate Model Scaling", CVPR 2021
(https://arxiv.org/abs/2103.06877). Architecture and conventions follow pycls
(``pycls/models/anynet.py``, ``blocks.py``, ``regnet.py``), with a frozen config instead of a
global one. Complexity of every registered model equals pycls's model-zoo numbers exactly.

Every block has ``__init__``, ``forward`` and a ``complexity`` staticmethod that mirrors
``__init__`` line by line, so ``complexity(cfg)`` needs no model instance.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from harness.complexity import Complexity, Cx
from harness.models._registry import register_model
from harness.models.layers import (
    SE,
    adjust_block_compatibility,
    conv,
    conv2d_cx,
    gap2d_cx,
    init_weights,
    linear_cx,
    norm2d_cx,
    pool2d_cx,
)

__all__ = [
    "MODEL_CFGS",
    "AnyNet",
    "AnyNetConfig",
    "ResBottleneckBlock",
    "SE",
    "regnet_stages",
]

STEM_TYPES = ("simple", "resnet", "cifar")
BLOCK_TYPES = ("res_bottleneck",)


@dataclass(frozen=True)
class AnyNetConfig:
    """One AnyNet: a stem, stages of residual bottleneck blocks, and a pooled linear head.

    Per-stage fields are tuples of equal length (lists are accepted and turned into tuples).
    """

    depths: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # output channels per stage
    strides: tuple[int, ...]  # stride of each stage's first block (on its 3x3 conv)
    group_widths: tuple[int, ...]  # channels per group of the 3x3 conv (groups = w·b / g)
    bottleneck_ratios: tuple[float, ...]  # b: inner width w·b of the bottleneck
    # "simple": 3x3 s2 conv; "resnet": 7x7 s2 conv + 3x3 s2 max pool; "cifar": 3x3 s1 conv
    # (pycls's res_stem_cifar: small inputs keep their full resolution into the first stage)
    stem_type: str = "simple"
    stem_width: int = 32
    se_ratio: float = 0.0  # SE width = round(se_ratio · block INPUT width); 0 disables SE
    block_type: str = "res_bottleneck"
    head_width: int = 0  # >0 adds a 1x1 conv+BN+ReLU before pooling (RegNets use 0)
    num_classes: int = 1000
    resolution: int = 224  # input size the config is meant for; scaling changes it
    in_channels: int = 3
    zero_init_final_bn: bool = False  # pycls BN.ZERO_INIT_FINAL_GAMMA: zero each block's last BN

    def __post_init__(self) -> None:
        for f in ("depths", "widths", "strides", "group_widths", "bottleneck_ratios"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        n = len(self.depths)
        lens = {f: len(getattr(self, f)) for f in ("widths", "strides", "group_widths")}
        lens["bottleneck_ratios"] = len(self.bottleneck_ratios)
        if n == 0 or any(v != n for v in lens.values()):
            raise ValueError(f"per-stage fields need equal, non-zero lengths: depths={n}, {lens}")
        if self.stem_type not in STEM_TYPES:
            raise ValueError(f"unknown stem_type {self.stem_type!r}; allowed: {STEM_TYPES}")
        if self.block_type not in BLOCK_TYPES:
            raise ValueError(f"unknown block_type {self.block_type!r}; allowed: {BLOCK_TYPES}")
        ints = (*self.depths, *self.widths, *self.strides, *self.group_widths)
        if any(int(v) != v or v < 1 for v in ints) or any(b <= 0 for b in self.bottleneck_ratios):
            raise ValueError(f"depths, widths, strides, group widths, ratios must be > 0: {self}")
        for w, b, g in zip(self.widths, self.bottleneck_ratios, self.group_widths, strict=True):
            w_b = int(round(w * b))
            if w_b % g:
                raise ValueError(f"bottleneck width {w}·{b}={w_b} is not divisible by group {g}")
        for f in ("stem_width", "num_classes", "resolution", "in_channels"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.se_ratio < 0 or self.head_width < 0:
            raise ValueError("se_ratio and head_width must be >= 0")


# ------------------------------------------ blocks ------------------------------------------ #


class ResBottleneckBlock(nn.Module):
    """relu(proj(x) + f(x)), f = 1x1, BN, ReLU, 3x3 grouped (stride), BN, ReLU, [SE], 1x1, BN."""

    def __init__(self, w_in: int, w_out: int, stride: int, b: float, g: int, se_r: float):
        super().__init__()
        w_b = int(round(w_out * b))
        w_se = int(round(w_in * se_r))  # pycls: SE width from the block *input* width
        self.proj = self.bn = None
        if w_in != w_out or stride != 1:
            self.proj = conv(w_in, w_out, 1, stride=stride)
            self.bn = nn.BatchNorm2d(w_out)
        self.a = conv(w_in, w_b, 1)
        self.a_bn = nn.BatchNorm2d(w_b)
        self.b = conv(w_b, w_b, 3, stride=stride, groups=w_b // g)
        self.b_bn = nn.BatchNorm2d(w_b)
        self.se = SE(w_b, w_se) if w_se else None
        self.c = conv(w_b, w_out, 1)
        self.c_bn = nn.BatchNorm2d(w_out)
        self.c_bn.final_bn = True  # marks the BN that ZERO_INIT_FINAL_GAMMA zeroes
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.bn(self.proj(x)) if self.proj is not None else x
        y = self.relu(self.a_bn(self.a(x)))
        y = self.relu(self.b_bn(self.b(y)))
        if self.se is not None:
            y = self.se(y)
        y = self.c_bn(self.c(y))
        return self.relu(shortcut + y)

    @staticmethod
    def complexity(cx: Cx, w_in: int, w_out: int, stride: int, b: float, g: int, se_r: float):
        w_b = int(round(w_out * b))
        w_se = int(round(w_in * se_r))
        if w_in != w_out or stride != 1:
            p = conv2d_cx(cx, w_in, w_out, 1, stride=stride)
            cx = dataclasses.replace(norm2d_cx(p, w_out), h=cx.h, w=cx.w)  # branch: keep size
        cx = norm2d_cx(conv2d_cx(cx, w_in, w_b, 1), w_b)
        cx = norm2d_cx(conv2d_cx(cx, w_b, w_b, 3, stride=stride, groups=w_b // g), w_b)
        cx = SE.complexity(cx, w_b, w_se) if w_se else cx
        return norm2d_cx(conv2d_cx(cx, w_b, w_out, 1), w_out)


def _stem(cfg: AnyNetConfig) -> nn.Sequential:
    w = cfg.stem_width
    if cfg.stem_type in ("simple", "cifar"):
        first = conv(cfg.in_channels, w, 3, stride=2 if cfg.stem_type == "simple" else 1)
        return nn.Sequential(first, nn.BatchNorm2d(w), nn.ReLU(inplace=True))
    first = conv(cfg.in_channels, w, 7, stride=2)
    pool = nn.MaxPool2d(3, stride=2, padding=1)
    return nn.Sequential(first, nn.BatchNorm2d(w), nn.ReLU(inplace=True), pool)


def _stem_cx(cx: Cx, cfg: AnyNetConfig) -> Cx:
    w = cfg.stem_width
    if cfg.stem_type in ("simple", "cifar"):
        stride = 2 if cfg.stem_type == "simple" else 1
        return norm2d_cx(conv2d_cx(cx, cfg.in_channels, w, 3, stride=stride), w)
    cx = norm2d_cx(conv2d_cx(cx, cfg.in_channels, w, 7, stride=2), w)
    return pool2d_cx(cx, w, 3, stride=2)


def _stage_args(cfg: AnyNetConfig):
    """(w_in, w_out, stride, b, g) of every block, in order, grouped by stage."""
    w_in = cfg.stem_width
    for d, w, s, b, g in zip(
        cfg.depths, cfg.widths, cfg.strides, cfg.bottleneck_ratios, cfg.group_widths, strict=True
    ):
        yield [(w_in if i == 0 else w, w, s if i == 0 else 1, b, g) for i in range(d)]
        w_in = w


class AnyNet(nn.Module):
    """Stem → stages s1..sN (blocks b1..bd) → head (optional 1x1 conv, avg pool, linear)."""

    def __init__(self, cfg: AnyNetConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = _stem(cfg)
        for i, stage in enumerate(_stage_args(cfg)):
            blocks = {
                f"b{j + 1}": ResBottleneckBlock(*a, cfg.se_ratio) for j, a in enumerate(stage)
            }
            self.add_module(f"s{i + 1}", nn.Sequential(OrderedDict(blocks)))
        w = cfg.widths[-1]
        head: list[nn.Module] = []
        if cfg.head_width > 0:
            head += [conv(w, cfg.head_width, 1), nn.BatchNorm2d(cfg.head_width), nn.ReLU(True)]
            w = cfg.head_width
        head += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(w, cfg.num_classes)]
        self.head = nn.Sequential(*head)
        if not self.head[-1].weight.is_meta:  # nothing to initialise on meta (counting only)
            self.apply(lambda m: init_weights(m, cfg.zero_init_final_bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x

    @staticmethod
    def complexity(cfg: AnyNetConfig) -> Complexity:
        cx = _stem_cx(Cx(cfg.resolution, cfg.resolution), cfg)
        for stage in _stage_args(cfg):
            for args in stage:
                cx = ResBottleneckBlock.complexity(cx, *args, cfg.se_ratio)
        w = cfg.widths[-1]
        if cfg.head_width > 0:
            cx = norm2d_cx(conv2d_cx(cx, w, cfg.head_width, 1), cfg.head_width)
            w = cfg.head_width
        cx = linear_cx(gap2d_cx(cx, w), w, cfg.num_classes, bias=True)
        return cx.totals()


# ------------------------------------- RegNet generator ------------------------------------- #


def regnet_stages(
    w_a: float, w_0: int, w_m: float, depth: int, group_w: int, bot_mul: float = 1.0, q: int = 8
) -> tuple[list[int], list[int], list[int]]:
    """(depths, widths, group widths) of the RegNet with parameters (w_a, w_0, w_m, depth).

    The pycls recipe: continuous widths u_j = w_0 + w_a·j, quantized to w_0·w_m^round(log
    (u_j/w_0)/log w_m) and to multiples of ``q``; blocks of equal width form a stage; then
    group widths and widths are made compatible.
    """
    if not (w_a >= 0 and w_0 > 0 and w_m > 1 and w_0 % q == 0):
        raise ValueError(f"bad RegNet parameters w_a={w_a}, w_0={w_0}, w_m={w_m}, q={q}")
    u = np.arange(depth) * w_a + w_0
    ks = np.round(np.log(u / w_0) / np.log(w_m))
    ws_all = (np.round(w_0 * np.power(w_m, ks) / q) * q).astype(int)
    ws, ds = np.unique(ws_all, return_counts=True)
    n = len(ws)
    widths, _, groups = adjust_block_compatibility(ws.tolist(), [bot_mul] * n, [group_w] * n)
    return [int(d) for d in ds], widths, groups


# ------------------------------------ configs and builders ------------------------------------ #


def _regnet(depths, widths, group_w, se_ratio=0.0, **kw) -> AnyNetConfig:
    n = len(depths)
    return AnyNetConfig(
        depths=depths,
        widths=widths,
        strides=(2,) * n,
        group_widths=(group_w,) * n,
        bottleneck_ratios=(1.0,) * n,
        se_ratio=se_ratio,
        **kw,
    )


MODEL_CFGS: dict[str, AnyNetConfig] = {
    # Stage structures are what regnet_stages() gives for pycls's dds_baselines configs.
    "regnetx_200mf": _regnet((1, 1, 4, 7), (24, 56, 152, 368), 8),
    "regnety_200mf": _regnet((1, 1, 4, 7), (24, 56, 152, 368), 8, se_ratio=0.25),
    "regnetx_4gf": _regnet((2, 5, 14, 2), (80, 240, 560, 1360), 40),
    "regnety_4gf": _regnet((2, 6, 12, 2), (128, 192, 512, 1088), 64, se_ratio=0.25),
    "regnety_16gf": _regnet((2, 4, 11, 1), (224, 448, 1232, 3024), 112, se_ratio=0.25),
    # ResNet-50 as pycls's AnyNet R-50-1x64d: stride on the 3x3 conv, groups = 1.
    "resnet50": AnyNetConfig(
        depths=(3, 4, 6, 3),
        widths=(256, 512, 1024, 2048),
        strides=(1, 2, 2, 2),
        group_widths=(64, 128, 256, 512),
        bottleneck_ratios=(0.25,) * 4,
        stem_type="resnet",
        stem_width=64,
        zero_init_final_bn=True,
    ),
    # Smoke-sized nets for CPU training and timing on 32 px inputs (10 classes).
    "anynet_tiny_x": AnyNetConfig(
        depths=(1, 2, 2),
        widths=(24, 48, 96),
        strides=(1, 2, 2),
        group_widths=(8, 8, 8),
        bottleneck_ratios=(1.0,) * 3,
        stem_width=16,
        num_classes=10,
        resolution=32,
    ),
    "anynet_tiny_y": AnyNetConfig(
        depths=(1, 2, 2),
        widths=(24, 48, 96),
        strides=(1, 2, 2),
        group_widths=(8, 8, 8),
        bottleneck_ratios=(1.0,) * 3,
        stem_width=16,
        se_ratio=0.25,
        num_classes=10,
        resolution=32,
    ),
}


def _create(name: str, **overrides) -> AnyNet:
    """Registered model ``name`` with ``overrides`` replacing fields of its config;
    ``models.config_of``/``models.build_config`` are the public lookups across families."""
    return AnyNet(dataclasses.replace(MODEL_CFGS[name], **overrides))


@register_model
def regnetx_200mf(**overrides) -> AnyNet:
    """RegNetX-200MF (pycls dds_baselines)."""
    return _create("regnetx_200mf", **overrides)


@register_model
def regnety_200mf(**overrides) -> AnyNet:
    """RegNetY-200MF: RegNetX-200MF plus SE (ratio 0.25 of the block input width)."""
    return _create("regnety_200mf", **overrides)


@register_model
def regnetx_4gf(**overrides) -> AnyNet:
    """RegNetX-4.0GF."""
    return _create("regnetx_4gf", **overrides)


@register_model
def regnety_4gf(**overrides) -> AnyNet:
    """RegNetY-4.0GF, the worked-example base in "Fast and Accurate Model Scaling"."""
    return _create("regnety_4gf", **overrides)


@register_model
def regnety_16gf(**overrides) -> AnyNet:
    """RegNetY-16GF."""
    return _create("regnety_16gf", **overrides)


@register_model
def resnet50(**overrides) -> AnyNet:
    """ResNet-50 (1x64d) as an AnyNet, zero-init final BN like pycls's R-50 config."""
    return _create("resnet50", **overrides)


@register_model
def anynet_tiny_x(**overrides) -> AnyNet:
    """Tiny RegNetX-like net for CPU smoke runs: 32 px, 10 classes."""
    return _create("anynet_tiny_x", **overrides)


@register_model
def anynet_tiny_y(**overrides) -> AnyNet:
    """Tiny RegNetY-like net (with SE) for CPU smoke runs: 32 px, 10 classes."""
    return _create("anynet_tiny_y", **overrides)

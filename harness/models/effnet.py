"""EfficientNet family: MBConv stages with SE and SiLU.

Paper: Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019
(https://arxiv.org/abs/1905.11946). Architecture and counting follow pycls
(``pycls/models/effnet.py``), whose EfficientNet-B0 complexity this reproduces exactly.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.complexity import Complexity, Cx
from harness.models._registry import register_model
from harness.models.layers import (
    SE,
    conv,
    conv2d_cx,
    gap2d_cx,
    init_weights,
    linear_cx,
    norm2d_cx,
)

__all__ = [
    "MODEL_CFGS",
    "EffNet",
    "EffNetConfig",
    "MBConv",
]


@dataclass(frozen=True)
class EffNetConfig:
    """One EfficientNet: 3x3 s2 stem, MBConv stages, 1x1 head conv, pool, dropout, linear."""

    depths: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # output channels per stage
    strides: tuple[int, ...]  # stride of each stage's first block (on its depthwise conv)
    kernels: tuple[int, ...]  # depthwise kernel size per stage (odd)
    exp_ratios: tuple[int, ...]  # expansion: inner width = int(w_in · ratio); 1 skips the 1x1
    stem_width: int = 32
    head_width: int = 1280
    se_ratio: float = 0.25  # SE width = int(se_ratio · block INPUT width), as pycls
    dropout: float = 0.0  # before the classifier
    drop_connect: float = 0.0  # stochastic depth on residual branches (training only)
    num_classes: int = 1000
    resolution: int = 224  # input size the config is meant for; scaling changes it
    in_channels: int = 3

    def __post_init__(self) -> None:
        for f in ("depths", "widths", "strides", "kernels", "exp_ratios"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        n = len(self.depths)
        fields = ("widths", "strides", "kernels", "exp_ratios")
        lens = {f: len(getattr(self, f)) for f in fields}
        if n == 0 or any(v != n for v in lens.values()):
            raise ValueError(f"per-stage fields need equal, non-zero lengths: depths={n}, {lens}")
        ints = (*self.depths, *self.widths, *self.strides, *self.kernels)
        if any(int(v) != v or v < 1 for v in ints) or any(e <= 0 for e in self.exp_ratios):
            raise ValueError(f"depths, widths, strides, kernels, exp ratios must be > 0: {self}")
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError(f"kernels must be odd ('same' padding), got {self.kernels}")
        for f in ("stem_width", "head_width", "num_classes", "resolution", "in_channels"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if not (0 <= self.dropout < 1 and 0 <= self.drop_connect < 1 and self.se_ratio >= 0):
            raise ValueError("dropout, drop_connect must be in [0, 1) and se_ratio >= 0")


def _drop_connect(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero whole samples of the residual branch with probability p, rescale the rest."""
    keep = 1.0 - p
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MBConv(nn.Module):
    """[1x1 expand, BN, SiLU], kxk depthwise (stride), BN, SiLU, SE, 1x1 project, BN, [+x]."""

    def __init__(
        self,
        w_in: int,
        exp_r: float,
        k: int,
        stride: int,
        se_r: float,
        w_out: int,
        drop_connect: float = 0.0,
    ):
        super().__init__()
        w_exp = int(w_in * exp_r)
        w_se = int(w_in * se_r)  # pycls: int(), from the block *input* width
        self.exp = None
        if w_exp != w_in:
            self.exp = conv(w_in, w_exp, 1)
            self.exp_bn = nn.BatchNorm2d(w_exp)
        self.dwise = conv(w_exp, w_exp, k, stride=stride, groups=w_exp)
        self.dwise_bn = nn.BatchNorm2d(w_exp)
        self.se = SE(w_exp, w_se, act=nn.SiLU) if w_se else None
        self.lin_proj = conv(w_exp, w_out, 1)
        self.lin_proj_bn = nn.BatchNorm2d(w_out)
        self.act = nn.SiLU()
        self.has_skip = stride == 1 and w_in == w_out
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.act(self.exp_bn(self.exp(x))) if self.exp is not None else x
        f = self.act(self.dwise_bn(self.dwise(f)))
        f = self.se(f) if self.se is not None else f
        f = self.lin_proj_bn(self.lin_proj(f))
        if self.has_skip:
            if self.training and self.drop_connect > 0:
                f = _drop_connect(f, self.drop_connect)
            f = x + f
        return f

    @staticmethod
    def complexity(cx: Cx, w_in: int, exp_r: float, k: int, stride: int, se_r: float, w_out: int):
        w_exp = int(w_in * exp_r)
        w_se = int(w_in * se_r)
        if w_exp != w_in:
            cx = norm2d_cx(conv2d_cx(cx, w_in, w_exp, 1), w_exp)
        cx = norm2d_cx(conv2d_cx(cx, w_exp, w_exp, k, stride=stride, groups=w_exp), w_exp)
        cx = SE.complexity(cx, w_exp, w_se) if w_se else cx
        return norm2d_cx(conv2d_cx(cx, w_exp, w_out, 1), w_out)


def _block_args(cfg: EffNetConfig):
    """(w_in, exp_r, k, stride, w_out) of every block, grouped by stage."""
    w_in = cfg.stem_width
    for d, w, s, k, e in zip(
        cfg.depths, cfg.widths, cfg.strides, cfg.kernels, cfg.exp_ratios, strict=True
    ):
        yield [(w_in if i == 0 else w, e, k, s if i == 0 else 1, w) for i in range(d)]
        w_in = w


class EffNet(nn.Module):
    """Stem → stages s1..sN (blocks b1..bd) → head."""

    def __init__(self, cfg: EffNetConfig):
        super().__init__()
        self.cfg = cfg
        sw, hw = cfg.stem_width, cfg.head_width
        self.stem = nn.Sequential(
            conv(cfg.in_channels, sw, 3, stride=2), nn.BatchNorm2d(sw), nn.SiLU()
        )
        for i, stage in enumerate(_block_args(cfg)):
            blocks = {
                f"b{j + 1}": MBConv(w_in, e, k, s, cfg.se_ratio, w_out, cfg.drop_connect)
                for j, (w_in, e, k, s, w_out) in enumerate(stage)
            }
            self.add_module(f"s{i + 1}", nn.Sequential(OrderedDict(blocks)))
        self.head = nn.Sequential(
            conv(cfg.widths[-1], hw, 1),
            nn.BatchNorm2d(hw),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Dropout(cfg.dropout),
            nn.Linear(hw, cfg.num_classes),
        )
        if not self.head[-1].weight.is_meta:  # nothing to initialise on meta (counting only)
            self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x

    @staticmethod
    def complexity(cfg: EffNetConfig) -> Complexity:
        sw, hw = cfg.stem_width, cfg.head_width
        cx = Cx(cfg.resolution, cfg.resolution)
        cx = norm2d_cx(conv2d_cx(cx, cfg.in_channels, sw, 3, stride=2), sw)
        for stage in _block_args(cfg):
            for w_in, e, k, s, w_out in stage:
                cx = MBConv.complexity(cx, w_in, e, k, s, cfg.se_ratio, w_out)
        cx = norm2d_cx(conv2d_cx(cx, cfg.widths[-1], hw, 1), hw)
        cx = linear_cx(gap2d_cx(cx, hw), hw, cfg.num_classes, bias=True)
        return cx.totals()


MODEL_CFGS: dict[str, EffNetConfig] = {
    # pycls dds_baselines EN-B0 (pycls trains it without dropout; the paper uses 0.2).
    "efficientnet_b0": EffNetConfig(
        depths=(1, 2, 2, 3, 3, 4, 1),
        widths=(16, 24, 40, 80, 112, 192, 320),
        strides=(1, 2, 2, 2, 1, 2, 1),
        kernels=(3, 3, 5, 3, 5, 5, 3),
        exp_ratios=(1, 6, 6, 6, 6, 6, 6),
        stem_width=32,
        head_width=1280,
        dropout=0.2,
    ),
    # Smoke-sized: 32 px, 10 classes, a few tens of K params.
    "effnet_tiny": EffNetConfig(
        depths=(1, 2, 2),
        widths=(16, 24, 40),
        strides=(1, 2, 2),
        kernels=(3, 3, 5),
        exp_ratios=(1, 4, 4),
        stem_width=16,
        head_width=128,
        num_classes=10,
        resolution=32,
    ),
}


def _create(name: str, **overrides) -> EffNet:
    """Registered model ``name`` with ``overrides`` replacing fields of its config;
    ``models.config_of``/``models.build_config`` are the public lookups across families."""
    return EffNet(dataclasses.replace(MODEL_CFGS[name], **overrides))


@register_model
def efficientnet_b0(**overrides) -> EffNet:
    """EfficientNet-B0 (224 px)."""
    return _create("efficientnet_b0", **overrides)


@register_model
def effnet_tiny(**overrides) -> EffNet:
    """Tiny EfficientNet for CPU smoke runs: 32 px, 10 classes."""
    return _create("effnet_tiny", **overrides)

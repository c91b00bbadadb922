"""Building blocks shared by the model families (pycls-style: complexity beside each module).

``conv`` (odd kernels, same padding: h' = (h-1)//stride + 1, as the counters assume) and the
per-layer analytic counts (``conv2d_cx``, ``norm2d_cx``, ``pool2d_cx``, ``gap2d_cx``,
``linear_cx``), ``SE``
(squeeze-and-excitation), ``init_weights`` (pycls's init) and ``adjust_block_compatibility``
(pycls's rule that makes widths, bottleneck ratios and group widths fit together).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn as nn

from harness.complexity import Cx


def conv(w_in: int, w_out: int, k: int, *, stride: int = 1, groups: int = 1, bias: bool = False):
    """A conv with (k-1)//2 padding (bias off unless asked)."""
    # Odd kernels with (k-1)//2 padding give h' = (h-1)//stride + 1, which the counters assume.
    return nn.Conv2d(w_in, w_out, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=bias)


# Each layer's analytic count (pycls's ``*_cx``), beside the layer it counts: the model files
# compute flops, params and acts from a config alone; tests/models/test_layers.py checks each
# against the hook counter on the built layer.

def conv2d_cx(
    cx: Cx, w_in: int, w_out: int, k: int, *, stride: int = 1, groups: int = 1, bias: bool = False
) -> Cx:
    """A k×k conv with 'same' padding (k odd), as built by the model files."""
    h, w = (cx.h - 1) // stride + 1, (cx.w - 1) // stride + 1
    return Cx(
        h,
        w,
        cx.flops + k * k * w_in * w_out * h * w // groups + (w_out * h * w if bias else 0),
        cx.params + k * k * w_in * w_out // groups + (w_out if bias else 0),
        cx.acts + w_out * h * w,
    )


def norm2d_cx(cx: Cx, w_in: int) -> Cx:
    """BatchNorm: 2·C params (gamma, beta); running stats are buffers, not params."""
    return dataclasses.replace(cx, params=cx.params + 2 * w_in)


def pool2d_cx(cx: Cx, w_in: int, k: int, *, stride: int = 1) -> Cx:
    """Max pool with 'same' padding: only its output counts, as acts."""
    h, w = (cx.h - 1) // stride + 1, (cx.w - 1) // stride + 1
    return Cx(h, w, cx.flops, cx.params, cx.acts + w_in * h * w)


def gap2d_cx(cx: Cx, w_in: int) -> Cx:
    """Global average pool: free, output is 1×1."""
    return dataclasses.replace(cx, h=1, w=1)


def linear_cx(cx: Cx, w_in: int, w_out: int, *, bias: bool = False) -> Cx:
    """A linear layer on one location."""
    return Cx(
        cx.h,
        cx.w,
        cx.flops + w_in * w_out + (w_out if bias else 0),
        cx.params + w_in * w_out + (w_out if bias else 0),
        cx.acts + w_out,
    )


class SE(nn.Module):
    """Squeeze-and-excitation: x · sigmoid(conv1x1(act(conv1x1(avgpool(x)))))."""

    def __init__(self, w_in: int, w_se: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.f_ex = nn.Sequential(
            conv(w_in, w_se, 1, bias=True), act(), conv(w_se, w_in, 1, bias=True), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f_ex(self.avg_pool(x))

    @staticmethod
    def complexity(cx: Cx, w_in: int, w_se: int) -> Cx:
        h, w = cx.h, cx.w  # the excitation runs on 1x1; the map size is unchanged afterwards
        cx = gap2d_cx(cx, w_in)
        cx = conv2d_cx(cx, w_in, w_se, 1, bias=True)
        cx = conv2d_cx(cx, w_se, w_in, 1, bias=True)
        return dataclasses.replace(cx, h=h, w=w)


def init_weights(m: nn.Module, zero_init_final_bn: bool = False) -> None:
    """pycls init: conv N(0, √(2/fan_out)), BN γ=1 (0 on final BNs if asked) β=0, fc N(0, .01)."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
    elif isinstance(m, nn.BatchNorm2d):
        zero = zero_init_final_bn and getattr(m, "final_bn", False)
        nn.init.constant_(m.weight, 0.0 if zero else 1.0)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, mean=0.0, std=0.01)
        nn.init.zeros_(m.bias)


def adjust_block_compatibility(ws, bs, gs) -> tuple[list[int], list[float], list[int]]:
    """Make widths, bottleneck ratios and group widths compatible (pycls's rule).

    The group width is clipped to the bottleneck width w·b, then w·b is rounded to a multiple of
    the group width (of lcm(g, b) for integer b > 1) so that groups = w·b / g is an integer.
    """
    if not len(ws) == len(bs) == len(gs):
        raise ValueError(f"need equal lengths, got {len(ws)}, {len(bs)}, {len(gs)}")
    if not all(w > 0 and b > 0 and g > 0 for w, b, g in zip(ws, bs, gs, strict=True)):
        raise ValueError(f"widths, ratios, groups must be > 0: {ws}, {bs}, {gs}")
    if not all(b < 1 or b % 1 == 0 for b in bs):
        raise ValueError(f"bottleneck ratios must be < 1 or integers: {bs}")
    vs = [int(max(1, w * b)) for w, b in zip(ws, bs, strict=True)]
    gs = [int(min(g, v)) for g, v in zip(gs, vs, strict=True)]
    ms = [int(np.lcm(g, int(b))) if b > 1 else g for g, b in zip(gs, bs, strict=True)]
    vs = [max(m, int(round(v / m) * m)) for v, m in zip(vs, ms, strict=True)]
    ws = [int(v / b) for v, b in zip(vs, bs, strict=True)]
    return ws, list(bs), gs

"""Each layer's analytic count (``harness.models.layers.*_cx``) equals the hook counter's on the
layer it describes, for any shape: the model files' config-only complexity rests on these."""

from __future__ import annotations

import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.complexity import Complexity, Cx, measure
from harness.models.layers import (
    conv,
    conv2d_cx,
    gap2d_cx,
    linear_cx,
    norm2d_cx,
    pool2d_cx,
)

sizes = st.integers(1, 12)
channels = st.integers(1, 8)


def counted(layer: nn.Module, res: int, w_in: int) -> Complexity:
    with torch.device("meta"):
        return measure(layer, res, in_channels=w_in)


@settings(max_examples=40, deadline=None)
@given(res=sizes, w_in=channels, w_out=channels, k=st.sampled_from([1, 3, 5]),
       stride=st.integers(1, 3), grouped=st.booleans(), bias=st.booleans())
def test_conv2d_cx_counts_the_conv_the_models_build(res, w_in, w_out, k, stride, grouped, bias):
    groups = w_in if grouped and w_out % w_in == 0 else 1
    with torch.device("meta"):
        layer = conv(w_in, w_out, k, stride=stride, groups=groups, bias=bias)
    cx = conv2d_cx(Cx(res, res), w_in, w_out, k, stride=stride, groups=groups, bias=bias)
    assert cx.totals() == counted(layer, res, w_in)
    assert (cx.h, cx.w) == ((res - 1) // stride + 1,) * 2


@settings(max_examples=20, deadline=None)
@given(res=sizes, w=channels)
def test_norm_gap_and_pool_count_as_the_hooks_do(res, w):
    assert norm2d_cx(Cx(res, res), w).totals() == counted(nn.BatchNorm2d(w), res, w)
    assert gap2d_cx(Cx(res, res), w).totals() == counted(nn.AdaptiveAvgPool2d(1), res, w)
    pool = nn.MaxPool2d(3, stride=2, padding=1)
    assert pool2d_cx(Cx(res, res), w, 3, stride=2).totals() == counted(pool, res, w)


@settings(max_examples=20, deadline=None)
@given(w_in=channels, w_out=channels, bias=st.booleans())
def test_linear_cx_counts_a_linear_layer_on_one_location(w_in, w_out, bias):
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w_in, w_out, bias=bias))
    cx = linear_cx(gap2d_cx(Cx(4, 4), w_in), w_in, w_out, bias=bias)
    assert cx.totals() == counted(head, 4, w_in)

"""Model complexity (flops, params, acts) counted the pycls way.

Conventions (Radosavovic et al. 2020; Dollár et al., "Fast and Accurate Model Scaling", 2021):

- **flops** are multiply-adds (no factor 2). A conv adds k²·c_in·c_out·h'·w'/g, plus c_out·h'·w'
  for a bias; a linear layer adds c_in·c_out, plus c_out for a bias.
- **params** are all ``nn.Parameter`` elements (for conv/linear/BN nets: weights, biases and 2·C
  per BatchNorm).
- **acts** are the output elements of every Conv2d and Linear layer, plus MaxPool outputs.
  BN, activations, residual adds, the SE multiply and global pooling count nothing.

``measure`` counts with forward hooks on a batch-1 input. Build big models under
``with torch.device("meta"):`` and counting is instant: no memory is allocated and no arithmetic
runs. ``independent_flops`` is a cross-check with PyTorch's own ``FlopCounterMode``.

``Cx`` is the running state of a pycls-style analytic count from a config alone; the per-layer
steps (``conv2d_cx`` …) sit beside the layers they count, in ``harness/models/layers.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "Complexity",
    "Cx",
    "LayerCount",
    "independent_flops",
    "layer_counts",
    "measure",
]


@dataclass(frozen=True)
class Complexity:
    """Totals for one network at one resolution (batch 1)."""

    flops: int  # multiply-adds
    params: int  # parameter elements
    acts: int  # output elements of conv, linear and max-pool layers

    def ratio(self, base: Complexity) -> tuple[float, float, float]:
        """(flops, params, acts) of ``self`` divided by those of ``base``."""
        return (self.flops / base.flops, self.params / base.params, self.acts / base.acts)


@dataclass(frozen=True)
class LayerCount:
    """What one counted layer contributes; ``bias_flops`` is included in ``flops``."""

    name: str
    kind: str  # "conv", "linear" or "maxpool"
    out_shape: tuple[int, ...]
    flops: int
    bias_flops: int
    acts: int


def _check_resolution(resolution: int, in_channels: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels <= 0:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _dummy_input(model: nn.Module, resolution: int, in_channels: int) -> torch.Tensor:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.zeros(
        1, in_channels, resolution, resolution, device=_model_device(model), dtype=dtype
    )


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def layer_counts(model: nn.Module, resolution: int, in_channels: int = 3) -> list[LayerCount]:
    """Per-layer flops and acts of every Conv2d, Linear and MaxPool2d call, in call order.

    Runs one forward pass in eval mode on a batch-1 zero input on the model's device (``meta``
    is fine), then restores the train/eval flags. A layer called twice is listed twice.
    """
    _check_resolution(resolution, in_channels)
    records: list[LayerCount] = []

    def hook(name: str):
        def fn(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            out_numel = output.numel()  # batch 1: this is c_out·h'·w' (or c_out)
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs = out_numel * kh * kw * module.in_channels // module.groups
                bias = out_numel if module.bias is not None else 0
                kind = "conv"
            elif isinstance(module, nn.Linear):
                # Leading dims beyond the batch (tokens) multiply the cost, as in pycls.
                macs = out_numel * module.in_features
                bias = out_numel if module.bias is not None else 0
                kind = "linear"
            else:
                macs, bias, kind = 0, 0, "maxpool"
            records.append(
                LayerCount(name, kind, tuple(output.shape), macs + bias, bias, out_numel)
            )

        return fn

    # Eval mode: same shapes, BN running statistics stay untouched, and BN on ``meta`` is cheaper.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    # On ``meta`` batch norm runs a slow Python decomposition; it preserves shape and counts
    # nothing, so skip it there (instance attribute, removed again below).
    skipped = []
    if _model_device(model).type == "meta":
        skipped = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in skipped:
            m.forward = _identity
    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d))
    ]
    try:
        with torch.no_grad():
            model(_dummy_input(model, resolution, in_channels))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        for m in skipped:
            del m.forward
    return records


def measure(model: nn.Module, resolution: int, in_channels: int = 3) -> Complexity:
    """pycls-convention complexity of ``model`` on a 1×``in_channels``×r×r input.

    Works on real CPU/GPU models and on models built on the ``meta`` device.
    """
    layers = layer_counts(model, resolution, in_channels)
    # Count every parameter once (shared parameters are yielded once by .parameters()).
    params = sum(p.numel() for p in model.parameters())
    return Complexity(
        flops=sum(r.flops for r in layers),
        params=params,
        acts=sum(r.acts for r in layers),
    )


def independent_flops(model: nn.Module, resolution: int, in_channels: int = 3) -> int:
    """Flops from ``torch.utils.flop_counter.FlopCounterMode`` (2·MACs, biases not counted).

    So ``independent_flops / 2 == measure().flops - sum of bias_flops`` for conv/linear nets.
    """
    _check_resolution(resolution, in_channels)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(_dummy_input(model, resolution, in_channels))
    return int(counter.get_total_flops())


# ------------------------------ analytic (pycls-style) counting ------------------------------ #


@dataclass(frozen=True)
class Cx:
    """Running state of an analytic count: current feature map size and totals so far."""

    h: int
    w: int
    flops: int = 0
    params: int = 0
    acts: int = 0

    def totals(self) -> Complexity:
        return Complexity(self.flops, self.params, self.acts)

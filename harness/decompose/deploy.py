"""What compression buys at deployment, measured: ratios timed in one run with
``harness.timing`` (claims ``deploy.*``, claims/README.md section 4).

- ``pruning_costs``: unstructured L1 pruning at several sparsities: dense inference time, the
  size ``torch.save`` writes, and the gzip-compressed size, each over the unpruned model's.
- ``depthwise_grid``: a depthwise-separable block (3×3 depthwise + 1×1 pointwise) against the
  standard 3×3 conv it replaces, over channels × map sizes: flops ratio and time ratio per cell;
  ``depthwise_doubling``: whether each cell's timing was dispatch-bound.
- ``precision_speedup``: inference time in a lower precision over fp32 (fp16/bf16).
- ``decomposed_speedup``: a decomposed network's flops saving against its wall-clock saving.

Every timing runs in the ``TimingSetup`` given: ``DeployConfig.setup`` carries the profile's
precision (``amp``, CUDA only) and layout (``channels_last``, CUDA only), so on a GPU the
networks are timed as they would be deployed; on the CPU in fp32 NCHW.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import io

import pandas as pd
import torch
import torch.nn as nn

from harness import timing
from harness.complexity import measure


def saved_sizes(model: nn.Module) -> tuple[int, int]:
    """(bytes of ``torch.save(state_dict)``, bytes of that file gzip-compressed)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    raw = buf.getvalue()
    return len(raw), len(gzip.compress(raw, compresslevel=6))


def prune_all(model: nn.Module, sparsity: float) -> nn.Module:
    """A copy with ``sparsity`` of each conv and linear weight zeroed, layer by layer: in every
    such layer separately, the ``sparsity`` fraction of its weight entries smallest in
    magnitude (``torch.nn.utils.prune.l1_unstructured`` per module, made permanent; not a
    global threshold across layers, so every layer ends at the same sparsity). Biases and
    other parameters are kept."""
    from torch.nn.utils import prune

    pruned = copy.deepcopy(model)
    if sparsity > 0:
        for m in pruned.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                prune.l1_unstructured(m, "weight", amount=sparsity)
                prune.remove(m, "weight")
    return pruned


def pruning_costs(model: nn.Module, sparsities: tuple[float, ...], batch: int, resolution: int,
                  setup: timing.TimingSetup, rounds: int = 3) -> pd.DataFrame:
    """One row per sparsity: inference time, saved and gzip sizes, each over the dense model's
    (the time ratio: fastest block over fastest block across ``rounds`` interleaved
    dense/pruned pairs, ``timing.RatioSummary.best``; low/high: the rounds' median ratios)."""
    dense_raw, dense_gz = saved_sizes(model)
    rows = []
    for sparsity in sparsities:
        pruned = prune_all(model, sparsity)
        raw, gz = saved_sizes(pruned)
        ratio = timing.inference_ratio(model, pruned, batch, resolution, setup, rounds)
        rows.append(dict(sparsity=sparsity, time_ratio=ratio.best, time_low=ratio.low,
                         time_high=ratio.high,
                         saved_ratio=raw / dense_raw, gzip_ratio=gz / dense_gz,
                         saved_bytes=raw, gzip_bytes=gz))
    return pd.DataFrame(rows)


def depthwise_separable(channels: int) -> nn.Sequential:
    """3×3 depthwise then 1×1 pointwise: what replaces a standard 3×3 conv C → C."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels,
                                   bias=False),
                         nn.Conv2d(channels, channels, 1, bias=False))


def _depthwise_pair(channels: int) -> tuple[nn.Conv2d, nn.Sequential]:
    """The grid's two modules at ``channels``, seeded: the 3×3 conv and its separable block
    (``depthwise_doubling`` times the same weights as ``depthwise_grid``)."""
    torch.manual_seed(0)
    return nn.Conv2d(channels, channels, 3, padding=1, bias=False), depthwise_separable(channels)


def depthwise_grid(channels: tuple[int, ...], sizes: tuple[int, ...], batch: int,
                   setup: timing.TimingSetup, rounds: int = 1) -> pd.DataFrame:
    """Per (channels, map size): flops and time of the depthwise-separable block over the
    standard conv's. A time ratio below 1 means the separable block is faster."""
    rows = []
    for c in channels:
        standard, separable = _depthwise_pair(c)
        for size in sizes:
            f_std = measure(standard, size, c).flops
            f_sep = measure(separable, size, c).flops
            ratio = timing.inference_ratio(standard, separable, batch, size, setup, rounds,
                                           in_channels=c)
            rows.append(dict(channels=c, size=size, flops_ratio=f_sep / f_std,
                             time_ratio=ratio.best))
    return pd.DataFrame(rows)


def depthwise_doubling(channels: tuple[int, ...], sizes: tuple[int, ...], batch: int,
                       setup: timing.TimingSetup) -> pd.DataFrame:
    """Per cell of ``depthwise_grid``: t(2B)/t(B) (``timing.batch_doubling_ratio``) of the
    standard conv and of the separable block, the smaller (``doubling``) and whether the cell's
    timing was dispatch-bound (``timing.dispatch_bound``): then its time ratio follows kernel
    launches (two for the block, one for the conv), not the layers' work. A separate pass
    after the grid, so that the grid's ratios are timed as they were."""
    rows = []
    for c in channels:
        standard, separable = _depthwise_pair(c)
        for size in sizes:
            per = [timing.batch_doubling_ratio(
                lambda b, m=m, s=size, c=c: timing.time_inference(m, b, s, setup, in_channels=c),
                batch) for m in (standard, separable)]
            rows.append(dict(channels=c, size=size, doubling_standard=per[0],
                             doubling_separable=per[1], doubling=min(per),
                             dispatch_bound=timing.dispatch_bound(min(per))))
    return pd.DataFrame(rows)


def crossover(grid: pd.DataFrame) -> pd.DataFrame:
    """Per map size, the smallest channel count from which the separable block is faster
    (time ratio < 1 there and at every larger count); NaN when it never is."""
    rows = []
    for size, grp in grid.sort_values("channels").groupby("size"):
        faster = (grp.time_ratio < 1).tolist()
        first = next((c for i, c in enumerate(grp.channels) if all(faster[i:])), float("nan"))
        rows.append(dict(size=size, faster_from_channels=first))
    return pd.DataFrame(rows)


def precision_speedup(model: nn.Module, batch: int, resolution: int, dtype: torch.dtype,
                      setup: timing.TimingSetup) -> float:
    """fp32 inference time over inference time in ``dtype`` (a copy cast once): > 1 is a
    speed-up. Both in ``setup``'s layout; the fp32 side in fp32 whatever precision ``setup``
    carries. Each side's fastest block (``timing.Timing.best``)."""
    fp32 = timing.time_inference(model, batch, resolution,
                                 dataclasses.replace(setup, amp_dtype=None)).best
    low = timing.time_inference(model, batch, resolution,
                                dataclasses.replace(setup, amp_dtype=dtype)).best
    return fp32 / low


@dataclasses.dataclass(frozen=True)
class FlopsVsTime:
    flops_ratio: float  # decomposed over original
    time_ratio: float


def decomposed_speedup(original: nn.Module, decomposed: nn.Module, batch: int, resolution: int,
                       setup: timing.TimingSetup, rounds: int = 3) -> FlopsVsTime:
    """Flops of the decomposed network over the original's, and its inference time over the
    original's (fastest over fastest across ``rounds`` interleaved pairs)."""
    f0, f1 = measure(original, resolution).flops, measure(decomposed, resolution).flops
    ratio = timing.inference_ratio(original, decomposed, batch, resolution, setup, rounds)
    return FlopsVsTime(f1 / f0, ratio.best)

"""harness.decompose.deploy: the deployment measurements return sane ratios on tiny inputs, and
the quantities that are exact (sizes, flops, the crossover rule) are checked exactly."""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn as nn

from harness import timing
from harness.complexity import measure
from harness.decompose import DecomposeSettings, decompose_model, deploy

QUICK = timing.TimingSetup(min_run_time=0.01, warmup=1)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_pruning_keeps_the_saved_size_but_shrinks_the_compressed_one():
    model = net()
    table = deploy.pruning_costs(model, (0.0, 0.9), batch=2, resolution=8, setup=QUICK,
                                 rounds=1)
    dense, sparse = table.iloc[0], table.iloc[1]
    assert dense.saved_ratio == 1 and dense.gzip_ratio == 1
    assert abs(sparse.saved_ratio - 1) < 0.01  # zeros are stored like any float
    assert sparse.gzip_ratio < 0.5  # ...but compress
    assert table.time_ratio.gt(0).all()
    pruned = deploy.prune_all(model, 0.9)
    w = pruned[2].weight
    assert abs(float((w == 0).float().mean()) - 0.9) < 0.01
    assert not (model[2].weight == 0).any()  # the input is untouched


def test_the_depthwise_grid_counts_flops_exactly_and_finds_the_crossover():
    grid = deploy.depthwise_grid((4, 16), (4, 8), batch=2, setup=QUICK)
    assert len(grid) == 4 and set(grid.columns) >= {"flops_ratio", "time_ratio"}
    for row in grid.itertuples():  # 9c + c² multiply-adds over 9c² per position
        assert abs(row.flops_ratio - (9 * row.channels + row.channels ** 2)
                   / (9 * row.channels ** 2)) < 1e-9
    made_up = pd.DataFrame([dict(channels=c, size=8, time_ratio=r) for c, r in
                            ((8, 1.4), (32, 0.9), (64, 1.1), (128, 0.8), (256, 0.5))])
    assert deploy.crossover(made_up).faster_from_channels.tolist() == [128]
    never = made_up.assign(time_ratio=2.0)
    assert deploy.crossover(never).faster_from_channels.isna().all()


def test_precision_and_decomposition_speedups_are_ratios_of_timings():
    model = net()
    assert deploy.precision_speedup(model, 2, 8, torch.bfloat16, QUICK) > 0
    small, _ = decompose_model(model, DecomposeSettings(1.0, "energy", 0.5), resolution=8,
                               force=True)
    out = deploy.decomposed_speedup(model, small, 2, 8, QUICK, rounds=1)
    assert out.flops_ratio == measure(small, 8).flops / measure(model, 8).flops
    assert out.flops_ratio < 1 and out.time_ratio > 0

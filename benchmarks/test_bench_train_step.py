"""Training-step throughput of a smoke model: the baseline for speed-regression gating. The step
is the loop's own (``train.make_step``), the one ``train`` runs for every batch.

Run with ``nox -s bench``; gate a change with ``nox -s bench -- --compare`` (this machine's
baseline) or ``nox -s bench_ab -- origin/main`` (both trees in one job).
"""

from __future__ import annotations

import pytest
import torch

from harness import models
from harness.train import TrainConfig, make_step

BATCH, RES = 32, 32


@pytest.fixture
def step_fn():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # fixed, so runs on the same machine compare
    model = models.build("anynet_tiny_y").train()
    x = torch.randn(BATCH, 3, RES, RES)
    y = torch.randint(0, 10, (BATCH,))
    step = make_step(model, TrainConfig(lr=0.01))
    return lambda: step(x, y)


def test_train_step_throughput(benchmark, step_fn):
    benchmark.group = "train-step"
    result = benchmark.pedantic(step_fn, warmup_rounds=3, rounds=20, iterations=1)
    del result
    benchmark.extra_info["images_per_second"] = BATCH / benchmark.stats.stats.median
    benchmark.extra_info["model"] = "anynet_tiny_y"
    benchmark.extra_info["batch"] = BATCH

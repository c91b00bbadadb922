"""Inference and training step of scaled models: a tiny RegNetY-like base scaled 4x in flops
by width alone (w) and by the fast compound rule (dWr), as the scaling claims build them.
The training step is the loop's own (``train.make_step``). Fast enough to be the A/B gate's
default subset (``nox -s bench_ab``)."""

from __future__ import annotations

import pytest
import torch

from harness import models
from harness.scaling import scale
from harness.timing import bench_device
from harness.train import TrainConfig, make_step

BASE = models.config_of("anynet_tiny_y", stem_type="cifar", depths=(1, 2, 4),
                        widths=(16, 32, 64), resolution=16)
DEVICE = bench_device()
BATCH = 128 if DEVICE == "cuda" else 16


def scaled(strategy: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    cfg = scale(BASE, 4, strategy)
    model = models.build_config(cfg).to(DEVICE)
    x = torch.randn(BATCH, 3, cfg.resolution, cfg.resolution, device=DEVICE)
    y = torch.randint(0, cfg.num_classes, (BATCH,), device=DEVICE)
    return model, x, y


@pytest.mark.parametrize("strategy", ["w", "dWr"])
def test_inference_of_scaled_model(bench, benchmark, strategy):
    model, x, _ = scaled(strategy)
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    benchmark.group = "scaled-inference"
    benchmark.extra_info.update({"base": "anynet_tiny_y (cifar stem, 1-2-4, 16-32-64, 16 px)",
                                 "strategy": strategy, "s": 4, "batch": BATCH})
    bench(forward, DEVICE)


@pytest.mark.parametrize("strategy", ["w", "dWr"])
def test_train_step_of_scaled_model(bench, benchmark, strategy):
    model, x, y = scaled(strategy)
    model.train()
    one_step = make_step(model, TrainConfig(lr=1e-3), DEVICE)

    def step() -> None:
        one_step(x, y)

    benchmark.group = "scaled-train-step"
    benchmark.extra_info.update({"strategy": strategy, "s": 4, "batch": BATCH})
    bench(step, DEVICE)

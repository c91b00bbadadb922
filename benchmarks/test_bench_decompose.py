"""A Tucker-2-decomposed network against its original: inference of the smoke study's VGG
(16-32-32-64-64 channels, 16 px) with every k×k conv decomposed at kept-energy ranks (0.5),
and the decomposition itself (VBMF ranks + partial_tucker on every conv), which the claims run
per layer many times."""

from __future__ import annotations

import pytest
import torch

from harness import models
from harness.decompose import DecomposeSettings, decompose_model
from harness.timing import bench_device

DEVICE = bench_device()
BATCH = 256 if DEVICE == "cuda" else 32


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("vgg_tiny", stages=((16,), (32, 32), (64, 64)), resolution=16).eval()


@pytest.mark.parametrize("variant", ["original", "decomposed"])
def test_inference_of_decomposed_network(bench, benchmark, variant):
    net = network()
    if variant == "decomposed":
        net, _ = decompose_model(net, DecomposeSettings(1.0, "energy", keep=0.5), 16, force=True)
    net = net.to(DEVICE).eval()
    x = torch.randn(BATCH, 3, 16, 16, device=DEVICE)

    def forward() -> None:
        with torch.no_grad():
            net(x)

    benchmark.group = "decomposed-inference"
    benchmark.extra_info.update({"variant": variant, "batch": BATCH, "ranks": "energy 0.5"})
    bench(forward, DEVICE)


def test_decomposing_a_network(bench, benchmark):
    net = network()
    settings = DecomposeSettings(0.1, "vbmf")
    benchmark.group = "decompose"
    bench(lambda: decompose_model(net, settings, 16, force=True), "cpu", rounds=5, warmup=1)

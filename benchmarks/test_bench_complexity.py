"""Complexity counting of a large model: RegNetY-16GF (16 GF, 84M parameters) at 224 px,
built on the meta device and counted with hooks, as the scaling claims count every network."""

from __future__ import annotations

from harness import models


def test_complexity_count_of_regnety_16gf(bench, benchmark):
    cfg = models.config_of("regnety_16gf")
    counted = []
    benchmark.group = "complexity"
    bench(lambda: counted.append(models.measure_config(cfg)), "cpu", rounds=5, warmup=1)
    cx = counted[-1]
    assert cx.flops == 15_911_534_044  # the count itself, not its speed (pycls: 15.9 GF)
    benchmark.extra_info.update({"flops": cx.flops, "params": cx.params, "acts": cx.acts})

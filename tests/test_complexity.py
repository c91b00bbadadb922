"""The pycls-convention complexity counter against pycls's model-zoo table and FlopCounterMode."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from harness.complexity import Complexity, independent_flops, layer_counts, measure
from harness.models import analytic_complexity, anynet, build, config_of, effnet, measure_config
from harness.scaling import scale

ZOO = json.loads((Path(__file__).parent / "fixtures" / "pycls_model_zoo.json").read_text())
Counter = Callable[[nn.Module, int], Complexity]


def _meta(name: str, **overrides) -> nn.Module:
    with torch.device("meta"):
        return build(name, **overrides)


def compare_with_pycls(counter: Counter, rel_tol: float = ZOO["rel_tol"]) -> list[str]:
    """Mismatches between ``counter`` and the pycls table, one line per metric off by > rel_tol."""
    bad = []
    for name, row in ZOO["models"].items():
        got = counter(_meta(name), ZOO["resolution"])
        for metric in ("flops", "params", "acts"):
            want, have = row[metric], getattr(got, metric)
            if not math.isclose(have, want, rel_tol=rel_tol):
                bad.append(f"{name}.{metric}: {have} vs pycls {want} ({have / want - 1:+.3%})")
    return bad


def test_measure_reproduces_the_pycls_table():
    assert compare_with_pycls(measure) == []


@pytest.mark.parametrize("name", list(ZOO["models"]))
def test_measure_matches_pycls_exactly(name):
    # Stricter than the 0.5% the claim asks for: a correct architecture matches to the unit.
    row = ZOO["models"][name]
    got = measure(_meta(name), ZOO["resolution"])
    assert (got.flops, got.params, got.acts) == (row["flops"], row["params"], row["acts"])


def _measure_counting_bn_outputs(model: nn.Module, resolution: int) -> Complexity:
    """A plausible but wrong counter: it also counts BatchNorm outputs as activations."""
    extra = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: extra.append(o.numel()))
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    try:
        base = measure(model, resolution)
    finally:
        for h in hooks:
            h.remove()
    return Complexity(base.flops, base.params, base.acts + sum(extra))


def test_the_table_check_catches_a_counter_that_counts_bn_outputs():
    mismatches = compare_with_pycls(_measure_counting_bn_outputs)
    assert len(mismatches) == len(ZOO["models"])  # every model has BN: every acts row is off
    assert all(".acts:" in m for m in mismatches)


@pytest.mark.parametrize(
    "name", ["anynet_tiny_y", "effnet_tiny", "regnety_200mf", "resnet50", "efficientnet_b0"]
)
def test_flop_counter_mode_agrees_up_to_bias_flops(name):
    # FlopCounterMode counts 2 flops per multiply-add and ignores bias adds (convolution and
    # addmm only count the products), so independent/2 must equal ours minus bias adds exactly.
    model = build(name) if name in ("anynet_tiny_y", "effnet_tiny") else _meta(name)
    r = model.cfg.resolution
    bias = sum(layer.bias_flops for layer in layer_counts(model, r))
    ours = measure(model, r).flops
    assert independent_flops(model, r) / 2 == ours - bias
    assert 0 < bias < 0.01 * ours  # SE and classifier biases: a small share


@pytest.mark.parametrize("name", ["anynet_tiny_x", "anynet_tiny_y", "effnet_tiny"])
def test_real_and_meta_models_count_the_same(name):
    model = build(name).train()
    assert measure(model, 32) == measure(_meta(name), 32)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert measure(model, 64).flops > measure(model, 32).flops


def test_meta_measure_leaves_batch_norm_intact():
    model = _meta("anynet_tiny_x")
    measure(model, 32)
    assert not any("forward" in vars(m) for m in model.modules())


@pytest.mark.parametrize("name", [*anynet.MODEL_CFGS, *effnet.MODEL_CFGS])
def test_analytic_complexity_equals_hook_count(name):
    cfg = config_of(name)
    assert analytic_complexity(cfg) == measure(_meta(name), cfg.resolution)


@pytest.mark.parametrize(
    "name, s, strategy",
    [("regnety_4gf", 4, "dWr"), ("resnet50", 2, "dwr"), ("effnet_tiny", 8, "d")],
)
def test_analytic_complexity_equals_hook_count_after_scaling(name, s, strategy):
    cfg = scale(config_of(name), s, strategy)
    assert analytic_complexity(cfg) == measure_config(cfg)


def test_layer_counts_follow_the_counting_rules():
    layers = {rec.name: rec for rec in layer_counts(_meta("resnet50"), 224)}
    stem = layers["stem.0"]  # 7x7 s2, 3 -> 64, output 112x112
    assert stem.flops == 7 * 7 * 3 * 64 * 112 * 112 and stem.acts == 64 * 112 * 112
    pool = layers["stem.3"]
    assert pool.kind == "maxpool" and pool.flops == 0 and pool.acts == 64 * 56 * 56
    fc = layers["head.2"]
    assert fc.flops == 2048 * 1000 + 1000 and fc.bias_flops == 1000 and fc.acts == 1000


def test_params_count_every_parameter():
    model = build("anynet_tiny_x")
    model.extra = nn.Parameter(torch.zeros(5))  # not a conv/linear/BN parameter
    assert measure(model, 32).params == measure(build("anynet_tiny_x"), 32).params + 5


@pytest.mark.parametrize("res", [0, -32, 32.0, True])
def test_bad_resolution_is_a_clear_error(res):
    with pytest.raises(ValueError, match="resolution must be a positive int"):
        measure(_meta("anynet_tiny_x"), res)
    with pytest.raises(ValueError, match="resolution"):
        independent_flops(_meta("anynet_tiny_x"), res)

"""Scaling strategies: exponents, pycls rounding, the worked example and the complexity laws."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import harness.scaling.strategies as sc
from harness.complexity import LayerCount, layer_counts
from harness.models import build_config, config_of, measure_config
from harness.scaling import (
    STRATEGIES,
    check_complexity_laws,
    complexity_exponents,
    complexity_law_report,
    predicted_complexity_ratio,
    scale,
    scaling_exponents,
    scaling_factors,
)

ZOO = json.loads((Path(__file__).parents[1] / "fixtures" / "pycls_model_zoo.json").read_text())
# Small bases keep each example well under a second; the 224 px ones are counted on meta.
BASES = [
    "anynet_tiny_x",
    "anynet_tiny_y",
    "effnet_tiny",
    "regnetx_200mf",
    "resnet50",
    "efficientnet_b0",
]
PROPERTY = settings(max_examples=25, deadline=None, database=None)
LAWS = settings(max_examples=100, deadline=None, database=None)  # ~0.1 s per example
scales = st.floats(min_value=1.5, max_value=16.0, allow_nan=False)
alphas = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def _layers(cfg) -> dict[str, LayerCount]:
    with torch.device("meta"):
        model = build_config(cfg)
    return {rec.name: rec for rec in layer_counts(model, cfg.resolution)}


# ------------------------------------------ exponents ------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exponents_sum_to_one_and_match_the_closed_forms(strategy):
    e_d, e_w, e_r = scaling_exponents(strategy)
    assert e_d + e_w + e_r == pytest.approx(1.0)
    # f = d·w²·r², p = d·w², a = d·w·r² with d ~ s^e_d, w ~ s^(e_w/2), r ~ s^(e_r/2):
    assert complexity_exponents(strategy) == pytest.approx((1.0, e_d + e_w, e_d + e_w / 2 + e_r))
    for dim in "dwr":  # simple and compound strategies scale exactly the dims they name
        assert (dim in strategy.lower()) == (scaling_exponents(strategy)["dwr".index(dim)] > 0)


@given(alpha=alphas)
@PROPERTY
def test_fast_compound_exponents(alpha):
    assert scaling_exponents("fast", alpha) == pytest.approx(
        ((1 - alpha) / 2, alpha, (1 - alpha) / 2)
    )
    e_f, e_p, e_a = complexity_exponents("fast", alpha)
    assert (e_f, e_p, e_a) == pytest.approx((1, (1 + alpha) / 2, (2 - alpha) / 2))


def test_fast_compound_special_cases():
    assert scaling_exponents("fast", 1.0) == scaling_exponents("w")
    assert scaling_exponents("fast", 0.0) == scaling_exponents("dr")
    assert scaling_exponents("fast", 1 / 3) == pytest.approx(scaling_exponents("dwr"))
    assert scaling_exponents("dWr") == scaling_exponents("fast", 0.8)


@given(s=scales, strategy=st.sampled_from(STRATEGIES))
@PROPERTY
def test_factors_multiply_to_s(s, strategy):
    s_d, s_w, s_r = scaling_factors(strategy, s)
    assert s_d * s_w**2 * s_r**2 == pytest.approx(s)
    f, p, a = predicted_complexity_ratio(strategy, s)
    assert f == pytest.approx(s)
    assert p == pytest.approx(s_d * s_w**2) and a == pytest.approx(s_d * s_w * s_r**2)


def test_efficientnet_remark():
    rem = ZOO["efficientnet_remark"]
    dwr = scaling_factors("dwr", rem["s"])
    assert dwr == pytest.approx(rem["dwr_factors_rounded"], abs=rem["rounded_abs_tol"])
    assert dwr == pytest.approx(rem["efficientnet_factors"], rel=rem["close_rel_tol"])
    d, w, r = rem["efficientnet_factors"]
    assert d * w**2 * r**2 == pytest.approx(rem["s"], rel=rem["close_rel_tol"])  # ~2x flops


# ------------------------------------------- rounding -------------------------------------------


def test_worked_example_exactly():
    ex = ZOO["worked_example"]
    base = config_of(ex["base"])
    cfg = scale(base, ex["s"], ex["strategy"])
    assert list(cfg.depths) == ex["depths"]
    assert list(cfg.widths) == ex["widths"]
    assert set(cfg.group_widths) == {ex["group_width"]}
    assert cfg.resolution == ex["resolution"]
    assert cfg.stem_width == base.stem_width  # pycls does not scale the AnyNet stem
    got = measure_config(cfg)
    assert round(got.flops / 1e9, 2) == ex["gflops"]
    assert round(got.params / 1e6, 1) == ex["mparams"]
    assert round(got.acts / 1e6, 1) == ex["macts"]
    assert check_complexity_laws(base, cfg, ex["s"], ex["strategy"]) == []


def test_scale_returns_a_new_frozen_config_of_the_same_type():
    base = config_of("efficientnet_b0")
    cfg = scale(base, 2, "dwr")
    assert type(cfg) is type(base) and cfg != base and base == config_of("efficientnet_b0")
    assert cfg.stem_width % 8 == 0 and cfg.head_width % 8 == 0 and cfg.resolution % 4 == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.resolution = 1


def test_effnet_depthwise_convs_keep_group_width_one():
    cfg = scale(config_of("effnet_tiny"), 4, "dWr")
    with torch.device("meta"):
        model = build_config(cfg)
    dw = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)


@given(s=st.floats(min_value=0.05, max_value=64.0), strategy=st.sampled_from(STRATEGIES))
@PROPERTY
def test_scaled_anynet_configs_are_always_valid(s, strategy):
    cfg = scale(config_of("regnety_4gf"), s, strategy)  # __post_init__ validates compatibility
    assert all(w % 8 == 0 for w in cfg.widths) and cfg.resolution % 4 == 0
    assert all(g <= 2 or g == 4 or g % 8 == 0 for g in cfg.group_widths)
    blocks = zip(cfg.widths, cfg.bottleneck_ratios, cfg.group_widths, strict=True)
    assert all(w * b % g == 0 for w, b, g in blocks)


# ----------------------------------- per-layer laws (exact) -----------------------------------


def test_width_scaling_multiplies_each_conv_layer_by_w_squared():
    # "w" at s = 16 gives w x 4 exactly (no rounding). A conv whose input and output widths
    # both scale costs 16x; one next to a fixed width (3 input channels, the AnyNet stem that
    # pycls does not scale, 1000 classes) costs 4x or 1x.
    base = config_of("regnety_200mf")
    cfg = scale(base, 16, "w")
    assert cfg.widths == tuple(4 * w for w in base.widths) and cfg.resolution == base.resolution
    fixed_in = {"s1.b1.a", "s1.b1.proj", "s1.b1.se.f_ex.0", "head.2"}  # 4x flops
    flops_x = {"stem.0": 1, **dict.fromkeys(fixed_in, 4), "s1.b1.se.f_ex.2": 4}
    acts_x = {"stem.0": 1, "s1.b1.se.f_ex.0": 1, "head.2": 1}  # SE width = 1/4 stem width
    b, s = _layers(base), _layers(cfg)
    assert b.keys() == s.keys()
    for name, rec in b.items():
        macs, macs_scaled = rec.flops - rec.bias_flops, s[name].flops - s[name].bias_flops
        assert macs_scaled == flops_x.get(name, 16) * macs, name
        assert s[name].acts == acts_x.get(name, 4) * rec.acts, name


def test_resolution_scaling_multiplies_each_conv_layer_by_r_squared():
    base = config_of("regnetx_200mf")
    cfg = scale(base, 4, "r")  # r x 2 exactly: 224 -> 448, all maps double
    assert cfg.resolution == 2 * base.resolution and cfg.widths == base.widths
    b, s = _layers(base), _layers(cfg)
    for name, rec in b.items():
        factor = 1 if name.startswith("head") else 4
        assert s[name].flops == factor * rec.flops and s[name].acts == factor * rec.acts, name
    assert measure_config(cfg).params == measure_config(base).params


def test_depth_scaling_adds_copies_of_the_repeated_block():
    base = config_of("anynet_tiny_y", depths=(2, 2, 3))
    cfg = scale(base, 2, "d")
    assert cfg.depths == (4, 4, 6) and cfg.widths == base.widths
    b, s = _layers(base), _layers(cfg)
    for name, rec in s.items():
        if name in b:
            assert rec == b[name], name  # every layer of the base is unchanged
        else:  # a new block costs what the stage's second block costs
            stage, _, rest = name.split(".", 2)
            assert rec == dataclasses.replace(b[f"{stage}.b2.{rest}"], name=name), name


# ------------------------------------ laws of whole networks ------------------------------------


@given(base=st.sampled_from(BASES), s=scales, strategy=st.sampled_from(STRATEGIES))
@LAWS
def test_scaled_networks_follow_the_complexity_laws(base, s, strategy):
    cfg = config_of(base)
    report = complexity_law_report(cfg, scale(cfg, s, strategy), s, strategy)
    assert report.violations == ()
    assert report.closed_form == pytest.approx(predicted_complexity_ratio(strategy, s))


@given(base=st.sampled_from(BASES), s=scales, alpha=alphas)
@LAWS
def test_fast_scaled_networks_follow_the_complexity_laws(base, s, alpha):
    cfg = config_of(base)
    assert check_complexity_laws(cfg, scale(cfg, s, "fast", alpha), s, "fast", alpha) == []


@pytest.mark.parametrize("strategy", ["w", "r", "wr", "dWr"])
def test_totals_of_a_big_network_follow_the_closed_forms_closely(strategy):
    # Unrounded, only the parts that do not scale (stem, first blocks, classifier) bend a
    # network's totals away from s^e. In RegNetY-4GF they are small unless depth dominates
    # (d at s = 4: acts 20% low, because each stage's first block does not repeat).
    base = config_of("regnety_4gf")
    report = complexity_law_report(base, scale(base, 4, strategy), 4, strategy)
    assert report.violations == ()
    for got, want in zip(report.ideal, report.closed_form, strict=True):
        assert abs(math.log(got / want)) < 0.1, report


# ------------------------------ the check catches broken scalers ------------------------------

_TRUE_EXPONENTS = sc.scaling_exponents


def _swapped_d_and_w(strategy, alpha=None):
    e_d, e_w, e_r = _TRUE_EXPONENTS(strategy, alpha)
    return (e_w, e_d, e_r)


def _half_width_exponent(strategy, alpha=None):
    e_d, e_w, e_r = _TRUE_EXPONENTS(strategy, alpha)
    return (e_d, e_w / 2, e_r)


@pytest.mark.parametrize("broken", [_swapped_d_and_w, _half_width_exponent])
@pytest.mark.parametrize("base", ["anynet_tiny_y", "effnet_tiny", "regnety_200mf"])
@pytest.mark.parametrize("s, alpha", [(4.0, 0.8), (8.0, 0.6), (16.0, 1.0)])
def test_wrong_fast_exponents_break_the_law_check(monkeypatch, broken, base, s, alpha):
    cfg = config_of(base)
    assert check_complexity_laws(cfg, scale(cfg, s, "fast", alpha), s, "fast", alpha) == []
    monkeypatch.setattr(sc, "scaling_exponents", broken)
    scaled = scale(cfg, s, "fast", alpha)
    violations = check_complexity_laws(cfg, scaled, s, "fast", alpha)
    assert any("depth" in v or "width" in v for v in violations)  # sizes off the law
    assert any("ratio" in v for v in violations)  # and so are the measured totals


def test_keeping_group_widths_breaks_the_law_check():
    cfg = config_of("regnety_200mf")
    violations = check_complexity_laws(cfg, scale(cfg, 4, "dWr", scale_groups=False), 4, "dWr")
    assert any(v.startswith("group_width") for v in violations)
    assert any(v.startswith("flops ratio") for v in violations)


def test_check_flags_changed_fixed_fields():
    cfg = config_of("anynet_tiny_x")
    scaled = dataclasses.replace(scale(cfg, 2, "w"), num_classes=11)
    assert any("num_classes changed" in v for v in check_complexity_laws(cfg, scaled, 2, "w"))


# ------------------------------------------ bad input ------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: scale(config_of("anynet_tiny_x"), 2, "dwR"),
            r"unknown scaling strategy 'dwR'.*dWr",
        ),
        (
            lambda: scaling_exponents("depth"),
            r"'depth'; allowed: d, w, r, dw, dr, wr, dwr, dWr, fast",
        ),
        (
            lambda: scale(config_of("anynet_tiny_x"), 0, "w"),
            r"s must be a finite number > 0, got 0",
        ),
        (lambda: scale(config_of("anynet_tiny_x"), -2.0, "w"), r"got -2.0"),
        (lambda: scaling_factors("w", float("nan")), r"got nan"),
        (lambda: scale(config_of("anynet_tiny_x"), 2, "fast", 1.5), r"alpha .*\[0, 1\], got 1.5"),
        (lambda: scaling_exponents("fast", -0.1), r"got -0.1"),
        (lambda: scaling_exponents("fast"), r"'fast' needs alpha"),
        (lambda: scaling_exponents("dwr", 0.5), r"alpha=0.5 given with strategy 'dwr'"),
        (lambda: scaling_exponents("dWr", 0.8), r"'dWr' fixes alpha=0.8"),
        (lambda: config_of("vit_b16"), r"no config for model 'vit_b16'"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@settings(max_examples=8, deadline=None)
@given(s=st.floats(1.5, 16.0), strategy=st.sampled_from(["w", "dwr", "dWr", "dr"]),
       base=st.sampled_from(["anynet_tiny_y", "effnet_tiny"]))
def test_scale_to_flops_is_never_further_from_the_target_than_plain_scaling(s, strategy, base):
    cfg = config_of(base, resolution=16)
    flops = measure_config(cfg).flops

    def miss(net):
        return abs(math.log(measure_config(net).flops / flops / s))

    matched = sc.scale_to_flops(cfg, s, strategy, steps=6)
    assert miss(matched) <= miss(sc.scale(cfg, s, strategy)) + 1e-12


def test_scale_to_flops_evens_out_rounding_on_a_tiny_net():
    base = config_of("anynet_tiny_y", stem_type="cifar", resolution=16)
    flops = measure_config(base).flops
    plain = measure_config(sc.scale(base, 4.0, "dWr")).flops / flops
    matched = measure_config(sc.scale_to_flops(base, 4.0, "dWr")).flops / flops
    assert plain < 2.7 and abs(matched / 4 - 1) < 0.05  # measured: 2.62 -> 3.93

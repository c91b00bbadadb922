"""Model registry, AnyNet and EfficientNet builders (architecture details, overrides, init)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from harness.models import anynet, build, build_config, config_of, list_models

ZOO = json.loads((Path(__file__).parents[1] / "fixtures" / "pycls_model_zoo.json").read_text())
SMOKE = ["anynet_tiny_x", "anynet_tiny_y", "effnet_tiny"]
EXPECTED = [*ZOO["models"], *SMOKE]


def _meta(name: str, **overrides) -> nn.Module:
    with torch.device("meta"):
        return build(name, **overrides)


def test_registry_lists_the_expected_models():
    assert set(EXPECTED) <= set(list_models())
    assert list_models("regnety_*") == ["regnety_16gf", "regnety_200mf", "regnety_4gf"]


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_on_meta_and_runs(name):
    model = _meta(name)  # any family in the registry; ours all carry their config as .cfg
    cfg = getattr(model, "cfg", None)
    r, c = getattr(cfg, "resolution", 224), getattr(cfg, "in_channels", 3)
    out = model(torch.zeros(1, c, r, r, device="meta"))
    assert out.shape[0] == 1
    if hasattr(cfg, "num_classes"):
        assert tuple(out.shape) == (1, cfg.num_classes)


@pytest.mark.parametrize("name", SMOKE)
def test_smoke_models_train_on_cpu(name):
    torch.manual_seed(0)
    model = build(name)
    cfg = model.cfg
    assert cfg.resolution == 32 and cfg.num_classes == 10
    assert sum(p.numel() for p in model.parameters()) < 300_000  # smoke-sized
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10)
    nn.functional.cross_entropy(out, torch.arange(4)).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 10)


def test_overrides_replace_config_fields():
    model = build("anynet_tiny_y", num_classes=7, resolution=48, depths=[1, 1, 1])
    assert model.cfg.num_classes == 7 and model.cfg.resolution == 48
    assert model.cfg.depths == (1, 1, 1)  # lists become tuples: configs stay hashable
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.cfg.num_classes = 3


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown model 'regnetz_500mf'.*regnety_4gf"):
        build("regnetz_500mf")
    with pytest.raises(ValueError, match=r"no config for model 'regnetz_500mf'.*regnety_4gf"):
        config_of("regnetz_500mf")
    with pytest.raises(TypeError, match="no model family for a dict"):
        build_config({"depths": (1, 2)})


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"stem_type": "imagenet"}, "unknown stem_type 'imagenet'"),
        ({"block_type": "vanilla"}, "unknown block_type"),
        ({"group_widths": (8, 8, 7)}, "not divisible by group 7"),
        ({"depths": (1, 2)}, "equal, non-zero lengths"),
        ({"widths": (24, 0, 96)}, "must be > 0"),
    ],
)
def test_invalid_anynet_configs_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        config_of("anynet_tiny_x", **bad)


def test_invalid_effnet_config_is_rejected():
    with pytest.raises(ValueError, match="odd"):
        config_of("effnet_tiny", kernels=(3, 4, 5))


@pytest.mark.parametrize("name", [n for n, m in ZOO["models"].items() if "regnet" in m])
def test_regnet_stage_structure_matches_pycls_generator(name):
    row = ZOO["models"][name]
    depths, widths, groups = anynet.regnet_stages(**row["regnet"])
    cfg = config_of(name)
    assert list(cfg.depths) == depths == row["depths"]
    assert list(cfg.widths) == widths == row["widths"]
    assert set(cfg.group_widths) == set(groups) == {row["group_width"]}
    assert cfg.se_ratio == row.get("se_ratio", 0.0)
    if "stem_width" in row:
        assert cfg.stem_width == row["stem_width"]


def test_bottleneck_block_layout_is_pycls():
    model = build("anynet_tiny_y")
    blk = model.s2.b1  # 24 -> 48, stride 2: has a projection shortcut
    assert isinstance(blk.proj, nn.Conv2d) and blk.proj.stride == (2, 2)
    assert blk.proj.kernel_size == (1, 1) and blk.bn.num_features == 48
    assert blk.b.stride == (2, 2) and blk.b.groups == 48 // 8  # stride on the grouped 3x3
    # SE width is round(se_ratio x block INPUT width), not of the bottleneck width.
    assert blk.se.f_ex[0].out_channels == round(0.25 * 24)
    assert model.s2.b2.proj is None  # same shape: identity shortcut
    assert all(m.bias is None for n, m in model.named_modules() if n.endswith((".a", ".b", ".c")))


def test_resnet_stem_and_stride_placement():
    model = _meta("resnet50")
    assert isinstance(model.stem[-1], nn.MaxPool2d) and model.stem[0].kernel_size == (7, 7)
    assert model.s1.b1.proj is not None and model.s1.b1.b.stride == (1, 1)  # 64 -> 256
    assert model.s2.b1.a.stride == (1, 1) and model.s2.b1.b.stride == (2, 2)  # stride on 3x3
    assert model.s2.b1.b.groups == 1


def test_init_is_pycls_and_zero_init_final_bn_is_optional():
    torch.manual_seed(0)
    plain = build("anynet_tiny_x")
    zeroed = build("anynet_tiny_x", zero_init_final_bn=True)
    assert all(b.c_bn.weight.eq(1).all() for s in (plain.s1, plain.s2, plain.s3) for b in s)
    assert all(b.c_bn.weight.eq(0).all() for s in (zeroed.s1, zeroed.s2, zeroed.s3) for b in s)
    assert zeroed.s2.b1.bn.weight.eq(1).all()  # the shortcut BN is not a "final" BN
    fc = plain.head[-1]
    assert fc.bias.eq(0).all() and fc.weight.std().item() == pytest.approx(0.01, rel=0.2)
    conv = build("regnetx_200mf").s4.b1.a  # 1x1, 152 -> 368: fan_out = 368
    assert conv.weight.std().item() == pytest.approx((2 / 368) ** 0.5, rel=0.05)
    assert config_of("resnet50").zero_init_final_bn  # as pycls's R-50 config


def test_effnet_blocks():
    model = build("effnet_tiny", drop_connect=0.5)
    first = model.s1.b1  # expansion ratio 1: no expansion conv
    assert first.exp is None and first.dwise.groups == first.dwise.in_channels == 16
    blk = model.s2.b2  # 24 -> 24, stride 1: residual; expansion 4: 96 channels
    assert blk.has_skip and blk.exp.out_channels == 96 and blk.dwise.groups == 96
    assert blk.se.f_ex[0].out_channels == int(0.25 * 24)  # of the block input width
    assert isinstance(blk.se.f_ex[1], nn.SiLU)
    assert not model.s2.b1.has_skip
    model.train()
    x = torch.randn(3, 24, 8, 8)
    assert blk(x).shape == x.shape  # drop-connect keeps shapes
    head = model.head
    assert isinstance(head[5], nn.Dropout) and head[-1].out_features == 10
    assert config_of("efficientnet_b0").dropout == pytest.approx(0.2)


def test_cifar_stem_keeps_full_resolution_and_counts_match():
    from harness.complexity import measure
    from harness.models import analytic_complexity, build_config

    cfg = config_of("anynet_tiny_y", stem_type="cifar")
    model = build_config(cfg)
    assert model.stem[0].stride == (1, 1)
    assert measure(model, cfg.resolution) == analytic_complexity(cfg)
    simple = analytic_complexity(config_of("anynet_tiny_y"))
    assert analytic_complexity(cfg).acts > 3 * simple.acts  # 4x the spatial size through every stage

"""NF-ResNets and their BatchNorm twins: shapes, SkipInit, signal propagation, parity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from harness.agc import classifier_of, clip_grads_, parameters_to_clip
from harness.models import nf_resnet
from harness.models._registry import build, list_models
from harness.models.nf_resnet import (
    GAMMA_RELU,
    NFBlock,
    NFResNet,
    ScaledStdConv2d,
    residual_stream_variances,
)

SMALL = ["nf_resnet_tiny", "bn_resnet_tiny", "nf_resnet18_cifar", "bn_resnet18_cifar"]
TWINS = [
    ("nf_resnet_tiny", "bn_resnet_tiny"),
    ("nf_resnet18_cifar", "bn_resnet18_cifar"),
    ("nf_resnet50", "bn_resnet50"),
]


def _blocks(model: nn.Module) -> list[NFBlock]:
    return [m for m in model.modules() if isinstance(m, NFBlock)]


def _set_skip_gains(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for b in _blocks(model):
            b.skip_gain.fill_(value)


def test_registered():
    names = set(list_models("*resnet*"))
    assert {"nf_resnet_tiny", "bn_resnet_tiny", "nf_resnet18_cifar", "bn_resnet18_cifar"} <= names
    assert build("nf_resnet_tiny", num_classes=7).fc.out_features == 7


@pytest.mark.parametrize("name", SMALL)
def test_forward_shape_and_classifier(name):
    torch.manual_seed(0)
    model = build(name, num_classes=10)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert isinstance(model.fc, nn.Linear) and classifier_of(model) is model.fc


def test_imagenet_variants_on_meta_device():
    with torch.device("meta"):
        for name in ("nf_resnet50", "bn_resnet50"):
            model = build(name)
            assert model(torch.empty(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("name", ["nf_resnet_tiny", "nf_resnet18_cifar"])
def test_nf_models_have_no_batchnorm(name):
    model = build(name)
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
    assert not [m for m in model.modules() if isinstance(m, norms)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, ScaledStdConv2d) for m in convs)
    bn = build(name.replace("nf_", "bn_"))
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    assert not any(isinstance(m, ScaledStdConv2d) for m in bn.modules())


def test_deterministic_given_seed():
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(build("nf_resnet_tiny").state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_config_is_frozen_and_validated():
    assert nf_resnet.NFResNetConfig().alpha == 0.2
    model = build("nf_resnet_tiny")
    with pytest.raises(AttributeError):
        model.cfg.alpha = 1.0
    with pytest.raises(ValueError):
        build("nf_resnet_tiny", norm="layer")
    with pytest.raises(ValueError):
        build("nf_resnet_tiny", depths=(1, 1))
    assert build("nf_resnet_tiny", depths=[2, 1, 1]).cfg.depths == (2, 1, 1)
    hash(model.cfg)


# ---------------------------------------------------------------------------------------------
# Building blocks


def test_gamma_makes_relu_variance_preserving():
    assert GAMMA_RELU == pytest.approx(1.7128, abs=1e-4)
    # Var(relu(z)) = (1 - 1/pi) / 2 for z ~ N(0, 1), so gamma**2 * Var = 1 exactly.
    assert GAMMA_RELU**2 * (1 - 1 / math.pi) / 2 == pytest.approx(1.0)
    z = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (torch.relu(z) * GAMMA_RELU).var().item() == pytest.approx(1.0, abs=0.01)


def test_scaled_weight_standardization():
    torch.manual_seed(0)
    conv = ScaledStdConv2d(8, 16, 3)
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(3.0)  # the raw scale and offset must not matter
        conv.gain.copy_(torch.linspace(0.5, 2.0, 16))
    w = conv.standardized_weight().flatten(1).double()
    torch.testing.assert_close(w.mean(1), torch.zeros(16, dtype=torch.float64), atol=1e-6, rtol=0)
    # Each row has norm gain: (W - mean) / (std * sqrt(fan_in)) has unit norm.
    torch.testing.assert_close(w.norm(dim=1), conv.gain.double().detach(), atol=1e-5, rtol=1e-5)
    assert conv.gain.shape == (16,)  # 1-D: AGC clips it with one whole-tensor norm


def test_scaled_std_conv_preserves_variance_and_removes_mean():
    torch.manual_seed(0)
    conv = ScaledStdConv2d(64, 64, 1)  # 1x1: no zero padding to lower the variance
    x = torch.relu(torch.randn(64, 64, 8, 8)) * GAMMA_RELU  # mean 0.68, variance 1
    y = conv(x).detach()
    # Per channel, Var(y) = w^T Cov(x) w = 1 for i.i.d. inputs; 64 channels x 4096 samples.
    assert y.var(dim=(0, 2, 3)).mean().item() == pytest.approx(1.0, abs=0.03)
    assert y.mean().abs().item() < 0.02


def test_skipinit_gains_are_zero_so_blocks_start_as_identity():
    torch.manual_seed(0)
    model = build("nf_resnet_tiny", depths=(2, 2, 1))
    blocks = _blocks(model)
    assert blocks and all(b.skip_gain.shape == () and b.skip_gain.item() == 0.0 for b in blocks)
    for b in blocks:
        x_in = torch.randn(4, b.convs[0].in_channels, 32, 32)
        with torch.no_grad():
            out = b(x_in)
            if b.shortcut is None:
                assert torch.equal(out, x_in)  # residual branch contributes exactly nothing
            else:
                torch.testing.assert_close(out, b.shortcut(b.act(x_in / b.beta)))


def test_variance_schedule_bookkeeping():
    model = build("nf_resnet_tiny", depths=(2, 3, 2), alpha=0.3)
    a2 = 0.3**2
    expected_in = []
    v = 1.0
    for b in _blocks(model):
        expected_in.append(v)
        v = (1.0 if b.shortcut is not None else v) + a2
    got = [b.expected_var_in for b in _blocks(model)]
    assert got == pytest.approx(expected_in)
    assert [b.beta for b in _blocks(model)] == pytest.approx([math.sqrt(e) for e in expected_in])
    # Stem 16 -> 16 at stride 1: no projection, so no reset in the first stage; the first
    # block of stages 2 and 3 (projection) sees the grown variance and resets it to 1 + a2.
    assert got == pytest.approx([1, 1 + a2, 1 + 2 * a2, 1 + a2, 1 + 2 * a2, 1 + 3 * a2, 1 + a2])
    assert [b.expected_var_out for b in _blocks(model)] == pytest.approx(got[1:] + [1 + 2 * a2])


# ---------------------------------------------------------------------------------------------
# Signal propagation at initialisation


def _ratios(model: NFResNet, x: torch.Tensor) -> list[float]:
    return [r.measured / r.expected for r in residual_stream_variances(model, x)]


def _wide_circular(seed: int) -> NFResNet:
    torch.manual_seed(seed)
    model = build(
        "nf_resnet_tiny", alpha=0.5, depths=(3, 3, 3), widths=(128, 128, 128), stem_width=128
    )
    _set_skip_gains(model, 1.0)
    for m in model.modules():
        if isinstance(m, ScaledStdConv2d):
            m.padding_mode = "circular"
    return model


# Tolerance of the schedule test. Zero padding is replaced by circular padding: at a border a
# 3x3 conv sees only 4/9 or 6/9 of its taps, which lowers the variance by the border fraction
# (12n - 4) / (9n^2) of an n x n map (4% at n=32, 16% at n=8) and would be confounded with the
# schedule. What remains is the finite width: each output channel's variance is w^T Cov w for
# its own random unit-norm w, so the channel average scatters around the schedule with a spread
# that shrinks as 1/sqrt(C). At this size (C=128, 16 px, batch 16) it was measured over 8 seeds:
# mean ratio within 0.6% of 1 at every block, standard deviation <= 0.016. 5 sigma = 0.08.
# That is below every effect the test must see: with alpha=0.5 one block adds alpha^2 = 0.25 on
# top of at most 1.75 (14%), and dropping the 1/beta input scaling is off by >= 11% (below).
SCHEDULE_RTOL = 0.08


def test_signal_propagation_follows_expected_variance_schedule():
    model = _wide_circular(0)
    rows = residual_stream_variances(model, torch.randn(16, 3, 16, 16))
    assert [r.name for r in rows][:2] == ["stem", "stages.0.0"] and len(rows) == 10
    for r in rows:
        assert r.measured == pytest.approx(r.expected, rel=SCHEDULE_RTOL), r
    # Growth of alpha^2 per block and the reset after transitions are really measured, not
    # only shared by expected and measured: the stream at stage ends is 1.75, after a reset 1.25.
    measured = [r.measured for r in rows]
    assert measured[3] > measured[4] + 0.3 and measured[6] > measured[7] + 0.3
    assert measured[3] - measured[1] == pytest.approx(0.5, abs=0.15)


def test_schedule_check_detects_a_block_without_beta():
    # Negative control: without dividing by beta each branch scales with the stream, so the
    # variance grows geometrically and transitions do not reset. The tolerance must catch it.
    model = _wide_circular(0)
    for b in _blocks(model):
        b.beta = 1.0
    ratios = _ratios(model, torch.randn(16, 3, 16, 16))
    assert max(abs(r - 1) for r in ratios) > 2 * SCHEDULE_RTOL


def test_signal_propagation_of_the_registered_tiny_model():
    # The model as registered: zero padding, alpha=0.2, 16-64 channels, 32 px. Zero padding only
    # removes variance. After the stem the ratio to the schedule is 1 - 380/9216 = 0.959 (the
    # border fraction above, exact for an i.i.d. input). The stride-2 1x1 shortcuts keep row 0
    # and column 0, whose variance is 1/3 short, while halving the map, so that ring weighs 23%
    # of the 8x8 map of the last stage: about 8% below the schedule. Measured over 8 seeds, the
    # last block's ratio is 0.90 with zero padding and 0.99 with circular padding. Narrow
    # stages scatter: sigma 0.05 per seed at 64 channels, 0.03 for the mean of 3 seeds.
    # Band: [0.90 - 4 * 0.03, 1 + 4 * 0.03].
    ratios = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build("nf_resnet_tiny")
        _set_skip_gains(model, 1.0)
        ratios.append(_ratios(model, torch.randn(64, 3, 32, 32)))
    mean = torch.tensor(ratios).mean(0)
    assert mean[0].item() == pytest.approx(1 - 380 / 9216, abs=0.005)  # stem
    assert ((mean > 0.78) & (mean < 1.12)).all(), mean


def test_residual_stream_variances_rejects_bn_models():
    with pytest.raises(ValueError):
        residual_stream_variances(build("bn_resnet_tiny"), torch.randn(2, 3, 32, 32))


# ---------------------------------------------------------------------------------------------
# BN twins


def _conv_shapes(model: nn.Module) -> list[tuple]:
    return [
        (tuple(m.weight.shape), m.stride, m.padding)
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]


@pytest.mark.parametrize(("nf_name", "bn_name"), TWINS)
def test_bn_twin_has_the_same_shape(nf_name, bn_name):
    with torch.device("meta"):
        nf, bn = build(nf_name), build(bn_name)
    assert _conv_shapes(nf) == _conv_shapes(bn)
    assert nf.fc.weight.shape == bn.fc.weight.shape
    n_nf = sum(p.numel() for p in nf.parameters())
    n_bn = sum(p.numel() for p in bn.parameters())
    # NF conv gain + bias (2 per channel) replace BN weight + bias; only SkipInit is extra.
    assert n_nf == n_bn + len(_blocks(nf))
    weights = lambda m: sum(c.weight.numel() for c in m.modules() if isinstance(c, nn.Conv2d))  # noqa: E731
    assert weights(nf) == weights(bn)


def test_parameter_counts():
    with torch.device("meta"):
        assert (
            sum(p.numel() for p in build("bn_resnet50").parameters()) == 25_557_032
        )  # torchvision
        tiny = sum(p.numel() for p in build("nf_resnet_tiny").parameters())
        r18 = sum(p.numel() for p in build("bn_resnet18_cifar").parameters())
    assert 50_000 <= tiny <= 150_000
    assert r18 == 11_173_962  # the usual CIFAR ResNet-18 (3x3 stem, no max pool)


# ---------------------------------------------------------------------------------------------
# With AGC


def test_agc_training_step_moves_skipinit_gains():
    # The SkipInit gains start at exactly zero; only AGC's eps floor lets them move: while
    # |gain| < eps a step changes them by exactly lr * lam * eps = 8e-5 (the gradient of a
    # scalar is one unit, clipped to lam * eps).
    torch.manual_seed(0)
    model = build("nf_resnet_tiny")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses, moved = [], torch.zeros(len(_blocks(model)))
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        clip_grads_(parameters_to_clip(model, exclude=[classifier_of(model)]), 0.16)
        opt.step()
        losses.append(loss.item())
        moved = torch.maximum(
            moved, torch.stack([b.skip_gain.detach().abs() for b in _blocks(model)])
        )
    step = 0.5 * 0.16 * 1e-3
    assert (moved >= step * (1 - 1e-5)).all() and (moved <= 3 * step * (1 + 1e-5)).all(), moved
    assert losses[-1] < losses[0]

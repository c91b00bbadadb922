"""Adaptive Gradient Clipping: property tests of the rule of `agc.rule` (claims/README.md §2)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.agc import (
    check_agc_invariants,
    check_model_agc,
    classifier_of,
    clip_grads_,
    parameters_to_clip,
    random_agc_case,
    unitwise_norm,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# conv [out, in, k, k], linear [out, in], bias/gain [out], scalar gain []
SHAPES = st.one_of(
    st.tuples(st.integers(1, 5), st.integers(1, 4), st.sampled_from([1, 3])).map(
        lambda t: (t[0], t[1], t[2], t[2])
    ),
    st.tuples(st.integers(1, 6), st.integers(1, 6)),
    st.tuples(st.integers(1, 8)),
    st.just(()),
)
# Per-unit scales over many decades, and exact zeros (zero-initialised weights, zero grads).
LOG_SCALE = st.one_of(st.none(), st.floats(-6, 3))
LAMBDA = st.one_of(st.sampled_from([0.01, 0.02, 0.04, 0.08, 0.16]), st.floats(1e-3, 10.0))
EPS = st.sampled_from([1e-3, 1e-6, 0.5])
DTYPE = st.sampled_from([torch.float32, torch.float64])


@st.composite
def tensor_pairs(draw, shapes=SHAPES, max_tensors: int = 4):
    """(weights, grads, dtype): tensors whose units have independently drawn norms."""
    dtype = draw(DTYPE)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def tensor(shape):
        units = shape[0] if len(shape) >= 2 else 1
        scales = [
            0.0 if e is None else 10.0**e
            for e in draw(st.lists(LOG_SCALE, min_size=units, max_size=units))
        ]
        x = torch.randn(shape, generator=gen, dtype=torch.float64).reshape(units, -1)
        return (x * torch.tensor(scales, dtype=torch.float64)[:, None]).reshape(shape).to(dtype)

    shape_list = draw(st.lists(shapes, min_size=1, max_size=max_tensors))
    weights = [tensor(s) for s in shape_list]
    grads = [tensor(s) for s in shape_list]
    return weights, grads, dtype


def _ratios(w: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    u = w.shape[0] if w.ndim >= 2 else 1
    wn = w.double().reshape(u, -1).norm(dim=1).clamp_min(eps)
    return g.double().reshape(u, -1).norm(dim=1) / wn


def _clip_copy(weights, grads, lam, eps):
    params = [nn.Parameter(w.clone()) for w in weights]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    clip_grads_(params, lam, eps)
    return [p.grad for p in params]


# ---------------------------------------------------------------------------------------------
# unitwise_norm


def test_unitwise_norm_axes():
    conv, lin, bias, scalar = (
        torch.randn(4, 3, 3, 3),
        torch.randn(5, 7),
        torch.randn(6),
        torch.tensor(-2.0),
    )
    assert unitwise_norm(conv).shape == (4, 1, 1, 1)
    torch.testing.assert_close(unitwise_norm(conv).flatten(), conv.flatten(1).norm(dim=1))
    # [out, in]: one norm per output row (dim 1), not per input column.
    assert unitwise_norm(lin).shape == (5, 1)
    torch.testing.assert_close(unitwise_norm(lin).flatten(), lin.norm(dim=1))
    assert unitwise_norm(bias).shape == () and unitwise_norm(scalar).shape == ()
    torch.testing.assert_close(unitwise_norm(bias), bias.norm())
    assert unitwise_norm(scalar).item() == 2.0
    assert (conv / unitwise_norm(conv)).shape == conv.shape  # broadcasts


# ---------------------------------------------------------------------------------------------
# The whole property suite on generated inputs


@SETTINGS
@given(case=tensor_pairs(), lam=LAMBDA, eps=EPS)
def test_clip_grads_satisfies_every_invariant(case, lam, eps):
    weights, grads, _ = case
    assert check_agc_invariants(clip_grads_, weights, grads, lam, eps) == []


@pytest.mark.parametrize("seed", range(20))
def test_clip_grads_on_seeded_cases(seed):
    weights, grads = random_agc_case(seed)
    assert check_agc_invariants(clip_grads_, weights, grads, 0.01) == []
    weights, grads = random_agc_case(seed, dtype=torch.float64)
    assert check_agc_invariants(clip_grads_, weights, grads, 0.16) == []


# ---------------------------------------------------------------------------------------------
# Each invariant on its own, so that a failure names the property


@SETTINGS
@given(case=tensor_pairs(), lam=LAMBDA, eps=EPS)
def test_ratio_bounded_after_clipping(case, lam, eps):
    weights, grads, dtype = case
    rtol = 64 * torch.finfo(dtype).eps
    for w, g in zip(weights, _clip_copy(weights, grads, lam, eps), strict=True):
        assert (_ratios(w, g, eps) <= lam * (1 + rtol)).all()


@SETTINGS
@given(case=tensor_pairs(), lam=LAMBDA, eps=EPS)
def test_units_under_lambda_are_bitwise_untouched(case, lam, eps):
    weights, grads, dtype = case
    rtol = 64 * torch.finfo(dtype).eps
    for w, g, g2 in zip(weights, grads, _clip_copy(weights, grads, lam, eps), strict=True):
        u = w.shape[0] if w.ndim >= 2 else 1
        under = _ratios(w, g, eps) <= lam * (1 - rtol)
        for i in under.nonzero().flatten().tolist():
            assert torch.equal(g.reshape(u, -1)[i], g2.reshape(u, -1)[i])


@SETTINGS
@given(case=tensor_pairs(), lam=LAMBDA, eps=EPS)
def test_clipped_units_keep_direction_and_reach_lambda(case, lam, eps):
    weights, grads, dtype = case
    rtol = 64 * torch.finfo(dtype).eps
    for w, g, g2 in zip(weights, grads, _clip_copy(weights, grads, lam, eps), strict=True):
        u = w.shape[0] if w.ndim >= 2 else 1
        over = _ratios(w, g, eps) > lam * (1 + rtol)
        a, b = g.double().reshape(u, -1)[over], g2.double().reshape(u, -1)[over]
        if len(a):
            # Not F.cosine_similarity: its eps=1e-8 floor on the norms would distort units
            # clipped to lam * eps ~ 1e-9.
            cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
            assert (cos >= 1 - rtol).all()
            torch.testing.assert_close(
                _ratios(w, g2, eps)[over], torch.full_like(cos, lam), rtol=rtol, atol=0
            )


def test_exact_threshold_is_not_clipped():
    # ratio exactly lam (all values exact in binary): "at or under lam" means untouched.
    w = torch.tensor([[2.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    g = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0 + 2**-20, 0.0]])  # unit 1 just over
    (g2,) = _clip_copy([w], [g], 0.5, 1e-3)
    assert torch.equal(g2[0], g[0])
    assert g2[1, 1].item() == 2.0  # clipped to lam * ||W|| = 2


def test_zero_weights_use_eps_floor():
    # A zero-initialised parameter (e.g. a SkipInit gain) must still be able to move.
    w = [torch.zeros(3, 4), torch.zeros(()), torch.zeros(5)]
    g = [torch.randn(3, 4), torch.tensor(-3.0), torch.randn(5)]
    lam, eps = 0.01, 1e-3
    for gi, g2 in zip(g, _clip_copy(w, g, lam, eps), strict=True):
        u = gi.shape[0] if gi.ndim >= 2 else 1
        norms = g2.reshape(u, -1).norm(dim=1)
        torch.testing.assert_close(norms, torch.full_like(norms, lam * eps))
        assert (torch.sign(g2) == torch.sign(gi)).all()
    assert check_agc_invariants(clip_grads_, w, g, lam, eps) == []


def test_zero_grads_and_zero_weights_stay_finite():
    w = [torch.zeros(3, 2, 3, 3), torch.randn(4, 5), torch.zeros(4)]
    g = [torch.zeros(3, 2, 3, 3), torch.zeros(4, 5), torch.zeros(4)]
    for lam in (0.0, 0.01):
        for gi, g2 in zip(g, _clip_copy(w, g, lam, 1e-3), strict=True):
            assert torch.equal(g2, gi)  # still exactly zero, no NaN
    # lam = 0 zeroes every non-zero gradient, still without NaN.
    (g2,) = _clip_copy([torch.zeros(2, 3)], [torch.ones(2, 3)], 0.0, 1e-3)
    assert torch.equal(g2, torch.zeros(2, 3))


def test_non_finite_grads_stay_non_finite():
    w = torch.ones(3, 4)
    g = torch.ones(3, 4)
    g[0, 1], g[1, 2] = float("nan"), float("inf")
    (g2,) = _clip_copy([w], [g], 0.01, 1e-3)
    assert not torch.isfinite(g2[0]).all() and not torch.isfinite(g2[1]).all()
    torch.testing.assert_close(g2[2].norm(), torch.tensor(0.01 * 2.0))  # other units as usual


def test_bias_and_gain_use_whole_tensor_norm():
    # Per element the big entry would be clipped; over the whole tensor the ratio is under lam.
    w = torch.tensor([1.0, 10.0, 10.0])  # ||w|| = 14.18
    g = torch.tensor([0.1, 0.001, 0.001])  # ||g|| = 0.1, ratio 0.007 < 0.01
    (g2,) = _clip_copy([w], [g], 0.01, 1e-3)
    assert torch.equal(g2, g)
    # ... and the other way round: clipped as one unit (every element by the same factor).
    g = torch.tensor([1.0, 0.001, 0.001])
    (g2,) = _clip_copy([w], [g], 0.01, 1e-3)
    factor = 0.01 * w.norm() / g.norm()
    torch.testing.assert_close(g2, g * factor)


def test_none_grads_are_skipped_and_empty_input_is_fine():
    a, b = nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(3))
    a.grad = torch.randn(3, 4) * 100
    clip_grads_([a, b], 0.01)
    assert b.grad is None
    assert _ratios(a.detach(), a.grad, 1e-3).max() <= 0.01 * (1 + 1e-5)
    clip_grads_([], 0.01)
    clip_grads_(a, 0.01)  # a single tensor is accepted, as in torch's clip_grad_norm_


def test_shared_parameter_is_clipped_once():
    p = nn.Parameter(torch.ones(2, 2))
    p.grad = torch.full((2, 2), 10.0)
    clip_grads_([p, p], 0.1)
    torch.testing.assert_close(p.grad.norm(dim=1), torch.full((2,), 0.1 * math.sqrt(2)))


def test_noncontiguous_grads_and_mixed_dtypes():
    torch.manual_seed(0)
    base = torch.randn(6, 4, 3, 3)
    weights = [
        base,
        torch.randn(6, 4, 3, 3),
        torch.randn(6, 4, 3, 3, dtype=torch.float64),
        torch.randn(6),
    ]
    grads = [
        torch.randn(6, 3, 3, 4).permute(0, 3, 1, 2),  # non-contiguous
        torch.randn(6, 4, 3, 3).contiguous(memory_format=torch.channels_last),
        torch.randn(6, 4, 3, 3, dtype=torch.float64),
        torch.randn(12)[::2],  # strided 1-D
    ]
    assert not grads[0].is_contiguous() and not grads[3].is_contiguous()
    assert check_agc_invariants(clip_grads_, weights, grads, 0.01) == []


@pytest.mark.parametrize("batch_max_numel", [0, 1 << 62])
def test_batched_and_per_tensor_paths(monkeypatch, batch_max_numel):
    # Small tensors are concatenated per fan-in, large ones handled alone: force each path.
    import harness.agc.rule

    monkeypatch.setattr(harness.agc.rule, "_BATCH_MAX_NUMEL", batch_max_numel)
    for seed in range(10):
        assert check_agc_invariants(clip_grads_, *random_agc_case(seed), 0.02) == []
    test_noncontiguous_grads_and_mixed_dtypes()


def test_large_tensors_are_clipped_in_place():
    torch.manual_seed(0)
    w = [torch.randn(256, 64, 3, 3), torch.randn(300, 300)]  # > 65536 elements: not batched
    g = [torch.randn(256, 3, 3, 64).permute(0, 3, 1, 2) * 0.05, torch.randn(300, 300).t() * 0.1]
    assert check_agc_invariants(clip_grads_, w, g, 0.01) == []
    p = nn.Parameter(w[1].clone())
    p.grad = g[1].clone()
    storage = p.grad.data_ptr()
    clip_grads_([p], 0.01)
    assert p.grad.data_ptr() == storage  # the gradient tensor itself was scaled, not replaced


def test_low_precision_grads_are_clipped_in_float32():
    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16):
        w = torch.randn(8, 16).to(dtype)
        g = (torch.randn(8, 16) * 50).to(dtype)  # fp16 sum of squares would overflow
        (g2,) = _clip_copy([w], [g], 0.02, 1e-3)
        assert torch.isfinite(g2).all() and g2.dtype == dtype
        # Only the final rounding to `dtype` separates the result from lam (a few ulps).
        assert _ratios(w, g2, 1e-3).max() <= 0.02 * (1 + 4 * torch.finfo(dtype).eps)


def test_rejects_bad_arguments():
    p = nn.Parameter(torch.randn(2, 2))
    p.grad = torch.randn(2, 2)
    with pytest.raises(ValueError):
        clip_grads_([p], -0.01)


# ---------------------------------------------------------------------------------------------
# Choosing what to clip: the classifier is excluded


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Sequential(nn.Identity(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.body(self.conv(x).mean((2, 3))))


def test_classifier_of_finds_last_linear():
    net = _Net()
    assert classifier_of(net) is net.head[1]
    with pytest.raises(ValueError):
        classifier_of(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_parameters_to_clip_by_module_and_by_name():
    net = _Net()
    head = set(map(id, net.head[1].parameters()))
    by_module = parameters_to_clip(net, exclude=[classifier_of(net)])
    by_name = parameters_to_clip(net, exclude=["head.1"])
    assert [id(p) for p in by_module] == [id(p) for p in by_name]
    assert not head & set(map(id, by_module))
    assert len(by_module) == len(list(net.parameters())) - 2
    assert len(parameters_to_clip(net, exclude="head")) == 4  # a bare string is one name
    assert len(parameters_to_clip(net)) == 6


def test_parameters_to_clip_rejects_unknown_names():
    net = _Net()
    with pytest.raises(ValueError, match="no submodule 'fc'"):
        parameters_to_clip(net, exclude=["fc"])
    with pytest.raises(ValueError, match="not a submodule"):
        parameters_to_clip(net, exclude=[nn.Linear(8, 4)])


def _agc_step(model: nn.Module, lam: float, eps: float) -> None:
    """What a training loop does: clip everything but the classifier."""
    clip_grads_(parameters_to_clip(model, exclude=[classifier_of(model)]), lam, eps)


def _model_with_big_grads(seed: int) -> _Net:
    torch.manual_seed(seed)
    net = _Net()
    net(torch.randn(4, 3, 8, 8)).square().sum().mul(1e4).backward()  # most units get clipped
    return net


@pytest.mark.parametrize("seed", range(3))
def test_excluded_classifier_is_never_touched(seed):
    net = _model_with_big_grads(seed)
    before = [p.grad.clone() for p in net.head[1].parameters()]
    assert check_model_agc(_agc_step, net, 0.01) == []
    for b, p in zip(before, net.head[1].parameters(), strict=True):
        assert torch.equal(b, p.grad)
    assert _ratios(net.conv.weight.detach(), net.conv.weight.grad, 1e-3).max() <= 0.01 * (1 + 1e-5)


def test_model_check_flags_a_clipped_classifier():
    net = _model_with_big_grads(0)
    violations = check_model_agc(
        lambda m, lam, eps: clip_grads_(m.parameters(), lam, eps), net, 0.01
    )
    assert violations and all("head.1." in v and "classifier" in v for v in violations)


# ---------------------------------------------------------------------------------------------
# Cross-check with timm's reference implementation


def _load_timm_agc():
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed")
    path = f"{spec.submodule_search_locations[0]}/utils/agc.py"
    # Load the single file: `import timm` needs torchvision, which this environment lacks.
    file_spec = importlib.util.spec_from_file_location("_timm_agc", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lam", [0.01, 0.04, 0.16])
def test_matches_timm_adaptive_clip_grad(dtype, lam):
    timm_agc = _load_timm_agc()
    from harness.models.nf_resnet import nf_resnet_tiny

    torch.manual_seed(0)
    net = nf_resnet_tiny().to(dtype)
    for p in net.parameters():  # random weights and grads with spread-out per-unit ratios
        p.data = torch.randn_like(p) * 10 ** torch.empty(()).uniform_(-2, 1).item()
        p.grad = torch.randn_like(p) * 10 ** torch.empty(()).uniform_(-4, 0).item()
    before = [p.grad.clone() for p in net.parameters()]
    ours = [g.clone() for g in before]
    ref = [g.clone() for g in before]

    params = list(net.parameters())
    for p, g in zip(params, ref, strict=True):
        p.grad = g
    timm_agc.adaptive_clip_grad(
        [p for p in params if p is not net.fc.weight and p is not net.fc.bias],
        lam,
        1e-3,
        norm_type=2.0,
    )
    for p, g in zip(params, ours, strict=True):
        p.grad = g
    clip_grads_(parameters_to_clip(net, exclude=["fc"]), lam, 1e-3)

    n_changed = 0
    for a, b, orig in zip(ours, ref, before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        n_changed += not torch.equal(a, orig)
    # The comparison covers both branches: some tensors were clipped, some were not.
    assert 0 < n_changed < len(params) - 2


def test_the_rule_and_its_checks_follow_the_inputs_device():
    # On the meta device, a tensor made on the host that meets an input raises: the same
    # mistake that mixes CPU and CUDA tensors on a GPU, caught without one.
    from harness.agc.rule import unit_checks

    weights, grads = random_agc_case(0)
    for w, g in zip(weights, grads, strict=True):
        w, g = w.to("meta"), g.to("meta")
        checks = unit_checks(w, g, g.clone(), 0.01, 1e-3, 1e-5)
        assert {t.device.type for t in checks.values()} == {"meta"}
    params = [nn.Parameter(w.to("meta")) for w in weights]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.to("meta")
    clip_grads_(params, 0.01)
    assert {p.grad.device.type for p in params} == {"meta"}


def test_a_host_made_tensor_meeting_a_device_one_is_caught_on_meta():
    # The bug the device-side checks replaced: a per-unit list built on the host.
    g = torch.randn(4, 3).to("meta")
    under = torch.linalg.vector_norm(g, dim=1) > 0
    with pytest.raises(RuntimeError, match="device"):
        _ = torch.tensor([True, False, True, True]) & under

"""harness.sparse.masks: the laws of dynamic sparse training, as properties (hypothesis over
shapes, sparsities, ΔT and p0), and the known-bad variants each law catches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.sparse import (
    DynamicSparse,
    SparseConfig,
    active_counts,
    erk_densities,
    maskable,
    prune_fraction,
)
from harness.sparse.known_bad import (
    KNOWN_BAD,
    MomentumKept,
    ReselectsActive,
    UncappedERK,
    WrongDenominator,
    uncapped_erk_densities,
)
from harness.train import RunStart, StepState

PROPS = settings(max_examples=25, deadline=None, database=None)


class Net(nn.Module):
    """A first conv, two hidden layers to mask (a conv and a linear), and a classifier."""

    def __init__(self, c: int = 4, h: int = 12) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.bn = nn.BatchNorm2d(2 * c)
        self.hidden = nn.Linear(2 * c, h)
        self.fc = nn.Linear(h, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(torch.relu(self.stem(x)))))
        return self.fc(torch.relu(self.hidden(x.mean((2, 3)))))


def run_steps(hook: DynamicSparse, steps: int, seed: int = 0, c: int = 4, h: int = 12,
              check=None) -> tuple[nn.Module, torch.optim.Optimizer]:
    """``steps`` SGD-momentum steps of ``Net`` with ``hook`` after each; ``check(hook, opt,
    step)`` after every step."""
    torch.manual_seed(seed)
    model = Net(c, h)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    hook.start(RunStart(model, opt, steps, steps, seed))
    if check:
        check(hook, opt, -1)
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 5, (8,))
    for step in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        hook(StepState(model, opt, step, loss.detach()))
        if check:
            check(hook, opt, step)
    return model, opt


def schedules():
    return st.fixed_dictionaries({
        "sparsity": st.sampled_from([0.0, 0.5, 0.8, 0.9, 0.95]),
        "distribution": st.sampled_from(["erk", "uniform"]),
        "growth": st.sampled_from(["random", "gradient"]),
        "update_interval": st.integers(1, 6),
        "prune_fraction": st.floats(0.05, 1.0),
    })


# ------------------------------------------------------------------------------- the laws


@PROPS
@given(kw=schedules(), seed=st.integers(0, 3))
def test_rate_starts_at_density_never_falls_never_exceeds_one(kw, seed):
    cfg = SparseConfig(stop_fraction=1.0, **kw)
    rates = []
    run_steps(DynamicSparse(cfg), 20, seed, check=lambda h, o, s: rates.append(h.rate()))
    # whole-weight rounding moves it by at most one weight per layer (2 layers)
    assert abs(rates[0] - (1 - cfg.sparsity)) <= 2 / (8 * 4 * 9 + 12 * 8)
    assert all(b >= a - 1e-12 for a, b in zip(rates, rates[1:]))
    assert max(rates) <= 1 + 1e-12


@PROPS
@given(kw=schedules(), seed=st.integers(0, 3))
def test_density_is_exact_and_masked_weights_and_momentum_are_zero_after_every_step(kw, seed):
    cfg = SparseConfig(stop_fraction=1.0, **kw)

    def check(h, opt, step):
        shapes = [tuple(m.shape) for m in h.masks]
        counts = active_counts(shapes, h.densities_for(shapes))
        for m, k, p in zip(h.masks, counts, h._params, strict=True):
            assert int(m.sum()) == k
            assert not p.detach()[~m].any()
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                assert not buf[~m].any()
    run_steps(DynamicSparse(cfg), 15, seed, check=check)


@PROPS
@given(kw=schedules(), seed=st.integers(0, 3))
def test_regrown_weights_start_at_zero_with_zero_momentum(kw, seed):
    cfg = SparseConfig(stop_fraction=1.0, **kw)
    seen = {"updates": 0}

    def check(h, opt, step):
        if h.updates > seen["updates"]:
            seen["updates"] = h.updates
            for grown, p in zip(h._grown, h._params, strict=True):
                assert not p.detach()[grown].any()
                buf = opt.state[p]["momentum_buffer"]
                assert not buf[grown].any()
    run_steps(DynamicSparse(cfg), 12, seed, check=check)


@PROPS
@given(seed=st.integers(0, 50), n=st.integers(1, 30))
def test_prune_and_grow_pick_the_same_weights_whatever_the_memory_layout(seed, n):
    # NHWC training (channels_last) must pick the weights NCHW would for the same values.
    hook = DynamicSparse(SparseConfig(sparsity=0.8, growth="gradient"))
    run_steps(hook, 0, seed)
    mask = hook.masks[0]  # the hidden conv's
    active = int(mask.sum())
    n = min(n, active, mask.numel() - active)
    g = torch.Generator().manual_seed(seed)
    values, grad = torch.randn(mask.shape, generator=g), torch.randn(mask.shape, generator=g)
    picks = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        w = values.contiguous(memory_format=fmt)
        w.grad = grad.contiguous(memory_format=fmt)
        assert w.is_contiguous(memory_format=fmt)
        kept = hook.prune(w, mask, n)
        picks.append((kept, hook.grow(w, kept, n)))
    assert not values.contiguous(memory_format=torch.channels_last).is_contiguous()
    assert torch.equal(picks[0][0], picks[1][0]) and torch.equal(picks[0][1], picks[1][1])


def test_a_static_mask_keeps_the_rate_at_the_density():
    hook = DynamicSparse(SparseConfig(0.9, static=True))
    rates = []
    run_steps(hook, 20, check=lambda h, o, s: rates.append(h.rate()))
    assert len(set(rates)) == 1 and hook.updates == 0
    assert rates[0] == pytest.approx(0.1, abs=2 / (8 * 4 * 9 + 12 * 8))


@PROPS
@given(seed=st.integers(0, 5), sparsity=st.sampled_from([0.5, 0.8, 0.9]))
def test_the_rate_rises_with_more_frequent_updates_and_a_larger_prune_fraction(seed, sparsity):
    def rate(**kw):
        hook = DynamicSparse(SparseConfig(sparsity, stop_fraction=1.0, **kw))
        run_steps(hook, 24, seed, c=8, h=32)
        return hook.rate()

    assert rate(update_interval=2, prune_fraction=0.5) > rate(update_interval=8,
                                                              prune_fraction=0.5)
    assert rate(update_interval=2, prune_fraction=0.5) > rate(update_interval=2,
                                                              prune_fraction=0.05)


@PROPS
@given(shapes=st.lists(st.tuples(st.integers(1, 64), st.integers(1, 64), st.sampled_from([1, 3])),
                       min_size=1, max_size=6),
       density=st.floats(0.01, 0.99))
def test_erk_densities_hold_the_target_count_and_none_exceeds_one(shapes, density):
    shapes = [(a, b, k, k) for a, b, k in shapes]
    dens = erk_densities(shapes, density)
    total = sum(math.prod(s) for s in shapes)
    assert max(dens) <= 1 + 1e-12 and min(dens) >= 0
    assert sum(d * math.prod(s) for d, s in zip(dens, shapes)) == pytest.approx(density * total)


def test_erk_gives_small_layers_more_density_and_caps_them():
    shapes = [(4, 3, 3, 3), (64, 64, 3, 3), (10, 64)]
    dens = erk_densities(shapes, 0.1)
    assert dens[0] == 1.0 and dens[2] > dens[1]  # the tiny layer is made dense
    assert max(uncapped_erk_densities(shapes, 0.1)) > 1  # without the cap: over-full


def test_prune_fraction_decays_by_cosine_to_zero():
    cfg = SparseConfig(0.9, prune_fraction=0.5)
    assert prune_fraction(0, cfg, 100) == 0.5
    assert prune_fraction(50, cfg, 100) == pytest.approx(0.25)
    assert prune_fraction(100, cfg, 100) == pytest.approx(0.0)


def test_updates_stop_at_the_stop_fraction():
    hook = DynamicSparse(SparseConfig(0.9, update_interval=2, stop_fraction=0.5))
    run_steps(hook, 20)
    assert hook.updates == 4 and hook.curve[-1][0] == 8  # steps 2, 4, 6, 8; none from 10


def test_gradient_growth_picks_the_largest_dense_gradients():
    hook = DynamicSparse(SparseConfig(0.5, growth="gradient", distribution="uniform"))
    model, _ = run_steps(hook, 1)
    p = hook._params[0]
    kept = hook.masks[0].clone()
    p.grad = torch.zeros_like(p)
    inactive = (~kept).nonzero()[:3]
    for idx in inactive:
        p.grad[tuple(idx)] = 10.0
    grown = hook.grow(p, kept, 3)
    assert int(grown.sum()) == 3 and all(bool(grown[tuple(i)]) for i in inactive)


def test_masks_cover_conv_and_linear_weights_with_the_ends_policy():
    names = [n for n, _ in maskable(Net())]
    assert names == ["conv.weight", "hidden.weight"]  # stem and classifier stay dense
    assert [n for n, _ in maskable(Net(), "sparse")] == ["stem.weight", "conv.weight",
                                                          "hidden.weight", "fc.weight"]


def test_the_record_is_json_ready_and_the_hook_pickles_before_start():
    import json
    import pickle

    hook = pickle.loads(pickle.dumps(DynamicSparse(SparseConfig(0.9, update_interval=3))))
    run_steps(hook, 10)
    rec = json.loads(json.dumps(hook.record()))["sparse"]
    assert rec["updates"] == 2 and rec["rs_curve"][0] == [0, pytest.approx(hook.curve[0][1])]
    with pytest.raises(ValueError, match="bound to another run"):
        run_steps(hook, 1)


@pytest.mark.parametrize("kw, match", [
    (dict(sparsity=1.0), "sparsity=1.0"), (dict(sparsity=-0.1), "sparsity=-0.1"),
    (dict(sparsity=0.9, update_interval=0), "update_interval=0"),
    (dict(sparsity=0.9, prune_fraction=0.0), "prune_fraction=0.0"),
    (dict(sparsity=0.9, prune_fraction=1.5), "prune_fraction=1.5"),
    (dict(sparsity=0.9, distribution="erdos"), "distribution='erdos'"),
    (dict(sparsity=0.9, growth="momentum"), "growth='momentum'"),
])
def test_bad_settings_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        SparseConfig(**kw)


def test_a_model_with_nothing_to_mask_is_a_clear_error():
    with pytest.raises(ValueError, match="no maskable layer"):
        maskable(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2)))


# ------------------------------------------------------------------ the known-bad variants


def _laws_broken(variant: type[DynamicSparse]) -> set[str]:
    """Which laws a variant breaks, over a few seeded schedules."""
    broken: set[str] = set()
    with_a_tiny_layer = [(4, 3, 3, 3), (64, 64, 3, 3), (10, 64)]
    dens = variant(SparseConfig(0.9)).densities_for(with_a_tiny_layer)
    if max(dens) > 1 or sum(min(d, 1) * math.prod(s) for d, s in zip(dens, with_a_tiny_layer)) \
            < 0.1 * sum(math.prod(s) for s in with_a_tiny_layer) * (1 - 1e-9):
        broken.add("erk_cap")
    for seed, growth in ((0, "random"), (1, "gradient")):
        cfg = SparseConfig(0.9, growth=growth, update_interval=2, stop_fraction=1.0)
        hook = variant(cfg)
        rates = []

        def check(h, opt, step, rates=rates):
            rates.append(h.rate())
            shapes = [tuple(m.shape) for m in h.masks]
            target = [max(1, min(math.prod(s), round(d * math.prod(s))))
                      for d, s in zip(h.densities_for(shapes), shapes)]
            if any(d > 1 for d in h.densities_for(shapes)):
                broken.add("erk_cap")
            for m, k, p in zip(h.masks, target, h._params):
                if int(m.sum()) != k:
                    broken.add("density")
                buf = opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None and buf[~m].any():
                    broken.add("momentum")
        run_steps(hook, 12, seed, c=8, h=32, check=check)
        if abs(rates[0] - 0.1) > 2 / sum(m.numel() for m in hook.masks):
            broken.add("rate_start")
    return broken


def test_the_harness_breaks_no_law():
    assert _laws_broken(DynamicSparse) == set()


@pytest.mark.parametrize("variant, law", [
    (MomentumKept, "momentum"), (ReselectsActive, "density"), (UncappedERK, "erk_cap"),
    (WrongDenominator, "rate_start"),
])
def test_each_known_bad_variant_breaks_its_law(variant, law):
    assert law in _laws_broken(variant)
    assert variant in KNOWN_BAD.values()

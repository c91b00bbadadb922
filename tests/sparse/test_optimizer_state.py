"""Regrowth and pruning reset every per-weight optimizer state, whatever the optimizer: SGD's
momentum, AdamW's two moments, anything else shaped like the weight (a regrown weight must not
start with a kick from gradients it never should have had); and RigL grows where the dense
gradient is largest, never where the (all-zero) inactive weights are largest."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.sparse import DynamicSparse, SparseConfig
from harness.sparse.masks import shaped_state
from harness.train import OPTIMIZERS, RunStart, StepState, TrainConfig, make_optimizer
from tests.sparse.test_masks import Net

PROPS = settings(max_examples=40, deadline=None, database=None)


def _train_to_an_update(optimizer: torch.optim.Optimizer | str, growth: str, seed: int = 0):
    """Real steps of ``Net`` under ``optimizer`` (a name: the one ``train()`` builds), the hook
    updating the masks at the third. Returns (hook, optimizer, masks before the update, every
    shaped state just before the update's hook call, i.e. after that step's optimizer step)."""
    torch.manual_seed(seed)
    model = Net()
    opt = (make_optimizer(model, TrainConfig(optimizer=optimizer, lr=0.01))
           if isinstance(optimizer, str) else optimizer(model))
    hook = DynamicSparse(SparseConfig(0.6, growth=growth, update_interval=3, prune_fraction=0.5,
                                      stop_fraction=1.0))
    hook.start(RunStart(model, opt, 10, 10, seed))
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 5, (8,))
    for step in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if step == 2:  # the update's step: snapshot what the optimizer step left
            masks = [m.clone() for m in hook.masks]
            before = [[s.clone() for s in shaped_state(opt, p)] for p in hook._params]
        hook(StepState(model, opt, step, loss.detach()))
    assert hook.updates == 1
    return hook, opt, masks, before


def _check_state_reset(hook, opt, masks, before) -> None:
    for name, p, old, new, grown, snap in zip(hook.names, hook._params, masks, hook.masks,
                                              hook._grown, before, strict=True):
        # a weight pruned and regrown by the same update counts as regrown: it restarts too
        dropped, kept = old & ~new, old & new & ~grown
        assert grown.any() and dropped.any(), name  # the update did regrow and prune
        states = shaped_state(opt, p)
        assert len(states) == len(snap) > 0, name
        for s, s0 in zip(states, snap, strict=True):
            # the optimizer step filled the inactive entries from the dense gradient: the reset
            # is what zeroes them (not a vacuous check)
            assert s0[grown].any(), name
            assert not s[grown].any(), f"{name}: regrown weights keep optimizer state"
            assert not s[dropped].any(), f"{name}: pruned weights keep optimizer state"
            assert not s[~new].any(), f"{name}: inactive weights keep optimizer state"
            # the surviving weights' state is untouched, non-zero wherever it was
            assert torch.equal(s[kept], s0[kept]), name
            assert bool((s0[kept] != 0).any()), name


@pytest.mark.parametrize("growth", ["random", "gradient"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_regrowth_and_pruning_reset_every_optimizer_state_of_train_s_optimizers(optimizer,
                                                                                growth):
    hook, opt, masks, before = _train_to_an_update(optimizer, growth)
    if optimizer == "adamw":  # both moments are per-weight state, the step count is not
        assert {k for k, v in opt.state[hook._params[0]].items()
                if v.shape == hook._params[0].shape} == {"exp_avg", "exp_avg_sq"}
    _check_state_reset(hook, opt, masks, before)


@pytest.mark.parametrize("build", [
    lambda m: torch.optim.Adam(m.parameters(), lr=0.01, amsgrad=True),  # + max_exp_avg_sq
    lambda m: torch.optim.RMSprop(m.parameters(), lr=0.01, momentum=0.9, centered=True),
], ids=["adam-amsgrad", "rmsprop-centered"])
def test_the_reset_is_generic_over_state_names(build):
    _check_state_reset(*_train_to_an_update(build, "gradient"))


def test_scalar_state_is_left_alone():
    hook, opt, _, _ = _train_to_an_update("adamw", "gradient")
    for p in hook._params:
        assert float(opt.state[p]["step"]) == 3  # one count per tensor: not the regrown's own


# ----------------------------------------------------------- RigL grows by gradient magnitude


def _bound_hook(seed: int) -> DynamicSparse:
    torch.manual_seed(seed)
    model = Net(c=4, h=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hook = DynamicSparse(SparseConfig(0.7, growth="gradient", distribution="uniform"))
    hook.start(RunStart(model, opt, 10, 10, seed))
    return hook


def test_rigl_grows_exactly_the_inactive_weights_of_largest_gradient():
    hook = _bound_hook(0)
    p, kept = hook._params[0], hook.masks[0].clone()
    inactive = (~kept).flatten().nonzero().flatten()
    n = 5
    # A dense gradient, largest on the active weights (growth must skip them), then on the
    # *last* n inactive positions in memory order: a score of all ties (the inactive weights,
    # all zero) would let topk return the first ones instead.
    grad = torch.linspace(0.01, 0.02, p.numel())  # distinct, small, positive everywhere
    grad[kept.flatten()] += 100.0
    want = inactive[-n:]
    grad[want] = torch.arange(n, dtype=grad.dtype) + 10.0
    p.grad = (-grad).view_as(p)  # magnitude, not sign
    assert not p.detach()[~kept].any()  # the inactive weights are all zero, as after masking
    grown = hook.grow(p, kept, n)
    expect = torch.zeros(p.numel(), dtype=torch.bool)
    expect[want] = True
    assert torch.equal(grown.flatten(), expect), "RigL did not grow the top-|grad| inactive weights"


@PROPS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 200), layer=st.integers(0, 1))
def test_rigl_growth_is_the_top_gradient_magnitudes_among_inactive_weights(seed, n, layer):
    hook = _bound_hook(0)
    p, kept = hook._params[layer], hook.masks[layer].clone()
    n = min(n, int((~kept).sum()))
    g = torch.Generator().manual_seed(seed)
    p.grad = torch.randn(p.shape, generator=g)  # dense: non-zero on every weight
    grown = hook.grow(p, kept, n)
    score = p.grad.abs()
    assert int(grown.sum()) == n and not (grown & kept).any()
    # every grown weight's |grad| is at least every passed-over inactive weight's
    passed_over = ~kept & ~grown
    if passed_over.any():
        assert float(score[grown].min()) >= float(score[passed_over].max())

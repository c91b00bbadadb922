"""harness.decompose.tucker: Tucker-2 shapes and exactness (properties over strides, paddings,
dilations, biases), rank rules, the layer error, the model walk and its report, pruning and the
ratio search, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from harness.decompose import (
    DecomposeSettings,
    decomposable,
    decompose_model,
    energy_rank,
    l1_prune,
    largest_ratio,
    layer_error,
    reconstruct,
    tucker2,
    tucker2_factors,
    tucker2_ranks,
    vbmf_rank,
)

PROPS = settings(max_examples=20, deadline=None, database=None)


def conv_cases():
    return st.fixed_dictionaries({
        "c_in": st.integers(2, 8), "c_out": st.integers(2, 8), "k": st.sampled_from([1, 3, 5]),
        "stride": st.integers(1, 2), "padding": st.integers(0, 2), "dilation": st.integers(1, 2),
        "bias": st.booleans(), "seed": st.integers(0, 100)})


def make_conv(c_in, c_out, k, stride, padding, dilation, bias, seed):
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation,
                     bias=bias).double()


@PROPS
@given(case=conv_cases(), r=st.tuples(st.integers(1, 8), st.integers(1, 8)))
def test_the_chain_equals_one_conv_with_the_reconstructed_weight(case, r):
    conv = make_conv(**case)
    ranks = (min(r[0], case["c_out"]), min(r[1], case["c_in"]))
    chain = tucker2(conv, ranks)
    assert [m.weight.shape for m in chain] == [
        (ranks[1], case["c_in"], 1, 1), (ranks[0], ranks[1], case["k"], case["k"]),
        (case["c_out"], ranks[0], 1, 1)]
    core, u_out, u_in = tucker2_factors(conv.weight, ranks)
    x = torch.randn(2, case["c_in"], 11, 11, dtype=torch.float64)
    expected = F.conv2d(x, reconstruct(core, u_out, u_in), conv.bias, conv.stride,
                        conv.padding, conv.dilation)
    torch.testing.assert_close(chain(x), expected, rtol=1e-9, atol=1e-9)


@PROPS
@given(case=conv_cases())
def test_full_ranks_reconstruct_the_conv_exactly(case):
    conv = make_conv(**case)
    chain = tucker2(conv, (case["c_out"], case["c_in"]))
    x = torch.randn(2, case["c_in"], 9, 9, dtype=torch.float64)
    torch.testing.assert_close(chain(x), conv(x), rtol=1e-8, atol=1e-8)


def test_the_error_falls_as_the_rank_grows():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    errors = [layer_error(conv, tucker2(conv, (r, r)), 16, 8) for r in (2, 4, 8, 12, 16)]
    assert all(a > b for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-5


def test_vbmf_recovers_a_planted_rank():
    rng = np.random.default_rng(0)
    for rank in (3, 7):
        low = rng.standard_normal((60, rank)) @ rng.standard_normal((rank, 90)) * 3
        noisy = low + 0.1 * rng.standard_normal((60, 90))
        assert vbmf_rank(noisy) == rank
    assert vbmf_rank(0.1 * rng.standard_normal((40, 40))) >= 1  # pure noise: at least one


def test_energy_rank_keeps_the_asked_energy():
    m = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.1]))
    assert energy_rank(m, 0.6) == 1 and energy_rank(m, 0.99) == 3
    assert energy_rank(m, 1.0) == 4
    ranks = tucker2_ranks(torch.randn(8, 6, 3, 3), "energy", 0.5)
    assert 1 <= ranks[0] <= 8 and 1 <= ranks[1] <= 6


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.c = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.c(F.relu(self.dw(F.relu(self.b(F.relu(self.a(x)))))))
        return self.fc(x.mean((2, 3)))


def test_decompose_model_reports_every_conv_and_leaves_the_input_alone():
    model = Small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new, report = decompose_model(model, DecomposeSettings(threshold=1.0, rank_rule="energy",
                                                           keep=0.6), resolution=8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert report.layer.tolist() == ["a", "b", "dw", "c"]
    dw = report.set_index("layer").loc["dw"]
    assert not dw.decomposed and "grouped" in dw.reason
    assert report.params_after.sum() == sum(
        p.numel() for n, m in new.named_modules() if isinstance(m, nn.Conv2d)
        for p in m.parameters(recurse=False))
    assert report.params_before.sum() == sum(
        p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())
    assert new(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_the_threshold_selects_layers():
    model = Small()
    _, strict = decompose_model(model, DecomposeSettings(1e-9, "energy", 0.5), resolution=8)
    assert not strict.decomposed.any()
    _, forced = decompose_model(model, DecomposeSettings(1e-9, "energy", 0.5), resolution=8,
                                force=True)
    assert forced.decomposed.sum() == 3  # every conv but the depthwise one
    assert (forced[forced.decomposed].reason == "forced").all()


def test_pruning_zeroes_the_smallest_weights_and_the_search_finds_the_largest_ratio():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3)
    pruned = l1_prune(conv, 0.5)
    assert int((pruned.weight == 0).sum()) == 72 and int((conv.weight == 0).sum()) == 0
    kept = pruned.weight[pruned.weight != 0].abs()
    assert kept.min() >= conv.weight.abs().flatten().kthvalue(72).values
    # A constructed error: grows linearly with the ratio, crosses 0.3 at 0.6.
    ratio = largest_ratio(lambda r: r / 2, 0.3, steps=12)
    assert 0.59 < ratio < 0.6
    assert largest_ratio(lambda r: 1.0, 0.3) == 0.0 and largest_ratio(lambda r: 0.0, 0.3) == 0.95


def test_bad_input_is_a_clear_error():
    with pytest.raises(TypeError, match="needs an nn.Conv2d, got Linear"):
        tucker2(nn.Linear(3, 3), (1, 1))
    with pytest.raises(ValueError, match=r"ranks \(9, 1\) outside"):
        tucker2(nn.Conv2d(4, 8, 3), (9, 1))
    with pytest.raises(ValueError, match=r"ranks \(1, 0\) outside"):
        tucker2(nn.Conv2d(4, 8, 3), (1, 0))
    with pytest.raises(ValueError, match="threshold=0"):
        DecomposeSettings(threshold=0)
    with pytest.raises(ValueError, match="grouped"):
        tucker2(nn.Conv2d(4, 4, 3, groups=4), (2, 2))
    with pytest.raises(ValueError, match="ratio=1.0"):
        l1_prune(nn.Conv2d(2, 2, 1), 1.0)
    assert decomposable(nn.Conv2d(1, 4, 3)) and decomposable(nn.Conv2d(4, 4, 3)) is None


def test_the_pruning_search_measures_the_error_against_the_unpruned_conv():
    """With full ranks the chain is the pruned conv itself, so the reported error is exactly
    the pruning's own error against the original weights: a search that compared the chain
    with the pruned conv would see ~0 and prune 95% of every layer."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, padding=1)
    for threshold in (0.3, 10.0):
        settings = DecomposeSettings(threshold=threshold, rank_rule="energy", keep=1.0)
        _, report = decompose_model(nn.Sequential(conv), settings, resolution=8, in_channels=6,
                                    prune=True)
        row = report.iloc[0]
        own = layer_error(conv, l1_prune(conv, row.prune_ratio), 6, 8, settings.seed)
        assert row.prune_ratio > 0 and own > 0.01
        assert row.error == pytest.approx(own, rel=1e-4), "the error ignores the pruning's own"
        assert row.error < threshold
    # at the threshold of 0.3 the search stops well short of zeroing 95% of the weights
    settings = DecomposeSettings(threshold=0.3, rank_rule="energy", keep=1.0)
    _, report = decompose_model(nn.Sequential(conv), settings, 8, in_channels=6, prune=True)
    assert report.prune_ratio.iloc[0] < 0.9


def planted_tucker_weight(t: int, s: int, k: int, ranks: tuple[int, int],
                          seed: int) -> torch.Tensor:
    """core (R_out, R_in, k, k) ×₀ U_out (T, R_out) ×₁ U_in (S, R_in), Gaussian: its mode-0
    unfolding has rank R_out and its mode-1 unfolding rank R_in (generic, R ≤ k² × the other)."""
    g = torch.Generator().manual_seed(seed)
    core = torch.randn(*ranks, k, k, generator=g, dtype=torch.float64)
    u_out = torch.randn(t, ranks[0], generator=g, dtype=torch.float64)
    u_in = torch.randn(s, ranks[1], generator=g, dtype=torch.float64)
    return reconstruct(core, u_out, u_in)


@PROPS
@given(t=st.integers(3, 12), s=st.integers(3, 12), k=st.sampled_from([3, 5]),
       r=st.tuples(st.integers(1, 11), st.integers(1, 11)), seed=st.integers(0, 100))
@example(t=16, s=6, k=3, r=(2, 5), seed=0)  # tried first: a swap fails here, unshrunk
def test_each_mode_gets_its_own_rank(t, s, k, r, seed):
    """Non-square channels and asymmetric ranks: the out-channel rank is the mode-0 unfolding's,
    the in-channel rank the mode-1 unfolding's, and the factors, the chain and the report put
    each in its own mode."""
    r_out, r_in = min(r[0], t - 1), min(r[1], s - 1)
    # each unfolding's rank is at most k² × the other mode's
    r_out = min(r_out, k * k * r_in)
    ranks = (r_out, min(r_in, k * k * r_out))
    weight = planted_tucker_weight(t, s, k, ranks, seed)
    assert tucker2_ranks(weight, "energy", keep=1.0) == ranks
    core, u_out, u_in = tucker2_factors(weight, ranks)
    assert (core.shape, u_out.shape, u_in.shape) == ((*ranks, k, k), (t, ranks[0]),
                                                     (s, ranks[1]))
    conv = nn.Conv2d(s, t, k, padding=k // 2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(weight)
    new, report = decompose_model(nn.Sequential(conv), DecomposeSettings(1e-4, "energy", 1.0),
                                  resolution=7, in_channels=s, force=True)
    row = report.iloc[0]
    assert (row.rank_out, row.rank_in) == ranks
    first, middle, last = new[0]
    assert (first.in_channels, first.out_channels) == (s, ranks[1])
    assert middle.weight.shape == (*ranks, k, k)
    assert (last.in_channels, last.out_channels) == (ranks[0], t)
    assert row.error < 1e-6  # the planted ranks are exact: nothing is lost


def test_the_vbmf_rule_puts_each_rank_in_its_mode():
    weight = planted_tucker_weight(16, 6, 3, (2, 5), seed=0)
    weight = weight + 1e-3 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1),
                                         dtype=torch.float64)
    assert tucker2_ranks(weight, "vbmf") == (2, 5)
    assert tucker2_ranks(weight.transpose(0, 1), "vbmf") == (5, 2)

"""harness.decompose.tucker: Tucker-2 shapes and exactness (properties over strides, paddings,
dilations, biases), rank rules, the layer error, the model walk and its report, pruning and the
ratio search, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
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

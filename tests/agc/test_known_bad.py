"""Known-bad AGC implementations (`agc.rule`, claims/README.md §2): the property suite must reject each.

They live in ``harness.agc.known_bad`` (the ``agc.rule`` claim runs them too), as faithfully
as their descriptions allow, so that the harness keeps proving that ``check_agc_invariants``
can tell them from ``clip_grads_``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from hypothesis import find, settings
from hypothesis import strategies as st

from harness.agc import check_agc_invariants, clip_grads_, random_agc_case
from harness.agc.known_bad import (
    KNOWN_BAD,
    dim0_linear_agc,
    inverted_trigger_agc,
    no_eps_floor_agc,
)

# A fixed input that exposes all three: a linear weight whose rows differ from its columns, one
# small-gradient unit, and a zero-initialised gain (as NF-ResNet's SkipInit) with a gradient.
FIXED_WEIGHTS = [
    torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
    torch.tensor([3.0, 4.0]),
    torch.tensor(0.0),
]
FIXED_GRADS = [
    torch.tensor([[1.0, 1.0], [0.0, 0.0]]),  # row 0: ratio 1.41 > lam; row 1: zero
    torch.tensor([0.01, 0.0]),  # ratio 0.002 < lam: must stay untouched
    torch.tensor(0.5),  # zero weight: must be clipped to lam * eps, not to 0
]
LAM = 0.1


def _violations(fn) -> list[str]:
    return check_agc_invariants(fn, FIXED_WEIGHTS, FIXED_GRADS, LAM, 1e-3)


def test_reference_passes_fixed_input():
    assert _violations(clip_grads_) == []


def test_inverted_trigger_is_rejected():
    v = _violations(inverted_trigger_agc)
    # It leaves the large linear row alone and scales the small bias gradient up.
    assert any("(2, 2): bound" in m for m in v)
    assert any("(2,): untouched" in m for m in v)


def test_dim0_linear_norm_is_rejected():
    v = _violations(dim0_linear_agc)
    # Column-wise clipping leaves row 0 at norm lam * sqrt(2): over the bound.
    assert v and all(m.startswith("tensor 0 (2, 2)") for m in v)
    assert any("bound" in m for m in v)


def test_no_eps_floor_is_rejected():
    v = _violations(no_eps_floor_agc)
    # The zero-weight gain's gradient is clipped to exactly 0 instead of lam * eps.
    assert v and all(m.startswith("tensor 2 ()") for m in v)
    assert any("magnitude" in m for m in v)
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    no_eps_floor_agc([p], LAM)
    assert torch.equal(p.grad, torch.zeros(3))  # the parameter is frozen for good


# The suite also finds each bug by itself, from the seeded stress cases the claim check uses.
def _find_counterexample(fn) -> int:
    return find(
        st.integers(0, 10_000),
        lambda seed: bool(check_agc_invariants(fn, *random_agc_case(seed), 0.01)),
        settings=settings(max_examples=200, deadline=None, database=None),
    )


def test_generated_inputs_expose_every_known_bad_implementation():
    for name, fn in KNOWN_BAD.items():
        seed = _find_counterexample(fn)
        assert check_agc_invariants(fn, *random_agc_case(seed), 0.01), name
    # ... while the reference passes the very same cases.
    for seed in range(30):
        assert check_agc_invariants(clip_grads_, *random_agc_case(seed), 0.01) == []


def test_known_bad_fail_on_most_seeded_cases():
    # Not a corner case: each bug shows up on most random stress inputs.
    for name, fn in KNOWN_BAD.items():
        failing = sum(bool(check_agc_invariants(fn, *random_agc_case(s), 0.01)) for s in range(20))
        assert failing >= 10, (name, failing)

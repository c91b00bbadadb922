"""Conflict shares leave out tensors whose two gradients are both below the norm floor
(``GRAD_NORM_FLOOR``, relative to the step's gradient norms): an attention key bias has a zero
gradient in exact arithmetic (softmax ignores the shift it adds to a row of scores), so its
measured cosine is float32 noise, not a conflict. Real conflicts are still counted."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import models
from harness import train as tr
from harness.data import synthetic_dataset
from harness.supernet.sandwich import (
    GRAD_NORM_FLOOR,
    Sandwich,
    SandwichConfig,
    counted_cosines,
    summarize_conflicts,
)


def _measured(g1s: list[torch.Tensor], g2s: list[torch.Tensor]) -> dict:
    """The conflict record of one logged step with these (g₁, g₂) per tensor."""
    sw = Sandwich(SandwichConfig())
    sw.names = [f"t{i}" for i in range(len(g1s))]
    sw._params = [nn.Parameter(torch.zeros_like(g)) for g in g1s]
    for p, g2 in zip(sw._params, g2s, strict=True):
        p.grad = g2.clone()
    sw._measure(0, [g.clone() for g in g1s])
    return sw.record()["conflict"]


def test_the_floor_leaves_out_noise_level_tensors_only():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, generator=g)
    noise = torch.randn(50, generator=g)
    g1s = [a,                      # a real conflict
           a,                      # agreement
           1e-13 * noise,          # both at float-noise level, "conflicting": left out
           1e-13 * a]              # tiny g₁ but a real g₂: counted (only *both* below)
    g2s = [-0.5 * a + 0.1 * noise, 0.5 * a + 0.1 * noise, -1e-13 * noise, -a]
    c = _measured(g1s, g2s)
    assert [v < 0 for v in c["tensor_cos"][0]] == [True, False, True, True]
    s = summarize_conflicts(c)
    # Without the floor the share would be 3/4 with 4 pairs: this fails if it is removed.
    assert (s.tensor_share, s.pairs, s.below_floor) == (2 / 3, 3, 1)
    assert counted_cosines(c)[0][2] is None and counted_cosines(c)[0][3] is not None
    assert GRAD_NORM_FLOOR > 0
    assert summarize_conflicts(c, floor=0.0).tensor_share == 3 / 4  # what the floor removes


def test_a_record_without_norms_is_refused_not_counted_whole():
    c = _measured([torch.ones(3)], [-torch.ones(3)])
    del c["tensor_norms"]
    with pytest.raises(ValueError, match="without gradient norms"):
        summarize_conflicts(c)


# Whole numbers (times a scale below): every value and its 2^±20 scalings stay normal float32,
# where scaling by a power of two is exact (subnormals would round).
FLOATS = st.integers(-1000, 1000).map(float)


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.tuples(st.lists(FLOATS, min_size=3, max_size=3),
                          st.lists(FLOATS, min_size=3, max_size=3),
                          st.sampled_from([1.0, 1e-9, 1e-13])), min_size=1, max_size=6),
       st.integers(-20, 20), st.integers(-20, 20))
def test_the_counted_pairs_are_scale_free(tensors, i, j):
    # A GradScaler (or the lr, or a loss scale) multiplies g₁ and g₂ by powers of two: which
    # tensors count must not change. Exact: such scalings are exact in float32 and float64.
    g1s = [torch.tensor(a) * s for a, _, s in tensors]
    g2s = [torch.tensor(b) * s for _, b, s in tensors]
    base = counted_cosines(_measured(g1s, g2s))
    scaled = counted_cosines(_measured([g * 2.0 ** i for g in g1s], [g * 2.0 ** j for g in g2s]))
    assert [[c is None for c in row] for row in base] == [[c is None for c in row]
                                                          for row in scaled]
    for x, y in zip(base[0], scaled[0], strict=True):
        assert x == y or (x is None and y is None)


# --------------------------------------------------------------- a real hybrid supernet


@pytest.fixture(scope="module")
def record():
    data = synthetic_dataset(resolution=8, train_size=64, test_size=16, seed=1,
                             difficulty="medium")
    cfg = tr.TrainConfig(epochs=1, batch_size=16, lr=0.05, warmup_epochs=0, max_steps=3,
                         check_every=1, momentum=0.0, weight_decay=0.0)
    rec = tr.train(functools.partial(models.build, "hybrid_supernet_tiny", resolution=8),
                   data.train, data.test, cfg, progress=False,
                   step_fn=Sandwich(SandwichConfig(log_every=1)))
    return rec.extra["conflict"]


def test_key_biases_are_left_out_and_real_conflicts_still_counted(record):
    c = record
    names = c["names"]
    key_bias = {i for i, n in enumerate(names) if n.endswith(".k.bias")}
    assert len(key_bias) >= 2 and c["steps"] == [0, 1, 2]
    counted = counted_cosines(c)
    noise = []  # the key biases' measured cosines (None: a block no subnet reached)
    for raw, kept, norms, totals in zip(c["tensor_cos"], counted, c["tensor_norms"], c["norms"],
                                        strict=True):
        measured = sorted(i for i in key_bias if raw[i] is not None)
        assert measured, "float32 left no noise gradient on any key bias"
        for i in measured:
            noise.append(raw[i])
            assert kept[i] is None, f"{names[i]} counted in the conflict share"
            # noise: far below the floor, relative to the step's norms (the floor's margin)
            assert all(n < 1e-3 * GRAD_NORM_FLOOR * t for n, t in zip(norms[i], totals))
        # every other measured tensor counts: the floor removes nothing genuine
        assert [i for i, (r, k) in enumerate(zip(raw, kept, strict=True))
                if r is not None and k is None] == measured
    assert any(v < 0 for v in noise)  # noise "conflicts" the share would otherwise count
    values = [v for row in counted for v in row if v is not None]
    assert any(v < 0 for v in values), "no real conflict counted"
    s = summarize_conflicts(c)
    assert s.pairs == len(values) and s.below_floor == len(noise)
    assert s.tensor_share == sum(v < 0 for v in values) / len(values)
    assert math.isclose(s.mean_cos, sum(c["cos"]) / len(c["cos"]))

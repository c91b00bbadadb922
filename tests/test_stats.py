import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import stats


def test_summary_interval_contains_mean_and_matches_t():
    s = stats.summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.std == 1.0 and s.n == 3
    # t_{0.975, 2} = 4.303; half-width = 4.303 / sqrt(3)
    assert s.ci_high - s.mean == pytest.approx(4.3027 / math.sqrt(3), rel=1e-3)


def test_single_value_has_no_interval():
    s = stats.summarize([0.5])
    assert s.mean == 0.5 and math.isnan(s.ci_low)


def test_within_margin_needs_evidence_not_a_single_lucky_run():
    assert not stats.within_margin([0.9], [0.5], margin=0.01).holds  # one run bounds nothing
    far_apart = stats.within_margin([0.80, 0.81, 0.79], [0.90, 0.91, 0.89], margin=0.02)
    assert not far_apart.holds and far_apart.difference == pytest.approx(-0.1)
    close = stats.within_margin([0.895, 0.905, 0.90], [0.90, 0.905, 0.895], margin=0.02)
    assert close.holds


def test_beats_is_one_sided_and_respects_noise():
    assert stats.beats([0.9, 0.91, 0.92], [0.5, 0.51, 0.52]).holds
    assert not stats.beats([0.5, 0.9], [0.6, 0.7]).holds  # too noisy to tell
    assert not stats.beats([0.5, 0.51, 0.52], [0.9, 0.91, 0.92]).holds


def test_deterministic_runs_compare_exactly():
    assert stats.beats([0.6, 0.6], [0.5, 0.5]).holds
    assert not stats.beats([0.5, 0.5], [0.5, 0.5]).holds


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=3, max_size=20), st.floats(0.1, 10),
       st.floats(-50, 50))
def test_pearson_invariant_to_positive_affine_maps(x, scale, shift):
    x = np.array(x)
    y = x**3 + np.arange(len(x))
    if np.ptp(x) < 1e-6 or np.ptp(y) < 1e-6:
        return
    a, b = stats.pearson(x, y), stats.pearson(scale * x + shift, y)
    assert a.r == pytest.approx(b.r, abs=1e-6)
    assert a.ci_low <= a.r <= a.ci_high


def test_perfect_correlation():
    r = stats.pearson([1, 2, 3, 4], [2, 4, 6, 8])
    assert r.r == pytest.approx(1.0)


def test_one_sided_comparison_can_hold_be_refuted_or_stay_undecided():
    from harness.stats import within_margin

    assert within_margin([0.70, 0.71, 0.70], [0.70, 0.70, 0.71], 0.02).decided is True
    clearly_worse = within_margin([0.60, 0.61, 0.60], [0.70, 0.70, 0.71], 0.02)
    assert clearly_worse.decided is False and clearly_worse.upper < -0.02
    noisy = within_margin([0.55, 0.70], [0.65, 0.66], 0.02)
    assert noisy.decided is None and noisy.lower < -0.02 < noisy.upper

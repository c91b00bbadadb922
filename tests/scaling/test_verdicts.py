"""The scaling claims' decision rules can fail: fed measurements that contradict the paper,
each check reports NOT_REPRODUCED; and a broken scaler breaks scaling.complexity_laws."""

from __future__ import annotations

from pathlib import Path

import pandas  # noqa: F401  (pytester in-process runs must not re-import C extensions)
import pytest
import torch  # noqa: F401

import harness.environment  # noqa: F401
import harness.references  # noqa: F401
import harness.results  # noqa: F401
from harness.scaling import strategies
from harness.scaling import verdicts as claims

CLAIMS = Path(__file__).resolve().parents[2] / "claims" / "test_scaling.py"
GOOD_ACC = {"base": [0.40, 0.41, 0.40], "w": [0.50, 0.51, 0.50], "dwr": [0.55, 0.551, 0.552],
            "dWr": [0.552, 0.553, 0.551]}
FAST = {"base": 1.0, "w": 1.5, "dwr": 3.0, "dWr": 2.0}


def test_dWr_verdict_holds_on_the_papers_pattern():
    j = claims.dWr_verdict(GOOD_ACC, FAST, FAST, margin=0.02, judge_speed=True)
    assert j.holds and j.inference_ratio == pytest.approx(2 / 3) and j.comparable.holds


def test_dWr_verdict_fails_when_dWr_is_clearly_less_accurate():
    worse = {**GOOD_ACC, "dWr": [0.45, 0.455]}
    j = claims.dWr_verdict(worse, FAST, FAST, margin=0.02, judge_speed=False)
    assert j.holds is False and "acc dWr−dwr" in j.reason and "clearly outside" in j.reason


def test_dWr_verdict_is_undecided_when_the_seeds_cannot_tell():
    noisy = {**GOOD_ACC, "dWr": [0.45, 0.60], "dwr": [0.50, 0.62]}
    j = claims.dWr_verdict(noisy, FAST, FAST, margin=0.02, judge_speed=False)
    assert j.holds is None and "undecided" in j.reason and "detects ±" in j.reason
    # ...but on a GPU a slower dWr refutes it whatever the accuracies say
    assert claims.dWr_verdict(noisy, {**FAST, "dWr": 4.0}, FAST, 0.02, judge_speed=True).holds is False


def test_dWr_verdict_fails_on_gpu_when_dWr_is_slower():
    slow = {**FAST, "dWr": 4.0}
    assert not claims.dWr_verdict(GOOD_ACC, slow, FAST, 0.02, judge_speed=True).holds
    assert claims.dWr_verdict(GOOD_ACC, slow, FAST, 0.02, judge_speed=False).holds  # not judged


def test_dWr_verdict_without_w_decides_the_same_and_reports_no_w():
    # The smoke design trains only what the verdict reads (dwr, dWr); w is context.
    no_w_acc = {k: v for k, v in GOOD_ACC.items() if k != "w"}
    no_w_times = {k: v for k, v in FAST.items() if k != "w"}
    with_w = claims.dWr_verdict(GOOD_ACC, FAST, FAST, 0.02, judge_speed=True)
    without = claims.dWr_verdict(no_w_acc, no_w_times, no_w_times, 0.02, judge_speed=True)
    assert without.holds == with_w.holds and without.dWr_beats_w is None
    assert "beats w" not in without.reason and "w/dwr" not in without.reason
    worse = {**no_w_acc, "dWr": [0.45, 0.455]}
    assert claims.dWr_verdict(worse, no_w_times, no_w_times, 0.02, judge_speed=False).holds is False


def test_order_verdict():
    assert claims.order_verdict({"a": [0.6, 0.61], "b": [0.5, 0.51]},
                                {"a": [0.7, 0.71], "b": [0.6, 0.61]}).holds
    flipped = claims.order_verdict({"a": [0.6, 0.61], "b": [0.5, 0.51]},
                                   {"a": [0.6, 0.61], "b": [0.7, 0.71]})
    assert flipped.holds is False and (flipped.better, flipped.worse) == ("a", "b")
    noisy_after = claims.order_verdict({"a": [0.6, 0.61], "b": [0.5, 0.51]},
                                       {"a": [0.7, 0.5], "b": [0.6, 0.61]})
    assert noisy_after.holds is None
    unclear = claims.order_verdict({"a": [0.6, 0.4], "b": [0.5, 0.52]},
                                   {"a": [0.7, 0.71], "b": [0.6, 0.61]})
    assert unclear.holds is None and "not established" in unclear.reason  # undecided, never a pass


def broken_exponents(strategy, alpha=None):
    """Fast compound scaling with e_d and e_w swapped: a plausible typo."""
    e_d, e_w, e_r = ORIGINAL(strategy, alpha)
    return (e_w, e_d, e_r) if strategy in ("dWr", "fast") else (e_d, e_w, e_r)


ORIGINAL = strategies.scaling_exponents


@pytest.mark.slow
def test_wrong_fast_compound_exponents_break_the_complexity_laws_claim(pytester, monkeypatch):
    monkeypatch.setattr(strategies, "scaling_exponents", broken_exponents)
    result = pytester.runpytest_inprocess(
        str(CLAIMS), "-k", "complexity_laws", "--profile", "smoke", "--device", "cpu",
        "--import-mode=importlib", "--results-dir", str(pytester.path / "results"),
        "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)  # the committed reference says REPRODUCED
    result.stdout.fnmatch_lines(["*scaling.complexity_laws*NOT_REPRODUCED*REGRESSED*",
                                 "*verdict: NOT_REPRODUCED but reference REPRODUCED*"])


def test_dWr_verdict_does_not_judge_a_dispatch_bound_speed_half():
    slow = {**FAST, "dWr": 4.0}  # dWr slower: refuted on a GPU, unless the timing is not trusted
    epoch = {"dWr": 2.0, "dwr": 3.0}
    j = claims.dWr_verdict(GOOD_ACC, slow, epoch, 0.01, judge_speed=True)
    assert j.holds is False
    bound = claims.dWr_verdict(GOOD_ACC, slow, epoch, 0.01, judge_speed=True,
                               dispatch_bound="dWr", dispatch_note="raise the batch")
    assert bound.holds is None and "dispatch-bound" in bound.reason
    worse = {**GOOD_ACC, "dWr": [0.30, 0.31, 0.30]}  # the accuracy half still refutes
    assert claims.dWr_verdict(worse, slow, epoch, 0.01, judge_speed=True,
                              dispatch_bound="dWr").holds is False


# --------------------------------------------------------------------- complexity laws

WORKED = (15.61e9, 68.1e6, 26.5e6)


def test_complexity_laws_verdict_holds_only_on_the_published_figures():
    assert claims.complexity_laws_verdict(12, [], *WORKED, 0.06).holds is True
    assert claims.complexity_laws_verdict(12, ["dr ×2: acts 2.1x"], *WORKED, 0.06).holds is False
    off = (15.70e9, 68.1e6, 26.5e6)  # one figure off at the published precision
    j = claims.complexity_laws_verdict(12, [], *off, 0.06)
    assert j.holds is False and j.worked == (15.7, 68.1, 26.5)
    remark = claims.EFFICIENTNET_REMARK_MAX_GAP
    assert claims.complexity_laws_verdict(12, [], *WORKED, remark).holds is False


# ------------------------------------------------------------------ acts predict runtime

def _r(acts: float, flops: float, params: float) -> dict:
    return {"acts": acts, "flops": flops, "params": params}


def test_acts_predict_verdict_needs_high_r_above_both_others_in_both_phases():
    good = {"inference": _r(0.95, 0.8, 0.5), "train_step": _r(0.93, 0.7, 0.4)}
    j = claims.acts_predict_verdict(good, dispatch_bound=False)
    assert j.holds is True and j.acts_best
    low = {**good, "train_step": _r(claims.ACTS_R_MIN - 0.01, 0.7, 0.4)}
    j = claims.acts_predict_verdict(low, dispatch_bound=False)
    assert j.holds is False and j.acts_best  # best predictor, but not "almost perfectly"
    flops_wins = {**good, "inference": _r(0.95, 0.96, 0.5)}
    j = claims.acts_predict_verdict(flops_wins, dispatch_bound=False)
    assert j.holds is False and not j.acts_best
    j = claims.acts_predict_verdict(good, dispatch_bound=True, dispatch_note="launch-bound")
    assert j.holds is None and "launch-bound" in j.reason


def test_acts_predict_verdict_names_a_missing_phase():
    with pytest.raises(ValueError, match="train_step"):
        claims.acts_predict_verdict({"inference": _r(0.95, 0.8, 0.5)}, dispatch_bound=False)


# ------------------------------------------------------------------------- w fastest

def test_w_fastest_verdict_needs_w_first_in_every_group():
    assert claims.w_fastest_verdict(9, 9, 9, 9, 5, dispatch_bound=False).holds is True
    for counts in ((8, 9, 9), (9, 8, 9), (9, 9, 8)):
        assert claims.w_fastest_verdict(9, *counts, 5, dispatch_bound=False).holds is False
    assert claims.w_fastest_verdict(9, 9, 9, 9, 5, dispatch_bound=True).holds is None
    with pytest.raises(ValueError):
        claims.w_fastest_verdict(9, 10, 9, 9, 5, dispatch_bound=False)
    with pytest.raises(ValueError):
        claims.w_fastest_verdict(0, 0, 0, 0, 0, dispatch_bound=False)

"""harness.agc.verdicts: each rule fed fabricated grids (tests.agc.grids), including ones where
its claim must fail or cannot be decided."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.agc import verdicts
from harness.claim import Claim, Verdict
from harness.evidence import Evidence
from tests.agc.grids import AGC, BN, CFG, LARGE, NF, PAPER_LIKE, SMALL, D, fake_runs

STABILIZES = Claim("agc.stabilizes_large_batch", "AGC stabilizes large batch", "test")


def verdict(judgement) -> Verdict:
    ev = Evidence(STABILIZES, "cpu")
    return ev.decide(judgement.holds, judgement.reason)


def test_paper_like_grid_reproduces_every_grid_claim():
    runs = fake_runs(PAPER_LIKE)
    assert verdicts.best_lambdas(runs) == {SMALL: 0.16, LARGE: 0.01}
    j = verdicts.judge_stabilizes_large_batch(runs, CFG)
    assert verdict(j) is Verdict.REPRODUCED, j.reason
    assert j.nf_diverged == 2 and j.nf.mean == pytest.approx(0.1)
    assert j.largest_batch == LARGE and j.best_lambda == 0.01
    assert verdicts.judge_small_batch_benefit(runs).holds
    assert verdicts.judge_lambda_shrinks(runs, CFG).holds
    assert verdicts.judge_skip_final_layer(runs).holds


def test_stabilizes_fails_when_agc_diverges_too():
    runs = fake_runs({**PAPER_LIKE, (AGC, LARGE, 0.01): [D, D], (AGC, LARGE, 0.16): [D, 0.5]})
    j = verdicts.judge_stabilizes_large_batch(runs, CFG)
    assert verdict(j) is Verdict.NOT_REPRODUCED
    assert j.agc_diverged >= 1


def test_stabilizes_fails_when_nf_is_fine_without_agc():
    runs = fake_runs({**PAPER_LIKE, (NF, LARGE, None): [0.785, 0.79]})
    assert verdict(verdicts.judge_stabilizes_large_batch(runs, CFG)) is Verdict.NOT_REPRODUCED


def test_stabilizes_fails_when_agc_is_far_below_bn():
    runs = fake_runs({**PAPER_LIKE, (AGC, LARGE, 0.01): [0.70, 0.71]})
    assert verdict(verdicts.judge_stabilizes_large_batch(runs, CFG)) is Verdict.NOT_REPRODUCED


def test_stabilizes_says_nothing_when_nothing_was_learned():
    # Everything at chance and NF diverged: "AGC within a margin of BN" is then vacuous.
    flat = {k: [0.1, 0.1] for k in PAPER_LIKE}
    runs = fake_runs({**flat, (NF, LARGE, None): [D, D]})
    j = verdicts.judge_stabilizes_large_batch(runs, CFG)
    assert j.holds is False and "not learned" in j.reason


def test_benefit_rule_fails_when_the_benefit_is_larger_at_small_batch():
    runs = fake_runs({**PAPER_LIKE, (NF, SMALL, None): [D, D], (NF, LARGE, None): [0.77, 0.78]})
    j = verdicts.judge_small_batch_benefit(runs)
    assert j.holds is False and j.benefit_smallest_batch.mean > j.benefit_largest_batch.mean


def test_lambda_rule_fails_when_the_best_lambda_grows_or_is_tied():
    grows = fake_runs({**PAPER_LIKE, (AGC, SMALL, 0.01): [0.82, 0.83],
                       (AGC, LARGE, 0.16): [0.79, 0.80]})
    assert verdicts.best_lambdas(grows) == {SMALL: 0.01, LARGE: 0.16}
    assert verdicts.judge_lambda_shrinks(grows, CFG).holds is None  # 0.795 vs 0.7825: not established
    clearly = fake_runs({**PAPER_LIKE, (AGC, SMALL, 0.01): [0.82, 0.83],
                         (AGC, LARGE, 0.16): [0.90, 0.905]})
    j = verdicts.judge_lambda_shrinks(clearly, CFG)
    assert j.holds is False and "detectable" in j.reason
    tied = fake_runs({**PAPER_LIKE, (AGC, LARGE, 0.16): [0.78, 0.785]})
    j = verdicts.judge_lambda_shrinks(tied, CFG)
    assert j.holds is None and "tie" in j.reason


def test_skip_final_rule_fails_when_clipping_the_head_is_as_good():
    runs = fake_runs({**PAPER_LIKE, (AGC, LARGE, 0.01, True): [0.781, 0.786]})
    assert verdicts.judge_skip_final_layer(runs).holds is None  # as good: undecided
    better = fake_runs({**PAPER_LIKE, (AGC, LARGE, 0.01, True): [0.85, 0.855]})
    assert verdicts.judge_skip_final_layer(better).holds is False  # clipping clearly better


def test_bn_costs_rule():
    tiny = fake_runs({(NF, 4, None): [0.70, 0.71], (NF, 64, None): [0.705, 0.715],
                      (BN, 4, None): [0.50, 0.52], (BN, 64, None): [0.72, 0.73]})
    assert verdicts.judge_bn_costs(1.3, tiny, 0.03, 0.25).holds
    assert verdicts.judge_bn_costs(0.7, tiny, 0.03, 0.25).holds is False  # NF clearly slower
    # near 1 the CPU cannot tell which step is faster: undecided, not refuted
    assert verdicts.judge_bn_costs(0.95, tiny, 0.03, 0.25).holds is None
    assert verdicts.judge_bn_costs(1.04, tiny, 0.03, 0.25).holds is None
    assert verdicts.judge_bn_costs(0.95, tiny, 0.03, 0.02).holds is False  # a steadier clock
    bn_fine = fake_runs({(NF, 4, None): [0.70, 0.71], (NF, 64, None): [0.705, 0.715],
                         (BN, 4, None): [0.72, 0.725], (BN, 64, None): [0.72, 0.73]})
    assert not verdicts.judge_bn_costs(1.3, bn_fine, 0.03, 0.25).holds


@given(ratio=st.floats(0.01, 100.0), margin=st.floats(0.0, 0.9))
def test_step_time_decision_is_monotone_and_symmetric_about_one(ratio, margin):
    decided = verdicts.step_time_decision(ratio, margin)
    assert decided is (True if ratio > 1 + margin else False if ratio < 1 - margin else None)
    # a slower BN step can only move the decision towards "NF faster"
    order = {False: 0, None: 1, True: 2}
    assert order[verdicts.step_time_decision(ratio * 1.5, margin)] >= order[decided]


def test_undecided_comparisons_are_inconclusive_with_the_detectable_difference():
    noisy = fake_runs({**PAPER_LIKE, (AGC, LARGE, 0.01): [0.70, 0.86]})  # wide seeds
    j = verdicts.judge_stabilizes_large_batch(noisy, CFG)
    assert j.holds is None and "detectable ±" in j.reason
    assert verdict(j) is Verdict.INCONCLUSIVE

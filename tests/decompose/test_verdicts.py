"""harness.decompose.verdicts on fabricated tables: each rule holds where the claim holds, is
refuted where it must fail, and stays undecided where the seeds cannot tell."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from harness.data import DataSpec
from harness.decompose import verdicts as v
from harness.decompose.study import DecompStudyConfig, DeployConfig
from harness.train import TrainConfig

# The real configs with their default margins (what the claims run with): a margin changed in
# the config is what these rules are tested with. Only the fields without a default are set
# here; none of them is a margin (chance: the 10-class synthetic data's, 0.1).
M = DecompStudyConfig(model="vgg_tiny", model_overrides=(), data=DataSpec("synthetic"),
                      resolution=16, train=TrainConfig(), seeds=(0, 1, 2), threshold=0.1)
D = DeployConfig(batch=8, sparsities=(0.5, 0.9), channels=(4, 64), sizes=(8, 32), grid_batch=8)


def damage(drop_of, seeds=(0, 1, 2), layers=5, keeps=(0.5, 0.7, 0.9)) -> pd.DataFrame:
    """Layer i's error grows with i; its drop is ``drop_of(seed, i, keep)``."""
    rows = [dict(seed=s, layer=f"l{i}", keep=k, error=0.1 * i + (1 - k),
                 acc_drop=drop_of(s, i, k))
            for s in seeds for i in range(layers) for k in keeps]
    return pd.DataFrame(rows)


def test_damage_ranking_holds_when_error_orders_the_drop():
    table = damage(lambda s, i, k: 0.01 * i * (1 + s) + (1 - k) * 0.01)
    judged = v.judge_damage_ranking(table, M)
    assert judged.holds is True and all(r == pytest.approx(1) for r in judged.rho)


def test_damage_ranking_is_refuted_when_the_order_is_reversed():
    table = damage(lambda s, i, k: 0.5 - 0.01 * i - s * 0.001)
    assert v.judge_damage_ranking(table, M).holds is False


def test_damage_ranking_ranks_layers_within_a_level_not_rank_levels():
    # The drop follows the rank level only (lower keep, more damage) and reverses the layers:
    # pooled over levels it looks correlated; within a level it is not.
    table = damage(lambda s, i, k: (1 - k) - 0.001 * i)
    judged = v.judge_damage_ranking(table, M)
    assert judged.pooled_rho > 0.3 and judged.pooled_p < 0.01
    assert judged.holds is False


def test_damage_ranking_is_undecided_on_noisy_seeds():
    flips = {0: 1, 1: -1, 2: 1}
    table = damage(lambda s, i, k: flips[s] * 0.01 * i, seeds=(0, 1, 2))
    assert v.judge_damage_ranking(table, dataclasses.replace(M, damage_rho=0.2)).holds is None


def strategies(original, all_acc, sel_acc, sel_removed, pruned_removed=None, layers=2,
               all_removed=0.9):
    rows = []
    for s, (o, a, se, r) in enumerate(zip(original, all_acc, sel_acc, sel_removed)):
        pr = r if pruned_removed is None else pruned_removed[s]
        rows += [dict(seed=s, strategy="original", acc=o, acc_drop=0.0, removed_share=0.0,
                      layers=0),
                 dict(seed=s, strategy="all", acc=a, acc_drop=o - a, removed_share=all_removed,
                      layers=5),
                 dict(seed=s, strategy="selective", acc=se, acc_drop=o - se, removed_share=r,
                      layers=layers),
                 dict(seed=s, strategy="prune+selective", acc=se, acc_drop=o - se,
                      removed_share=pr, layers=layers)]
    return pd.DataFrame(rows)


def test_selective_holds_when_all_costs_and_selective_keeps_and_removes():
    t = strategies([0.70, 0.71, 0.69], [0.20, 0.25, 0.22], [0.70, 0.705, 0.69],
                   [0.3, 0.32, 0.31])
    assert v.judge_selective(t, M).holds is True


def test_selective_that_decomposes_nothing_is_refuted():
    t = strategies([0.70, 0.71, 0.69], [0.1, 0.1, 0.1], [0.70, 0.71, 0.69], [0.0, 0.0, 0.0],
                   layers=0)
    judged = v.judge_selective(t, M)
    assert judged.holds is False and "removes 0.0% <" in judged.reason


def test_selective_that_loses_accuracy_is_refuted():
    t = strategies([0.70, 0.71, 0.69], [0.1, 0.1, 0.1], [0.50, 0.52, 0.51], [0.3, 0.3, 0.3])
    assert v.judge_selective(t, M).holds is False


def test_selective_is_uninformative_when_the_network_did_not_learn():
    t = strategies([0.11, 0.1, 0.12], [0.0, 0.0, 0.0], [0.11, 0.1, 0.12], [0.3, 0.3, 0.3])
    judged = v.judge_selective(t, M)
    assert judged.holds is False and "not above chance" in judged.reason


def test_pruning_helps_holds_refutes_and_is_untested_without_layers():
    base = dict(original=[0.7] * 3, all_acc=[0.1] * 3, sel_acc=[0.7] * 3)
    helps = strategies(**base, sel_removed=[0.30, 0.31, 0.29], pruned_removed=[0.35, 0.36, 0.33])
    assert v.judge_pruning_helps(helps, M).holds is True
    same = strategies(**base, sel_removed=[0.30, 0.31, 0.29], pruned_removed=[0.30, 0.31, 0.29])
    assert v.judge_pruning_helps(same, M).holds is False
    none = strategies(**base, sel_removed=[0.0] * 3, layers=0)
    judged = v.judge_pruning_helps(none, M)
    assert judged.holds is None and "never runs" in judged.reason


def test_pruning_no_speedup_reads_the_highest_sparsity():
    table = pd.DataFrame([dict(sparsity=0.5, time_ratio=0.5, saved_ratio=1.0, gzip_ratio=0.8),
                          dict(sparsity=0.9, time_ratio=1.03, saved_ratio=1.0, gzip_ratio=0.2)])
    assert v.judge_pruning_no_speedup(table, D).holds is True
    faster = table.assign(time_ratio=[1.0, 0.6])
    assert v.judge_pruning_no_speedup(faster, D).holds is False  # sparse kernels would do this
    rounds = table.assign(time_ratio=[1.0, 0.85], time_low=[0.9, 0.7], time_high=[1.1, 1.02])
    assert v.judge_pruning_no_speedup(rounds, D).holds is True  # one loaded round: no change
    every = rounds.assign(time_high=[1.1, 0.88])
    assert v.judge_pruning_no_speedup(every, D).holds is False
    no_shrink = table.assign(gzip_ratio=[1.0, 0.9])
    assert v.judge_pruning_no_speedup(no_shrink, D).holds is False


def grid(times):
    cells = [(4, 8), (4, 32), (64, 8), (64, 32)]
    return pd.DataFrame([dict(channels=c, size=s, flops_ratio=1 / c + 1 / 9, time_ratio=t)
                         for (c, s), t in zip(cells, times)])


def test_depthwise_needs_slow_small_cells_and_fast_large_ones():
    assert v.judge_depthwise(grid([1.4, 1.0, 0.6, 0.5]), D).holds is True
    assert v.judge_depthwise(grid([0.9, 0.8, 0.6, 0.5]), D).holds is False  # always faster
    assert v.judge_depthwise(grid([1.4, 1.3, 1.2, 1.1]), D).holds is False  # never faster
    judged = v.judge_depthwise(grid([1.4, 1.0, 0.6, 0.5]),
                               dataclasses.replace(D, flops_far_fewer=0.3))
    assert judged.holds is False and "not ≤ 0.3" in judged.reason


def test_dispatch_bound_deciding_cells_cannot_decide_the_depthwise_verdict():
    judged = v.judge_depthwise(grid([1.4, 1.0, 0.6, 0.5]), D)
    assert v.depthwise_verdict(judged, D) == (True, judged.reason)
    holds, reason = v.depthwise_verdict(judged, D, dispatch_bound="4 ch 8 px")
    assert holds is None and "4 ch 8 px" in reason and "dispatch-bound" in reason
    refuted = v.judge_depthwise(grid([0.9, 0.8, 0.6, 0.5]), D)
    assert v.depthwise_verdict(refuted, D, dispatch_bound="4 ch 8 px")[0] is None
    # Where the flops already refute the claim, the timing does not decide: no escape to None.
    few = v.judge_depthwise(grid([1.4, 1.0, 0.6, 0.5]), dataclasses.replace(D, flops_far_fewer=0.3))
    assert v.depthwise_verdict(few, dataclasses.replace(D, flops_far_fewer=0.3), "4 ch 8 px")[0] is False


def test_precision_speedup_needs_a_real_fp16_gain():
    assert v.judge_precision_speedup({"fp16": 1.8, "bf16": 1.7}, D).holds is True
    assert v.judge_precision_speedup({"fp16": 1.05}, D).holds is False
    assert v.judge_precision_speedup({"bf16": 2.0}, D).holds is False  # fp16 unmeasured


@settings(max_examples=50, deadline=None, database=None)
@given(flops=st.floats(0.01, 0.99), time=st.floats(0.01, 1.5),
       much_smaller=st.sampled_from([D.much_smaller, 0.25]))
@example(flops=0.2, time=0.7, much_smaller=D.much_smaller)  # saves 0.3 of 0.8 flops saved
@example(flops=0.2, time=0.7, much_smaller=0.25)
def test_decomposed_speedup_rule_is_the_stated_inequality(flops, time, much_smaller):
    margins = dataclasses.replace(D, much_smaller=much_smaller)
    judged = v.judge_decomposed_speedup(flops, time, margins)
    assert judged.holds == ((1 - time) <= much_smaller * (1 - flops))


def test_decomposed_speedup_reads_its_margin():
    # 30% of the time saved for 80% of the flops: 0.375 of it, "much smaller" under the
    # configured 0.5, not under 0.25
    assert D.much_smaller * 0.8 >= 0.3
    assert v.judge_decomposed_speedup(0.2, 0.7, D).holds is True
    stricter = dataclasses.replace(D, much_smaller=0.25)
    judged = v.judge_decomposed_speedup(0.2, 0.7, stricter)
    assert judged.holds is False and "≤ 0.25" in judged.reason


def test_decomposed_speedup_without_a_flops_saving_is_untested():
    judged = v.judge_decomposed_speedup(1.2, 0.9, D)
    assert judged.holds is None and math.isclose(judged.flops_saving, -0.2)

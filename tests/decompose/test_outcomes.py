"""The decomposition claims on every outcome their tables can hold: every seed's network
diverged, a single seed, a NaN metric, an empty cell; and the deployment tables with a NaN
timing, a single cell or none. Each claim's tables and plot are written to tmp_path as the
claims write them (the study's plots draw with Agg), and each judge returns a verdict with a
reason, never a crash; a table a judge cannot do without raises a ValueError that names it.

The tables have the study's columns (``damage_table``, ``compare_strategies``, each row
tagged with its seed; ``deploy.depthwise_grid`` merged with ``depthwise_doubling``)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.claim import Claim, Tolerance, Verdict
from harness.data import DataSpec
from harness.decompose import deploy, study
from harness.decompose import verdicts as v
from harness.evidence import Evidence
from harness.odds import judge_odds
from harness.stats import mean
from harness.train import TrainConfig
from tests.outcomes import assert_a_reported_result

CFG = study.DecompStudyConfig(model="vgg_tiny", model_overrides=(), data=DataSpec("synthetic"),
                              resolution=16, train=TrainConfig(), seeds=(0, 1, 2),
                              threshold=0.1)
DEP = study.DeployConfig(batch=8, sparsities=(0.5, 0.9), channels=(4, 64), sizes=(8, 32),
                         grid_batch=8)
CHANCE = CFG.chance
NOT_REPRODUCED = (Verdict.NOT_REPRODUCED, Verdict.INCONCLUSIVE)
TOL = Tolerance(why="test: any value", abs=1.0)
SEEDS = (0, 1, 2)


def damage(drop_of, error_of=lambda i, k: 0.1 * i + (1 - k), seeds=SEEDS, layers=5,
           keeps=CFG.energies) -> pd.DataFrame:
    """``damage_table`` rows per seed: layer i's error grows with i, its drop is
    ``drop_of(seed, i, keep)``."""
    return pd.DataFrame([dict(layer=f"features.{i}", keep=k, error=error_of(i, k),
                              acc_drop=drop_of(s, i, k), params_removed=100 * i, seed=s)
                         for s in seeds for i in range(layers) for k in keeps])


def strategies(original, all_acc, selective, removed, pruned, layers=2) -> pd.DataFrame:
    """``compare_strategies`` rows per seed (one value per seed in each list)."""
    rows = []
    for s, (o, a, se, r, p) in enumerate(zip(original, all_acc, selective, removed, pruned,
                                             strict=True)):
        rows += [dict(strategy="original", acc=o, acc_drop=0.0, removed_share=0.0, layers=0),
                 dict(strategy="all", acc=a, acc_drop=o - a, removed_share=0.9, layers=5),
                 dict(strategy="selective", acc=se, acc_drop=o - se, removed_share=r,
                      layers=layers),
                 dict(strategy="prune+selective", acc=se, acc_drop=o - se, removed_share=p,
                      layers=layers)]
        for row in rows[-4:]:
            row["seed"] = s
    return pd.DataFrame(rows)


def good_damage(seeds=SEEDS) -> pd.DataFrame:
    return damage(lambda s, i, k: 0.01 * i * (1.5 - k) + 0.001 * s, seeds=seeds)


def good_strategies(n: int = 3) -> pd.DataFrame:
    return strategies([0.8, 0.81, 0.8][:n], [0.5, 0.52, 0.51][:n], [0.795, 0.805, 0.795][:n],
                      [0.3, 0.31, 0.3][:n], [0.33, 0.34, 0.33][:n])


# Every seed's network diverged. Finite weights at chance: every accuracy at chance, so no
# single-layer decomposition costs anything; non-finite weights: every layer error is NaN, so
# no layer passes the threshold and nothing is decomposed.
AT_CHANCE = (damage(lambda s, i, k: 0.0),
             strategies([CHANCE] * 3, [CHANCE] * 3, [CHANCE] * 3, [0.3] * 3, [0.33] * 3))
NON_FINITE = (damage(lambda s, i, k: 0.0, error_of=lambda i, k: math.nan),
              strategies([CHANCE] * 3, [CHANCE] * 3, [CHANCE] * 3, [0.0] * 3, [0.0] * 3,
                         layers=0))


# --------------------------------------------------------------- the claims' reporting path


def layer_error_predicts_damage(dmg, strat, ev):
    j = v.judge_damage_ranking(dmg, CFG)
    ev.metric("rho_mean", mean(j.rho), TOL, samples=j.rho)
    ev.metric("rho_pooled", j.pooled_rho, TOL)
    ev.metric("layers", dmg.layer.nunique(), TOL)
    ev.table("damage.csv", dmg)
    ev.figure("damage.png", study.plot_damage(dmg))
    return j, judge_odds(v.judge_damage_ranking, dmg, CFG, resamples=20)


def selective_keeps_error_low(dmg, strat, ev):
    j = v.judge_selective(strat, CFG)
    ev.metric("acc_all", mean(j.all_acc), TOL, samples=j.all_acc)
    ev.metric("acc_selective", mean(j.selective_acc), TOL, samples=j.selective_acc)
    ev.metric("removed_selective", mean(j.selective_removed), TOL, samples=j.selective_removed)
    ev.metric("layers_selective", mean(v.strategy_values(strat, "selective", "layers")), TOL)
    ev.table("strategies.csv", strat)
    ev.figure("strategies.png", study.plot_strategies(strat))
    return j, judge_odds(v.judge_selective, strat, CFG, resamples=20)


def pruning_helps_decomposition(dmg, strat, ev):
    j = v.judge_pruning_helps(strat, CFG)
    ev.metric("removed_pruned", mean(j.pruned_removed), TOL, samples=j.pruned_removed)
    acc = v.strategy_values(strat, "prune+selective", "acc")
    ev.metric("acc_pruned", mean(acc), TOL, samples=acc)
    return j, judge_odds(v.judge_pruning_helps, strat, CFG, resamples=20)


CLAIMS = {"layer_error_predicts_damage": layer_error_predicts_damage,
          "selective_keeps_error_low": selective_keeps_error_low,
          "pruning_helps_decomposition": pruning_helps_decomposition}


def report(name: str, dmg: pd.DataFrame, strat: pd.DataFrame, tmp_path) -> Evidence:
    """What the claim records and writes (both plots: drawn for every claim here); the
    evidence, with its verdict."""
    ev = Evidence(Claim(f"decomp.{name}", "test", "test", trained=True), "cpu", tmp_path / name)
    ev.figure("damage_all.png", study.plot_damage(dmg))
    ev.figure("strategies_all.png", study.plot_strategies(strat))
    j, odds = CLAIMS[name](dmg, strat, ev)
    ev.decide(j.holds, j.reason, odds)
    return assert_a_reported_result(ev)


# ------------------------------------------------------------------------------ outcomes


def test_the_fabricated_tables_reproduce_every_claim(tmp_path):
    for name in CLAIMS:
        ev = report(name, good_damage(), good_strategies(), tmp_path)
        assert ev.verdict is Verdict.REPRODUCED, (name, ev.reason)


@pytest.mark.parametrize("weights", ["at_chance", "non_finite"])
@pytest.mark.parametrize("name", CLAIMS)
def test_every_seed_diverged_is_a_result_with_its_plots(name, weights, tmp_path):
    dmg, strat = AT_CHANCE if weights == "at_chance" else NON_FINITE
    ev = report(name, dmg, strat, tmp_path)
    if name == "pruning_helps_decomposition" and weights == "at_chance":
        # It counts parameters, not accuracy: a network at chance still has them to remove
        # (the claims' baseline records that it did not learn).
        assert ev.verdict in (*NOT_REPRODUCED, Verdict.REPRODUCED)
    else:
        assert ev.verdict in NOT_REPRODUCED, ev.reason
    ev.baseline(v.strategy_values(strat, "original", "acc"), CHANCE, "the trained network")
    assert ev.measurements["baseline_learned"].value == 0


def test_non_finite_layer_errors_are_named_on_the_plot():
    ax = study.plot_damage(NON_FINITE[0]).axes[0]
    assert any("no finite points" in t.get_text() for t in ax.texts)


@pytest.mark.parametrize("name", CLAIMS)
def test_a_single_seed_is_a_result_and_decides_nothing(name, tmp_path):
    ev = report(name, good_damage(seeds=(0,)), good_strategies(1), tmp_path)
    assert ev.verdict is Verdict.INCONCLUSIVE, ev.reason


def test_a_nan_layer_error_is_left_out_and_named(tmp_path):
    dmg = good_damage()
    dmg.loc[0, "error"] = math.nan
    ev = report("layer_error_predicts_damage", dmg, good_strategies(), tmp_path)
    # That seed's rank level has no ρ (Spearman of a NaN is NaN, and NaN levels are left out);
    # the pooled ρ over every point is NaN, and says so.
    assert "pooled: ρ nan" in ev.reason
    ax = study.plot_damage(dmg).axes[0]
    assert any("not drawn: 1 row(s) with a NaN error" in t.get_text() for t in ax.texts)


@pytest.mark.parametrize("column, row", [("acc", 2), ("removed_share", 2), ("removed_share", 3)])
@pytest.mark.parametrize("name", ["selective_keeps_error_low", "pruning_helps_decomposition"])
def test_a_nan_in_a_judged_strategy_cell_is_never_a_pass(name, column, row, tmp_path):
    strat = good_strategies()
    strat.loc[row, column] = math.nan  # seed 0's selective (2) or prune+selective (3) row
    reads = {"selective_keeps_error_low": {("acc", 2), ("removed_share", 2)},
             "pruning_helps_decomposition": {("removed_share", 2), ("removed_share", 3)}}
    ev = report(name, good_damage(), strat, tmp_path)
    if (column, row) in reads[name]:
        assert ev.verdict in NOT_REPRODUCED and "nan" in ev.reason, ev.reason


# (claim, what is emptied, what the judge does): "raises: <match>", or the verdicts it may give
EMPTY = [
    ("selective_keeps_error_low", "selective", NOT_REPRODUCED),
    ("pruning_helps_decomposition", "prune+selective",
     "raises: prune\\+selective and selective need the same seeds .* got 0 and 3 rows"),
    ("layer_error_predicts_damage", "seed 1", (Verdict.REPRODUCED,)),  # two seeds still judge
    ("layer_error_predicts_damage", "layers", (Verdict.INCONCLUSIVE,)),  # < 3 layers: no ρ
]


@pytest.mark.parametrize("name, emptied, expected", EMPTY, ids=[f"{n}-{e}" for n, e, _ in EMPTY])
def test_an_empty_cell_plots_and_is_judged_or_named(name, emptied, expected, tmp_path):
    dmg, strat = good_damage(), good_strategies()
    if emptied == "seed 1":
        dmg = dmg[dmg.seed != 1]
    elif emptied == "layers":
        dmg = dmg[dmg.layer.isin(["features.0", "features.1"])]
    else:
        strat = strat[strat.strategy != emptied]
    if isinstance(expected, str):
        ev = Evidence(Claim(f"decomp.{name}", "test", "test"), "cpu", tmp_path)
        ev.figure("strategies.png", study.plot_strategies(strat))
        assert all(p.exists() for p in ev.artifacts)
        with pytest.raises(ValueError, match=expected.removeprefix("raises: ")):
            CLAIMS[name](dmg, strat, ev)
    else:
        assert report(name, dmg, strat, tmp_path).verdict in expected


def test_empty_tables_still_plot_and_say_so(tmp_path):
    ev = Evidence(Claim("decomp.test", "test", "test"), "cpu", tmp_path)
    for fig in (study.plot_damage(good_damage().iloc[:0]),
                study.plot_strategies(good_strategies().iloc[:0])):
        assert any("no rows to draw" in t.get_text() for t in fig.axes[0].texts)
        ev.figure(f"{len(ev.artifacts)}.png", fig)
    assert all(p.exists() for p in ev.artifacts)


# ------------------------------------------------------------------- the deployment tables


def depthwise(times) -> pd.DataFrame:
    cells = [(4, 8), (4, 32), (64, 8), (64, 32)]
    return pd.DataFrame([dict(channels=c, size=s, flops_ratio=1 / c + 1 / 9, time_ratio=t,
                              doubling=1.9, dispatch_bound=False)
                         for (c, s), t in zip(cells, times)])


@pytest.mark.parametrize("grid", [depthwise([math.nan, 1.0, 0.6, 0.5]),
                                  depthwise([1.4, 1.0, 0.6, math.nan]), depthwise([1.4]),
                                  depthwise([1.4, 1.0, 0.6])],
                         ids=["nan_small", "nan_large", "single_cell", "missing_cell"])
def test_the_depthwise_table_and_heat_map_survive_nan_and_missing_cells(grid, tmp_path):
    ev = Evidence(Claim("deploy.depthwise_not_always_faster", "test", "test"), "cpu", tmp_path)
    j = v.judge_depthwise(grid, DEP)
    ev.table("depthwise.csv", grid)
    ev.table("crossover.csv", deploy.crossover(grid))
    ev.figure("depthwise.png", study.plot_depthwise(grid))
    ev.decide(j.holds, j.reason)
    assert all(p.exists() for p in ev.artifacts) and ev.reason
    if grid.time_ratio.isna().any():  # a NaN time decides nothing in its favour
        assert ev.verdict is Verdict.NOT_REPRODUCED and "nan" in ev.reason


def test_the_deployment_judges_name_an_empty_table():
    empty = depthwise([1.0]).iloc[:0]
    with pytest.raises(ValueError, match="depthwise grid has no cells"):
        v.judge_depthwise(empty, DEP)
    pruning = pd.DataFrame(columns=["sparsity", "time_ratio", "saved_ratio", "gzip_ratio"])
    with pytest.raises(ValueError, match="pruning table has no rows"):
        v.judge_pruning_no_speedup(pruning, DEP)
    study.plot_depthwise(empty)  # an empty heat map still draws


def test_nan_deployment_timings_are_results_not_passes():
    pruning = pd.DataFrame([dict(sparsity=0.5, time_ratio=1.0, saved_ratio=1.0, gzip_ratio=0.8),
                            dict(sparsity=0.9, time_ratio=math.nan, saved_ratio=1.0,
                                 gzip_ratio=math.nan)])
    assert v.judge_pruning_no_speedup(pruning, DEP).holds is False
    assert v.judge_precision_speedup({"fp16": math.nan}, DEP).holds is False
    assert v.judge_decomposed_speedup(0.5, math.nan, DEP).holds is False

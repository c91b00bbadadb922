"""The ITOP grid claims on every outcome a grid can give: every seed diverged, a single seed, a
NaN metric, an empty cell. Each claim's tables and plots are written to tmp_path as the claims
write them (the study's plots draw with Agg), and each judge returns a verdict with a reason,
never a crash.

Rows are made by ``study._row`` from fabricated ``TrainRecord``s, so the table has the study's
own columns and its rule for a diverged run (accuracy at chance, ``diverged`` set)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.claim import Claim, Tolerance, Verdict
from harness.evidence import Evidence
from harness.odds import judge_odds
from harness.sparse import study
from harness.sparse import verdicts as v
from harness.sparse.study import DENSE, RIGL, SET, STATIC
from harness.stats import mean
from harness.train import TrainRecord
from tests.outcomes import assert_a_reported_result
from tests.sparse.test_verdicts import CFG, PAPER_LIKE

CHANCE = CFG.chance
NOT_REPRODUCED = (Verdict.NOT_REPRODUCED, Verdict.INCONCLUSIVE)
TOL = Tolerance(why="test: any value", abs=1.0)
DIVERGED = "diverged"  # stopped at step 3 on a NaN loss, before any mask update


def record(method: str, outcome) -> TrainRecord:
    """A run's record: ``outcome`` is DIVERGED or (accuracy, R_s)."""
    density = 1.0 if method == DENSE else 1 - CFG.sparsity
    if outcome == DIVERGED:
        sparse = {"rs": density, "rs_curve": [], "reliable": 0.0, "density": density,
                  "updates": 0}
        return TrainRecord(test_acc=math.nan, test_loss=math.nan, diverged=True, steps=3,
                           loss_curve=[(3, math.nan)], epoch_seconds=[0.1], images_per_second=1.0,
                           peak_memory_mb=None, train_seconds=0.1,
                           extra={} if method == DENSE else {"sparse": sparse})
    acc, rs = outcome
    sparse = {"rs": rs, "rs_curve": [[0, density], [50, rs]], "reliable": rs / 2,
              "density": density, "updates": 5}
    return TrainRecord(test_acc=acc, test_loss=1.0, diverged=False, steps=100,
                       loss_curve=[(100, 1.0)], epoch_seconds=[1.0], images_per_second=100.0,
                       peak_memory_mb=None, train_seconds=1.0,
                       extra={} if method == DENSE else {"sparse": sparse})


def table(grid: dict[tuple, list]) -> pd.DataFrame:
    """The study's runs table for {(method, batch, ΔT): [(acc, R_s) or DIVERGED per seed]}."""
    rows = [study._row(CFG, study.SparseCell(m, b, seed, dt), record(m, outcome))
            for (m, b, dt), seeds in grid.items() for seed, outcome in enumerate(seeds)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------- the claims' reporting path


def reaches_dense(runs, ev):
    ev.table("grid_summary.csv", study.cell_summary(runs))
    ev.table("grid_runs.csv", runs.drop(columns="rs_curve"))
    ev.figure("accuracy_vs_rs.png", study.plot_accuracy_vs_rs(runs, CHANCE))
    ev.figure("rs_vs_step.png", study.plot_rs_curves(runs))
    j = v.judge_reaches_dense(runs, CFG)
    ev.metric("acc_dense", mean(j.dense), TOL, samples=list(j.dense))
    ev.metric("acc_dst", mean(j.dst), TOL, samples=list(j.dst))
    ev.metric("rs_dst", mean(j.dst_rs), TOL, samples=list(j.dst_rs))
    return j


def static_below_dst(runs, ev):
    j = v.judge_static_below_dst(runs, CFG)
    ev.metric("acc_static", mean(j.static), TOL, samples=list(j.static))
    ev.metric("rs_static", mean(v.values(runs, STATIC, CFG.batch_size, None, "rs")), TOL)
    return j


def accuracy_tracks_rs(runs, ev):
    j = v.judge_accuracy_tracks_rs(runs, CFG)
    for dt, acc, rs in zip(j.intervals, j.acc, j.rs):
        ev.metric(f"acc_set_dt{dt}", mean(acc), TOL, samples=list(acc))
        ev.metric(f"rs_set_dt{dt}", mean(rs), TOL, samples=list(rs))
    return j


def set_explores_more(runs, ev):
    j = v.judge_set_explores_more(runs, CFG)
    ev.metric("rs_set", mean(j.set_rs), TOL, samples=list(j.set_rs))
    ev.metric("rs_rigl", mean(j.rigl_rs), TOL, samples=list(j.rigl_rs))
    return j


def small_batch_more_exploration(runs, ev):
    j = v.judge_small_batch_more_exploration(runs, CFG)
    gap = [a - b for a, b in zip(j.acc_small, j.acc_large, strict=True)]
    ev.metric("acc_gap_small_minus_large", mean(gap), TOL, samples=gap)
    return j


CLAIMS = {"reaches_dense": (reaches_dense, v.judge_reaches_dense),
          "static_below_dst": (static_below_dst, v.judge_static_below_dst),
          "accuracy_tracks_rs": (accuracy_tracks_rs, v.judge_accuracy_tracks_rs),
          "set_explores_more": (set_explores_more, v.judge_set_explores_more),
          "small_batch_more_exploration": (small_batch_more_exploration,
                                           v.judge_small_batch_more_exploration)}


def report(name: str, runs: pd.DataFrame, tmp_path) -> Evidence:
    """What the claim records and writes (plots: the claim that draws them, and every claim
    here); the evidence, with its verdict."""
    ev = Evidence(Claim(f"itop.{name}", "test", "test", trained=True), "cpu", tmp_path / name)
    ev.figure("accuracy_vs_rs.png", study.plot_accuracy_vs_rs(runs, CHANCE))
    ev.figure("rs_vs_step.png", study.plot_rs_curves(runs))
    record_claim, judge = CLAIMS[name]
    j = record_claim(runs, ev)
    ev.decide(j.holds, j.reason, judge_odds(judge, runs, CFG, resamples=20))
    return assert_a_reported_result(ev)


# ------------------------------------------------------------------------------ outcomes


@pytest.mark.parametrize("name", CLAIMS)
def test_every_seed_diverged_is_a_result_with_its_plots(name, tmp_path):
    runs = table({k: [DIVERGED] * 3 for k in PAPER_LIKE})
    assert runs.diverged.all() and (runs.acc == CHANCE).all()
    ev = report(name, runs, tmp_path)
    assert ev.verdict in NOT_REPRODUCED, ev.reason
    ev.baseline(v.values(runs, DENSE, CFG.batch_size), CHANCE, "the dense network")
    assert ev.measurements["baseline_learned"].value == 0


def test_the_rs_plot_says_when_no_run_logged_a_curve():
    fig = study.plot_rs_curves(table({k: [DIVERGED] * 3 for k in PAPER_LIKE}))
    ax = fig.axes[0]
    assert ax.get_legend() is None
    assert any("no R_s curves" in t.get_text() for t in ax.texts)


@pytest.mark.parametrize("name", CLAIMS)
def test_a_single_seed_is_a_result_and_decides_nothing_by_welch(name, tmp_path):
    runs = table({k: seeds[:1] for k, seeds in PAPER_LIKE.items()})
    ev = report(name, runs, tmp_path)
    assert ev.verdict is Verdict.INCONCLUSIVE, ev.reason


@pytest.mark.parametrize("column", ["acc", "rs"])
@pytest.mark.parametrize("name", CLAIMS)
def test_a_nan_metric_in_a_cell_is_never_a_pass_there(name, column, tmp_path):
    runs = table(PAPER_LIKE)
    # SET at the reference ΔT and batch: the cell most claims read
    row = (runs.method == SET) & (runs.batch_size == CFG.batch_size) \
        & (runs.interval == CFG.ref_interval) & (runs.seed == 0)
    runs.loc[row, column] = math.nan
    ev = report(name, runs, tmp_path)
    reads = {"acc": {"reaches_dense", "static_below_dst", "accuracy_tracks_rs"},
             "rs": {"accuracy_tracks_rs", "set_explores_more"}}[column]
    if name in reads:
        assert ev.verdict in NOT_REPRODUCED and "nan" in ev.reason, ev.reason


def test_the_accuracy_plot_names_a_nan_point_instead_of_drawing_it():
    runs = table(PAPER_LIKE)
    runs.loc[runs.index[0], "rs"] = math.nan
    fig = study.plot_accuracy_vs_rs(runs, CHANCE)
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert any("not drawn" in t and "1 run(s) of dense" in t for t in notes), notes


# (claim, cell removed, what the judge does): "raises: <match>", or the verdicts it may give
EMPTY = [("reaches_dense", (DENSE, 64, None), NOT_REPRODUCED),
         ("reaches_dense", (SET, 64, 16), NOT_REPRODUCED),
         ("static_below_dst", (STATIC, 64, None), NOT_REPRODUCED),
         ("static_below_dst", (SET, 64, 16), NOT_REPRODUCED),
         ("accuracy_tracks_rs", (SET, 64, 4), NOT_REPRODUCED),
         ("set_explores_more", (RIGL, 64, 16), NOT_REPRODUCED),
         # the claim pairs the two batches seed by seed
         ("small_batch_more_exploration", (SET, 32, 16),
          "raises: SET at ΔT=16 needs the same seeds at B=32 and B=128: got 0 and 3 runs")]


@pytest.mark.parametrize("name, removed, expected", EMPTY,
                         ids=[f"{n}-{r[0]}-{r[1]}-{r[2]}" for n, r, _ in EMPTY])
def test_an_empty_cell_plots_and_is_judged_or_named(name, removed, expected, tmp_path):
    runs = table({k: seeds for k, seeds in PAPER_LIKE.items() if k != removed})
    if isinstance(expected, str):
        ev = Evidence(Claim(f"itop.{name}", "test", "test"), "cpu", tmp_path)
        ev.table("grid_summary.csv", study.cell_summary(runs))
        ev.figure("accuracy_vs_rs.png", study.plot_accuracy_vs_rs(runs, CHANCE))
        ev.figure("rs_vs_step.png", study.plot_rs_curves(runs))
        assert all(p.exists() for p in ev.artifacts)
        with pytest.raises(ValueError, match=expected.removeprefix("raises: ")):
            CLAIMS[name][0](runs, ev)
        return
    ev = report(name, runs, tmp_path)
    assert ev.verdict in expected and "nan" in ev.reason, ev.reason
    if name == "reaches_dense":
        assert len(pd.read_csv(tmp_path / name / "grid_summary.csv")) == len(PAPER_LIKE) - 1

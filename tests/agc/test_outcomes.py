"""The AGC grid claims on every outcome a grid can give: every seed diverged, a single seed, a
NaN metric, an empty cell. Each claim's tables and plot are written to tmp_path as the claims
write them (the study's plots draw with Agg), and each judge returns a verdict with a reason,
never a crash; an empty cell a judge cannot do without raises a ValueError that names it.

Rows are made by ``study._row`` from fabricated ``TrainRecord``s, so the table has the study's
own columns and its rule for a diverged run (accuracy at chance, ``diverged`` set)."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from harness.agc import study
from harness.agc import verdicts as v
from harness.claim import Claim, Tolerance, Verdict
from harness.evidence import Evidence
from harness.odds import judge_odds
from harness.train import TrainRecord
from tests.agc.grids import AGC, BN, CFG, LARGE, NF, PAPER_LIKE, SMALL
from tests.outcomes import assert_a_reported_result

CHANCE = CFG.chance
NOT_REPRODUCED = (Verdict.NOT_REPRODUCED, Verdict.INCONCLUSIVE)
TOL = Tolerance(why="test: any value", abs=1.0)
DIVERGED = "diverged"  # a run that diverged: NaN loss, non-finite weights, NaN test accuracy


def record(acc: float | str | TrainRecord | None) -> TrainRecord:
    if isinstance(acc, TrainRecord):
        return acc
    if acc is None or acc == DIVERGED:  # None: PAPER_LIKE's diverged run
        return TrainRecord(test_acc=math.nan, test_loss=math.nan, diverged=True, steps=3,
                           loss_curve=[(3, math.inf)], epoch_seconds=[0.1],
                           images_per_second=1.0, peak_memory_mb=None, train_seconds=0.1)
    return TrainRecord(test_acc=acc, test_loss=1.0, diverged=False, steps=100,
                       loss_curve=[(100, 1.0)], epoch_seconds=[1.0], images_per_second=100.0,
                       peak_memory_mb=None, train_seconds=1.0)


def table(grid: dict[tuple, list]) -> pd.DataFrame:
    """The study's runs table for {(method, batch, lam[, clip_head]): [acc, DIVERGED or None]}."""
    rows = []
    for (method, b, lam, *head), accs in grid.items():
        for seed, acc in enumerate(accs):
            cell = study.AGCCell(method, b, seed, lam, bool(head))
            rows.append(study._row(CFG, cell, record(acc)))
    return pd.DataFrame(rows)


def paper_like(seeds: int = 3) -> dict[tuple, list]:
    """PAPER_LIKE with ``seeds`` seeds per cell (the third repeats the first)."""
    return {k: (accs * 2)[:seeds] for k, accs in PAPER_LIKE.items()}


ALL_DIVERGED = {k: [DIVERGED] * 3 for k in PAPER_LIKE}


# --------------------------------------------------------------- the claims' reporting path


def claim(name: str) -> Claim:
    return Claim(f"agc.{name}", "test", "test", trained=True)


def stabilizes(runs: pd.DataFrame, ev: Evidence) -> Verdict:
    ev.table("grid_runs.csv", runs)
    ev.table("grid_summary.csv", study.grid_summary(runs))
    ev.figure("accuracy_vs_batch.png", study.plot_grid(runs, CHANCE))
    j = v.judge_stabilizes_large_batch(runs, CFG)
    for name, s in (("nf", j.nf), ("agc", j.agc), ("bn", j.bn)):
        ev.metric(f"{name}_acc_largest_batch", s.mean, TOL, samples=s.seeds)
    ev.metric("nf_diverged_largest_batch", j.nf_diverged, TOL)
    ev.metric("best_lambda_largest_batch", j.best_lambda, TOL)
    return ev.decide(j.holds, j.reason,
                     judge_odds(v.judge_stabilizes_large_batch, runs, CFG, resamples=20))


def small_batch_benefit(runs: pd.DataFrame, ev: Evidence) -> Verdict:
    ev.table("benefit.csv", study.benefit_table(runs))
    j = v.judge_small_batch_benefit(runs)
    for name, s in (("small", j.benefit_smallest_batch), ("large", j.benefit_largest_batch)):
        ev.metric(f"benefit_{name}", s.mean, TOL, samples=s.seeds)
    return ev.decide(j.holds, j.reason,
                     judge_odds(v.judge_small_batch_benefit, runs, resamples=20))


def lambda_shrinks(runs: pd.DataFrame, ev: Evidence) -> Verdict:
    ev.table("best_lambda.csv", study.benefit_table(runs))
    j = v.judge_lambda_shrinks(runs, CFG)
    ev.metric("best_lambda_largest_batch", j.best_lambda_largest_batch, TOL)
    ev.metric("agc_best_acc_largest_batch", j.agc_best_largest_batch.mean, TOL,
              samples=j.agc_best_largest_batch.seeds)
    return ev.decide(j.holds, j.reason,
                     judge_odds(v.judge_lambda_shrinks, runs, CFG, resamples=20))


def skip_final(runs: pd.DataFrame, ev: Evidence) -> Verdict:
    largest = int(runs.batch_size.max())
    ev.table("skip_final.csv", study.grid_summary(runs[runs.batch_size == largest]))
    j = v.judge_skip_final_layer(runs)
    ev.metric("acc_classifier_skipped", j.skipped.mean, TOL, samples=j.skipped.seeds)
    ev.metric("acc_classifier_clipped", j.clipped.mean, TOL, samples=j.clipped.seeds)
    return ev.decide(j.holds, j.reason, judge_odds(v.judge_skip_final_layer, runs,
                                                   resamples=20))


def bn_costs(runs: pd.DataFrame, ev: Evidence) -> Verdict:
    tiny = runs[runs.method != AGC]  # the tiny-batch design: NF and BN at two batches
    ev.table("tiny_batch.csv", study.grid_summary(tiny))
    j = v.judge_bn_costs(1.3, tiny, 0.03, 0.25)
    for name, s in (("bn_acc_tiny", j.bn_tiny), ("nf_acc_tiny", j.nf_tiny)):
        ev.metric(name, s.mean, TOL, samples=s.seeds)
    return ev.decide(j.holds, j.reason, judge_odds(
        lambda t: v.judge_bn_costs(1.3, t, 0.03, 0.25), tiny, resamples=20))


CLAIMS = {"stabilizes_large_batch": stabilizes, "small_batch_benefit_small": small_batch_benefit,
          "lambda_shrinks_with_batch": lambda_shrinks, "skip_final_layer": skip_final,
          "bn_costs": bn_costs}


def report(name: str, runs: pd.DataFrame, tmp_path) -> Evidence:
    """What the claim records and writes; the evidence, with its verdict."""
    ev = Evidence(claim(name), "cpu", tmp_path / name)
    CLAIMS[name](runs, ev)
    return assert_a_reported_result(ev)


# ------------------------------------------------------------------------------ outcomes


@pytest.mark.parametrize("name", CLAIMS)
def test_every_seed_diverged_is_a_result_with_its_plot(name, tmp_path):
    runs = table(ALL_DIVERGED)
    assert runs.diverged.all() and (runs.acc == CHANCE).all() and runs.test_acc.isna().all()
    ev = report(name, runs, tmp_path)
    assert ev.verdict in NOT_REPRODUCED, ev.reason
    if name == "stabilizes_large_batch":
        assert [p.suffix for p in ev.artifacts].count(".png") == 1
        assert "3/3 diverged" in ev.reason
    # The claims' baseline (the BN twin at the largest batch) records that nothing was learned.
    ev.baseline(v.accuracies(runs, BN, LARGE), CHANCE, "BN at the largest batch")
    assert ev.measurements["baseline_learned"].value == 0


@pytest.mark.parametrize("name", CLAIMS)
def test_a_single_seed_is_a_result_and_decides_nothing_by_welch(name, tmp_path):
    runs = table(paper_like(seeds=1))
    ev = report(name, runs, tmp_path)
    # One run per side bounds nothing: no comparison is established, none refuted.
    assert ev.verdict is Verdict.INCONCLUSIVE, ev.reason


def test_the_plot_of_a_single_seed_has_points_without_spread():
    fig = study.plot_grid(table(paper_like(seeds=1)), CHANCE)
    (bn,) = [c for c in fig.axes[0].containers if c.get_label() == "BN"]
    _, _, (bars,) = bn.lines
    assert all(seg[0][1] == seg[1][1] for seg in bars.get_segments())  # zero-length bars


@pytest.mark.parametrize("name", CLAIMS)
def test_a_nan_test_accuracy_counts_as_a_failed_run(name, tmp_path):
    # Non-finite weights at the end without a loss spike at a check: test_acc NaN, not
    # flagged diverged by training. The row counts it as a failed run, at chance.
    grid = paper_like()
    grid[(AGC, LARGE, 0.01)][0] = dataclasses.replace(record(0.78), test_acc=math.nan)
    runs = table(grid)
    row = (runs.method == AGC) & (runs.batch_size == LARGE) & (runs.lam == 0.01) \
        & ~runs.clip_head & (runs.seed == 0)
    assert runs[row].diverged.item() and runs[row].acc.item() == CHANCE
    assert runs[row].test_acc.isna().item()
    report(name, runs, tmp_path)


@pytest.mark.parametrize("name", CLAIMS)
def test_a_nan_loss_is_shown_and_changes_no_verdict(name, tmp_path):
    runs = table(paper_like())
    expected = report(name, runs, tmp_path / "before").verdict
    runs.loc[runs.index[:3], "final_train_loss"] = math.nan
    ev = report(name, runs, tmp_path / "after")
    assert ev.verdict is expected
    if name == "stabilizes_large_batch":  # the summary's mean loss is NaN where a run's is
        summary = pd.read_csv(tmp_path / "after" / name / "grid_summary.csv")
        assert summary.final_train_loss.isna().any() and len(summary) == len(PAPER_LIKE)


@pytest.mark.parametrize("name", [n for n in CLAIMS if n != "small_batch_benefit_small"])
def test_a_nan_accuracy_in_a_judged_cell_is_never_a_pass(name, tmp_path):
    # A table from elsewhere (the study itself never leaves acc NaN): NaN propagates into the
    # Welch bounds, so nothing judged on that cell is established.
    runs = table(paper_like())
    cell = {"stabilizes_large_batch": (AGC, LARGE, 0.01), "lambda_shrinks_with_batch":
            (AGC, LARGE, 0.01), "skip_final_layer": (AGC, LARGE, 0.01),
            "bn_costs": (BN, LARGE, None)}[name]
    method, b, lam = cell
    row = (runs.method == method) & (runs.batch_size == b) & ~runs.clip_head & (runs.seed == 0)
    if lam is not None:
        row &= runs.lam == lam
    runs.loc[row, "acc"] = math.nan
    ev = report(name, runs, tmp_path)
    assert ev.verdict in NOT_REPRODUCED, ev.reason
    assert "nan" in ev.reason


def test_the_plot_names_a_nan_accuracy_instead_of_drawing_it():
    runs = table(paper_like())
    runs.loc[(runs.method == BN) & (runs.batch_size == LARGE) & (runs.seed == 0), "acc"] = math.nan
    fig = study.plot_grid(runs, CHANCE)
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert any("BN at B=1024: NaN accuracy" in t for t in notes), notes


def without(*keys) -> pd.DataFrame:
    return table({k: accs for k, accs in paper_like().items() if k not in keys})


AGC_LARGE = [k for k in PAPER_LIKE if k[0] == AGC and k[1] == LARGE]

# (claim, cells removed, what the judge does): "raises: <match>", or the verdicts it may give
EMPTY = [
    ("stabilizes_large_batch", [(BN, LARGE, None)], NOT_REPRODUCED),
    ("stabilizes_large_batch", AGC_LARGE, "raises: no NF\\+AGC runs .* at B=1024"),
    ("skip_final_layer", AGC_LARGE, "raises: no NF\\+AGC runs .* at B=1024"),
    ("skip_final_layer", [(AGC, LARGE, 0.01, True)], NOT_REPRODUCED),
    ("small_batch_benefit_small", [(NF, SMALL, None)],
     "raises: per-seed benefit at B=64 needs the same seeds .* got 3 and 0 runs"),
    ("lambda_shrinks_with_batch", [(AGC, LARGE, 0.01)], NOT_REPRODUCED),
    ("bn_costs", [(BN, SMALL, None)], NOT_REPRODUCED),
]


@pytest.mark.parametrize("name, removed, expected", EMPTY,
                         ids=[f"{n}-{r[0][0]}-{r[0][1]}-{len(r)}" for n, r, _ in EMPTY])
def test_an_empty_cell_still_plots_and_is_judged_or_named(name, removed, expected, tmp_path):
    runs = without(*removed)
    # The plot and the tables are written before the judge runs, whatever it then says.
    ev = Evidence(claim(name), "cpu", tmp_path)
    ev.table("grid_summary.csv", study.grid_summary(runs))
    ev.table("benefit.csv", study.benefit_table(runs))
    ev.figure("accuracy_vs_batch.png", study.plot_grid(runs, CHANCE))
    assert all(p.exists() for p in ev.artifacts)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected.removeprefix("raises: ")):
            CLAIMS[name](runs, Evidence(claim(name), "cpu"))
    else:
        assert report(name, runs, tmp_path / "judged").verdict in expected


def test_the_plot_keeps_a_batch_without_agc_runs_and_says_so():
    runs = without(*AGC_LARGE)
    fig = study.plot_grid(runs, CHANCE)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(SMALL), str(LARGE)]
    notes = " ".join(t.get_text() for t in ax.texts)
    assert "NF+AGC, best λ at B=1024: no runs" in notes
    assert "λ*=" in notes  # the best λ at the batch that has AGC runs is still marked


def test_an_empty_grid_builds_empty_tables():
    empty = table({}).reindex(columns=table(paper_like(1)).columns)
    assert study.grid_summary(empty).empty and study.benefit_table(empty).empty

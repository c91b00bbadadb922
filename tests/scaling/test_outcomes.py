"""The trained scaling claims on every outcome their runs can give: every seed diverged, a
single seed, a NaN accuracy, an empty cell; and the runtime population's table and plot with a
NaN time or a missing strategy. Each claim's tables (and the population's plot) are written to
tmp_path as the claims write them (the study's plots draw with Agg), and each judge returns a
verdict with a reason, never a crash; a cell a judge cannot do without raises a ValueError that
names it.

The accuracy table is ``study.accuracy_table`` of fabricated ``TrainRecord``s; the per-seed
accuracies are read from it as the claims read them (a NaN accuracy, a diverged run, counts as
chance)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness import stats
from harness.claim import Claim, Tolerance, Verdict
from harness.evidence import Evidence
from harness.odds import resample_lists, verdict_odds
from harness.scaling import study
from harness.scaling import verdicts as v
from harness.train import TrainRecord
from tests.outcomes import assert_a_reported_result

CHANCE = 0.1
MARGIN = 0.03
NOT_REPRODUCED = (Verdict.NOT_REPRODUCED, Verdict.INCONCLUSIVE)
TOL = Tolerance(why="test: any value", abs=1.0)
DIVERGED = "diverged"
TIMES = {"base": 1.0, "w": 1.5, "dwr": 3.0, "dWr": 2.0}  # seconds: inference and per epoch
ACC = {"base": 0.40, "w": 0.50, "dwr": 0.55, "dWr": 0.552}  # base0; base1 is 0.1 lower


def record(acc, strategy: str) -> TrainRecord:
    if acc == DIVERGED:
        return TrainRecord(test_acc=math.nan, test_loss=math.nan, diverged=True, steps=3,
                           loss_curve=[(3, math.inf)], epoch_seconds=[0.2],
                           images_per_second=1.0, peak_memory_mb=None, train_seconds=0.2)
    return TrainRecord(test_acc=acc, test_loss=1.0, diverged=False, steps=100,
                       loss_curve=[(100, 1.0)], epoch_seconds=[TIMES[strategy]] * 2,
                       images_per_second=100.0, peak_memory_mb=None, train_seconds=2.0)


def accuracy_table(seeds: int = 3, strategies=("base", "dwr", "dWr"), outcome=None,
                   models=("base0", "base1")) -> pd.DataFrame:
    """``study.accuracy_table``; ``outcome(model, strategy, seed)`` overrides a run's
    accuracy (DIVERGED: a diverged run)."""
    records = {}
    for m in models:
        for st in strategies:
            for s in range(seeds):
                acc = ACC[st] - 0.1 * (m == "base1") + 0.002 * s
                acc = outcome(m, st, s) if outcome else acc
                records[(m, st, s)] = record(acc, st)
    return study.accuracy_table(records)


def accuracies(table: pd.DataFrame, model: str, strategy: str) -> list[float]:
    """As the claims read them: seed order, a diverged run (NaN) at chance."""
    rows = table[(table.model == model) & (table.strategy == strategy)].sort_values("seed")
    return rows.test_acc.fillna(CHANCE).tolist()


# --------------------------------------------------------------- the claims' reporting path


def dWr_matches_dwr_faster(table: pd.DataFrame, ev: Evidence):
    ev.table("accuracy.csv", table)
    acc = {st: accuracies(table, "base0", st) for st in ("base", "dwr", "dWr")}
    for st, values in acc.items():
        ev.metric(f"acc_{st}", stats.summarize(values).mean, TOL, samples=values)
    epoch = table.groupby("strategy").seconds_per_epoch.median().to_dict()

    def judge(a):
        return v.dWr_verdict(a, TIMES, epoch, MARGIN, judge_speed=False, chance=CHANCE)

    j = judge(acc)
    odds = verdict_odds(lambda idx: judge(resample_lists(acc, idx)).holds, len(acc["dwr"]), 20)
    ev.decide(j.holds, j.reason, odds)
    return acc["base"]


def order_preserved(table: pd.DataFrame, ev: Evidence):
    ev.table("accuracy.csv", table)
    before = {m: accuracies(table, m, "base") for m in ("base0", "base1")}
    after = {m: accuracies(table, m, "dWr") for m in ("base0", "base1")}
    for m in before:
        ev.metric(f"acc_{m}_dWr", stats.summarize(after[m]).mean, TOL, samples=after[m])
    j = v.order_verdict(before, after)
    ev.decide(j.holds, j.reason, verdict_odds(
        lambda idx: v.order_verdict(resample_lists(before, idx),
                                    resample_lists(after, idx)).holds, len(before["base0"]), 20))
    return before["base0"]


CLAIMS = {"dWr_matches_dwr_faster": dWr_matches_dwr_faster, "order_preserved": order_preserved}


def report(name: str, table: pd.DataFrame, tmp_path) -> Evidence:
    ev = Evidence(Claim(f"scaling.{name}", "test", "test", trained=True), "cpu", tmp_path / name)
    base = CLAIMS[name](table, ev)
    ev.baseline(base, CHANCE, "the unscaled base")
    return assert_a_reported_result(ev)


# ------------------------------------------------------------------------------ outcomes


def test_the_fabricated_runs_reproduce_both_claims(tmp_path):
    for name in CLAIMS:
        assert report(name, accuracy_table(), tmp_path).verdict is Verdict.REPRODUCED, name


def test_order_preserved_reports_every_seed_diverging(tmp_path):
    table = accuracy_table(outcome=lambda m, st, s: DIVERGED)
    assert table.diverged.all() and table.test_acc.isna().all()
    ev = report("order_preserved", table, tmp_path)
    assert ev.verdict in NOT_REPRODUCED and "not established" in ev.reason, ev.reason
    assert ev.measurements["baseline_learned"].value == 0


def test_dWr_matches_dwr_reports_every_seed_diverging_as_no_pass(tmp_path):
    table = accuracy_table(outcome=lambda m, st, s: DIVERGED)
    ev = report("dWr_matches_dwr_faster", table, tmp_path)
    assert ev.verdict in NOT_REPRODUCED, ev.reason


def test_every_seed_diverged_still_writes_the_table_and_a_verdict(tmp_path):
    table = accuracy_table(outcome=lambda m, st, s: DIVERGED)
    ev = report("dWr_matches_dwr_faster", table, tmp_path)  # a result, whatever it says
    written = pd.read_csv(ev.artifacts[0])
    assert written.diverged.all() and written.test_acc.isna().all()


@pytest.mark.parametrize("name", CLAIMS)
def test_a_single_seed_is_a_result_and_decides_nothing_by_welch(name, tmp_path):
    ev = report(name, accuracy_table(seeds=1), tmp_path)
    assert ev.verdict is Verdict.INCONCLUSIVE, ev.reason


@pytest.mark.parametrize("name", CLAIMS)
def test_a_nan_accuracy_counts_as_chance_and_is_no_pass(name, tmp_path):
    # A run with non-finite weights at the end but no loss spike at a check: NaN accuracy,
    # not flagged diverged. The claims read it as chance.
    nan_at = {"dWr_matches_dwr_faster": ("base0", "dWr", 0), "order_preserved":
              ("base0", "base", 0)}[name]

    def outcome(m, st, s):
        acc = ACC[st] - 0.1 * (m == "base1") + 0.002 * s
        return math.nan if (m, st, s) == nan_at else acc

    table = accuracy_table(outcome=outcome)
    assert table.test_acc.isna().sum() == 1 and not table.diverged.any()
    ev = report(name, table, tmp_path)
    assert ev.verdict in NOT_REPRODUCED, ev.reason


@pytest.mark.parametrize("name, match", [
    ("dWr_matches_dwr_faster", "accuracies: no values for dWr"),
    ("order_preserved", "accuracies after scaling: no values for base0, base1")])
def test_an_empty_cell_is_named(name, match, tmp_path):
    table = accuracy_table(strategies=("base", "dwr"))  # no dWr run
    ev = Evidence(Claim(f"scaling.{name}", "test", "test"), "cpu", tmp_path)
    ev.table("accuracy.csv", table)
    assert ev.artifacts[0].exists()
    acc = {st: accuracies(table, "base0", st) for st in ("base", "dwr", "dWr")}
    epoch = table.groupby("strategy").seconds_per_epoch.median().to_dict()
    with pytest.raises(ValueError, match=match):
        if name == "dWr_matches_dwr_faster":
            v.dWr_verdict(acc, TIMES, epoch, MARGIN, judge_speed=False)
        else:
            v.order_verdict({m: accuracies(table, m, "base") for m in ("base0", "base1")},
                            {m: accuracies(table, m, "dWr") for m in ("base0", "base1")})


def test_a_missing_time_is_named():
    acc = {"dwr": [0.5, 0.51], "dWr": [0.5, 0.51]}
    with pytest.raises(ValueError, match="epoch times: no values for dWr"):
        v.dWr_verdict(acc, TIMES, {"dwr": 1.0}, MARGIN, judge_speed=False)


# ------------------------------------------------------------------ the runtime population


def population(strategies=(("w", 2.0), ("dwr", 2.0), ("dwr", 4.0), ("w", 4.0))) -> pd.DataFrame:
    """``study.runtime_population``'s columns: two bases, each scaled by ``strategies``."""
    rows = []
    for base, f, p, a in (("x", 1e6, 1e4, 1e3), ("y", 2e6, 3e4, 1.5e3)):
        for st, s in (("base", 1.0), *strategies):
            acts = a * s ** (0.5 if st == "w" else 0.8)
            rows.append(dict(base=base, strategy=st, s=s, resolution=32, flops=f * s,
                             params=p * s, acts=acts, inference_s=1e-6 * acts,
                             inference_iqr=1e-8, train_step_s=3e-6 * acts, train_step_iqr=1e-8,
                             inference_doubling=1.9 if st == "base" else math.nan,
                             train_step_doubling=1.9 if st == "base" else math.nan,
                             predicted_peak_gib=math.nan, train_step_microbatches=1))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_the_population_plot_draws_its_fit_through_the_finite_times(bad, tmp_path):
    pop = population()
    pop.loc[1, "inference_s"] = bad
    ev = Evidence(Claim("scaling.acts_predict_runtime", "test", "test"), "cpu", tmp_path)
    table = study.correlation_table(pop)
    ev.table("population.csv", pop)
    ev.table("correlations.csv", table)
    fig = study.plot_runtime_vs_complexity(pop, table)
    fits = [ln for ax in fig.axes[:3] for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(fits) == 3 and all(pd.Series(ln.get_ydata()).notna().all() for ln in fits)
    assert any("not drawn: 1 network(s)" in t.get_text() for t in fig.axes[0].texts)
    ev.figure("runtime_vs_complexity.png", fig)
    assert all(p.exists() for p in ev.artifacts)
    assert study.batch_doubling(pop) == pytest.approx(1.9)


def test_the_population_without_a_strategy_still_tables_groups_and_plots(tmp_path):
    pop = population(strategies=(("w", 2.0), ("w", 4.0)))  # no dwr member
    table = study.correlation_table(pop)
    assert table.r.notna().all()
    groups = study.equal_flops_groups(pop)
    assert len(groups) == 4 and all(set(g.strategy) == {"w"} for g in groups)
    Evidence(Claim("scaling.w_fastest", "test", "test"), "cpu", tmp_path).figure(
        "runtime_vs_complexity.png", study.plot_runtime_vs_complexity(pop, table))
    assert (tmp_path / "runtime_vs_complexity.png").exists()

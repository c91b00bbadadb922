"""The NASViT grid claims on every outcome a grid can give: every seed diverged, a single seed,
a NaN metric, an empty cell. Each claim's tables and plot are written to tmp_path as the claims
write them (the study's plots draw with Agg), and each judge returns a verdict with a reason,
never a crash; an empty cell the claim pairs seed by seed raises a ValueError that names it.

Rows are made by ``study._rows`` from fabricated ``TrainRecord``s (its subnet evaluation
replaced by the fabricated accuracies), so the table has the study's own columns and its rule
for a diverged run (accuracy at chance, conflict shares from what was logged)."""

from __future__ import annotations

import math
from unittest import mock

import pandas as pd
import pytest

from harness.claim import Claim, Tolerance, Verdict
from harness.data import DataSpec
from harness.evidence import Evidence
from harness.odds import judge_odds
from harness.stats import mean
from harness.supernet import study
from harness.supernet import verdicts as v
from harness.supernet.verdicts import (
    CNN,
    HYBRID,
    LARGEST,
    MID,
    NAIVE,
    PROJECTED,
    SMALLEST,
    STANDALONE,
)
from harness.train import TrainConfig, TrainRecord
from tests.outcomes import assert_a_reported_result

CFG = study.GridConfig(cnn="cnn_supernet_tiny", hybrid="hybrid_supernet_tiny",
                       data=DataSpec("synthetic"), resolution=16, seeds=(0, 1, 2),
                       train=TrainConfig())
CHANCE = CFG.chance
NOT_REPRODUCED = (Verdict.NOT_REPRODUCED, Verdict.INCONCLUSIVE)
TOL = Tolerance(why="test: any value", abs=1.0)
DIVERGED = "diverged"  # NaN loss at step 5: the gradients there were NaN
SANDWICH = [(HYBRID, NAIVE), (CNN, NAIVE), (HYBRID, PROJECTED)]


def conflict(share: float, diverged: bool) -> dict:
    """A conflict record (the sandwich's ``record()``): two tensors at steps 0 and 5, 3 of the
    4 (step, tensor) cosines negative for ``share`` ≥ 0.5, else 1; a diverged run's gradients
    at step 5 are NaN (no cosine there)."""
    first = -0.3 if share >= 0.5 else 0.3
    rows = [[first, -0.2 if share > 0 else 0.2], [None, None] if diverged else [first, 0.1]]
    ok = [[1.0, 1.0], [1.0, 1.0]]
    return {"names": ["a", "b"], "steps": [0, 5], "cos": [-0.1, math.nan if diverged else -0.05],
            "tensor_cos": rows, "norms": [[1.0, 1.0], [math.nan] * 2 if diverged else [1.0, 1.0]],
            "tensor_norms": [[ok[0], ok[1]], [None, None] if diverged else [ok[0], ok[1]]],
            "project": False}


def record(outcome, share: float = 0.6, sandwich: bool = True) -> TrainRecord:
    """``outcome``: DIVERGED, or the accuracy of each subnet {arch: acc} (a standalone run:
    one accuracy)."""
    diverged = outcome == DIVERGED
    extra = {"conflict": conflict(share, diverged)} if sandwich else {}
    if not diverged and sandwich:
        extra["accs"] = outcome
    acc = math.nan if diverged else (outcome if not sandwich else outcome[LARGEST])
    return TrainRecord(test_acc=acc, test_loss=math.nan if diverged else 1.0, diverged=diverged,
                       steps=5 if diverged else 100, loss_curve=[(5, math.nan)],
                       epoch_seconds=[1.0], images_per_second=1.0, peak_memory_mb=None,
                       train_seconds=1.0, extra=extra)


def table(outcomes: dict[tuple, list]) -> pd.DataFrame:
    """The study's runs table for {(net, method[, arch]): [outcome per seed]}."""
    rows = []
    with mock.patch.object(study, "trained_weights", lambda rec: rec.extra["accs"]), \
            mock.patch.object(study, "evaluate_subnet",
                              lambda cfg, net, weights, which, data, device: weights[which]):
        for (net, method, *arch), seeds in outcomes.items():
            for seed, outcome in enumerate(seeds):
                cell = study.SupernetCell(net, method, seed, arch[0] if arch else None)
                share = 0.6 if net == HYBRID else 0.4
                rec = record(outcome, share + 0.01 * seed, sandwich=method != STANDALONE)
                rows += study._rows(CFG, cell, rec, data=None, device="cpu")
    return pd.DataFrame(rows)


def paper_like(seeds: int = 3) -> dict[tuple, list]:
    """Hybrid conflicts more; projection keeps the subnets; inherited subnets fall below the
    same architectures trained alone."""
    def accs(base):
        return [{LARGEST: base + 0.01 * s, SMALLEST: base - 0.05 + 0.01 * s,
                 MID: base - 0.02 + 0.01 * s} for s in range(seeds)]
    return {(HYBRID, NAIVE): accs(0.5), (CNN, NAIVE): accs(0.5), (HYBRID, PROJECTED): accs(0.5),
            (HYBRID, STANDALONE, SMALLEST): [0.6 + 0.01 * s for s in range(seeds)],
            (HYBRID, STANDALONE, MID): [0.62 + 0.01 * s for s in range(seeds)]}


ALL_DIVERGED = {k: [DIVERGED] * 3 for k in paper_like()}


# --------------------------------------------------------------- the claims' reporting path


def conflicts_more(runs, ev):
    ev.table("grid_summary.csv", study.summary_table(runs))
    ev.table("grid_runs.csv", runs.drop(columns=["cos", "cos_steps"]))
    ev.figure("cosine_vs_step.png", study.plot_cosine(runs))
    j = v.judge_transformer_conflicts_more(runs, CFG)
    ev.metric("conflict_share_hybrid", mean(j.hybrid), TOL, samples=list(j.hybrid))
    gap = [h - c for h, c in zip(j.hybrid, j.cnn, strict=True)]
    ev.metric("conflict_share_gap", mean(gap), TOL, samples=gap)
    return j


def projection_helps(runs, ev):
    j = v.judge_projection_helps(runs, CFG)
    for arch in j.naive:
        gap = [p - n for p, n in zip(j.projected[arch], j.naive[arch], strict=True)]
        ev.metric(f"acc_gap_{arch}", mean(gap), TOL, samples=gap)
    return j


def naive_underperforms(runs, ev):
    j = v.judge_naive_underperforms(runs, CFG)
    for arch in j.inherited:
        ev.metric(f"acc_{arch}_inherited", mean(j.inherited[arch]), TOL,
                  samples=list(j.inherited[arch]))
        ev.metric(f"acc_{arch}_alone", mean(j.standalone[arch]), TOL,
                  samples=list(j.standalone[arch]))
    return j


CLAIMS = {"transformer_conflicts_more": (conflicts_more, v.judge_transformer_conflicts_more),
          "projection_helps": (projection_helps, v.judge_projection_helps),
          "naive_supernet_underperforms": (naive_underperforms, v.judge_naive_underperforms)}


def report(name: str, runs: pd.DataFrame, tmp_path) -> Evidence:
    """What the claim records and writes (the plot: drawn for every claim here); the evidence,
    with its verdict."""
    ev = Evidence(Claim(f"nasvit.{name}", "test", "test", trained=True), "cpu", tmp_path / name)
    ev.figure("cosine_vs_step.png", study.plot_cosine(runs))
    record_claim, judge = CLAIMS[name]
    j = record_claim(runs, ev)
    ev.decide(j.holds, j.reason, judge_odds(judge, runs, CFG, resamples=20))
    return assert_a_reported_result(ev)


# ------------------------------------------------------------------------------ outcomes


def test_the_fabricated_grid_reproduces_every_claim(tmp_path):
    runs = table(paper_like())
    assert set(runs.columns) >= {"net", "method", "seed", "arch", "acc", "tensor_share",
                                 "step_share", "mean_cos", "cos_steps", "cos", "diverged"}
    for name in CLAIMS:
        assert report(name, runs, tmp_path).verdict is Verdict.REPRODUCED, name


@pytest.mark.parametrize("name", CLAIMS)
def test_every_seed_diverged_is_a_result_with_its_plot(name, tmp_path):
    runs = table(ALL_DIVERGED)
    assert runs.diverged.all() and (runs.acc == CHANCE).all()
    ev = report(name, runs, tmp_path)
    assert ev.verdict in NOT_REPRODUCED, ev.reason
    ev.baseline(v.values(runs, HYBRID, NAIVE), CHANCE, "the hybrid's largest subnet")
    assert ev.measurements["baseline_learned"].value == 0


@pytest.mark.parametrize("name", CLAIMS)
def test_a_single_seed_is_a_result_and_decides_nothing_by_welch(name, tmp_path):
    ev = report(name, table(paper_like(seeds=1)), tmp_path)
    assert ev.verdict is Verdict.INCONCLUSIVE, ev.reason


@pytest.mark.parametrize("name, column", [("transformer_conflicts_more", "tensor_share"),
                                          ("projection_helps", "acc"),
                                          ("naive_supernet_underperforms", "acc")])
def test_a_nan_metric_in_a_judged_cell_is_never_a_pass(name, column, tmp_path):
    runs = table(paper_like())
    runs.loc[(runs.net == HYBRID) & (runs.method == NAIVE) & (runs.seed == 0), column] = math.nan
    ev = report(name, runs, tmp_path)
    assert ev.verdict in NOT_REPRODUCED and "nan" in ev.reason, ev.reason


def test_the_plot_draws_a_diverged_runs_cosines_up_to_its_nan():
    fig = study.plot_cosine(table(ALL_DIVERGED))
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith(("cnn", "hybrid"))]
    assert len(lines) == 6  # 2 supernets × 3 seeds, naive


EMPTY = [
    ("transformer_conflicts_more", [(CNN, NAIVE)],
     "raises: the hybrid's naive sandwich runs and the CNN's need the same seeds: got 3 and 0"),
    ("projection_helps", [(HYBRID, PROJECTED)],
     "raises: the hybrid's smallest subnet, projected and naive need the same seeds: got 0"),
    ("naive_supernet_underperforms", [(HYBRID, STANDALONE, MID)], NOT_REPRODUCED),
]


@pytest.mark.parametrize("name, removed, expected", EMPTY, ids=[n for n, _, _ in EMPTY])
def test_an_empty_cell_plots_and_is_judged_or_named(name, removed, expected, tmp_path):
    runs = table({k: seeds for k, seeds in paper_like().items() if k not in removed})
    ev = Evidence(Claim(f"nasvit.{name}", "test", "test"), "cpu", tmp_path)
    ev.table("grid_summary.csv", study.summary_table(runs))
    ev.figure("cosine_vs_step.png", study.plot_cosine(runs))
    assert all(p.exists() for p in ev.artifacts)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected.removeprefix("raises: ")):
            CLAIMS[name][0](runs, ev)
    else:
        ev = report(name, runs, tmp_path / "judged")
        assert ev.verdict in expected and "nan" in ev.reason, ev.reason


def test_the_plot_says_when_there_is_no_naive_run():
    runs = table({k: s for k, s in paper_like().items() if k[1] != NAIVE})
    ax = study.plot_cosine(runs).axes[0]
    assert ax.get_legend() is None
    assert any("no naive sandwich runs" in t.get_text() for t in ax.texts)

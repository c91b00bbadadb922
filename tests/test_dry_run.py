"""harness.dry_run: a dry run prices the full profile, stores its estimate on
--regen-references, and fails when the estimate is over budget or no longer matches the stored
one (the workflow in a pytester sandbox, and its pieces)."""

from __future__ import annotations

import json

import pandas  # noqa: F401
import pytest
import torch  # noqa: F401

# pytester's in-process runs drop modules first imported inside them (see tests/test_plugin.py)
import harness.costs  # noqa: F401
import harness.dry_run  # noqa: F401
import harness.environment  # noqa: F401
import harness.html_report  # noqa: F401
import harness.results  # noqa: F401

CLAIM_FILE = """
import os
import pytest
from harness.claim import Claim, Tolerance
from harness.costs import Phase

A = Claim(id="fam.a", statement="a", source="nowhere")
B = Claim(id="fam.b", statement="b", source="nowhere")
TOL = Tolerance(why="test tolerance", abs=0.1)

def _phases():
    minutes = float(os.environ.get("PHASE_MINUTES", "2"))
    peak = float(os.environ.get("PHASE_PEAK_GB", "10")) * 1e9
    return {"shared": Phase("timing", "shared timing", 60 * minutes, peak_bytes=peak)}

@pytest.mark.claim(A)
def test_a(evidence):
    evidence.full_size_phases(_phases)
    evidence.metric("x", 1.0, TOL)
    evidence.decide(True, "ok")

@pytest.mark.claim(B)
def test_b(evidence):
    evidence.full_size_phases(_phases)
    evidence.full_size_phases(lambda: {"own": Phase("evaluate", "own", 30.0)})
    evidence.metric("x", 1.0, TOL)
    evidence.decide(True, "ok")
"""


@pytest.fixture
def sandbox(pytester: pytest.Pytester):
    pytester.makepyfile(test_fam_claims=CLAIM_FILE)
    return pytester


def dry_run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess(
        "--references-dir", str(pytester.path / "refs"), "--results-dir",
        str(pytester.path / "results"), "--profile", "full", "--dry-run", *args)


def test_the_estimate_is_printed_stored_and_then_guarded(sandbox, monkeypatch):
    monkeypatch.setenv("PHASE_MINUTES", "2")
    first = dry_run(sandbox)
    assert first.ret == 0
    first.stdout.fnmatch_lines(["*estimated time of the full profile*", "fam * 2.5 *",
                                "all * 2.5 *within*", "assumptions:*"])
    stored = sandbox.path / "refs" / "full" / "estimate.json"
    assert not stored.exists()  # only the explicit regeneration writes it

    regen = dry_run(sandbox, "--regen-references")
    assert regen.ret == 0
    record = json.loads(stored.read_text())
    assert record["families"] == {"fam": 2.5} and record["total_minutes"] == 2.5
    regen.stdout.fnmatch_lines(["*estimate.json: total none -> 2.5 min*"])
    assert dry_run(sandbox).ret == 0  # unchanged: passes

    monkeypatch.setenv("PHASE_MINUTES", "3")  # the model or the profile moved
    moved = dry_run(sandbox)
    assert moved.ret == 1
    moved.stdout.fnmatch_lines(["*no longer matches the model's (3.5 min*--regen-references*"])


def test_an_estimate_over_the_budget_fails_the_dry_run(sandbox, monkeypatch):
    monkeypatch.setenv("PHASE_MINUTES", "45")
    result = dry_run(sandbox)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*45.5*OVER*", "*over its 30-minute budget*"])


def test_a_peak_over_the_planning_budget_fails_the_dry_run(sandbox, monkeypatch):
    monkeypatch.setenv("PHASE_PEAK_GB", "81")
    result = dry_run(sandbox)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*fam: predicted peak 75.4 GiB at once exceeds the 80 GB*"])


def test_price_prices_jobs_at_their_concurrency_and_each_key_once(monkeypatch):
    from collections import namedtuple

    from harness import costs, dry_run
    from harness.evidence import FullSize
    from harness.runs.executors import CELLS_PER_GPU

    monkeypatch.setattr(costs, "train_phase", lambda job, concurrency=1: costs.Phase(
        "train", job.key["cell"], 60.0, concurrency=concurrency))
    Job = namedtuple("Job", "key")
    a, b = Job({"cell": "a"}), Job({"cell": "b"})
    est = dry_run.price([FullSize(jobs=(a,)), FullSize(jobs=(a, b), cells_per_gpu=1),
                         FullSize(phases={"t": costs.Phase("timing", "first", 30.0)}),
                         FullSize(phases={"t": costs.Phase("timing", "again", 99.0)})])
    trained = {p.what: p.concurrency for p in est.phases.values() if p.kind == "train"}
    assert trained == {"a": CELLS_PER_GPU, "b": 1}  # a: the first record's concurrency
    assert est.phases["t"].what == "first" and est.runs == 2
    assert dry_run.price([FullSize()]).phases == {}


def test_a_stored_estimate_matches_within_a_percent_and_the_same_families():
    from harness.dry_run import same_estimate

    assert same_estimate({"families": {"a": 10.0}}, {"families": {"a": 10.09}})
    assert not same_estimate({"families": {"a": 10.0}}, {"families": {"a": 10.2}})
    assert not same_estimate({"families": {"a": 10.0}}, {"families": {"a": 10.0, "b": 1.0}})
    assert same_estimate({"families": {"a": 0.0}}, {"families": {"a": 0.001}})  # a 0.1 min floor


def test_a_failed_check_still_counts_what_it_recorded(pytester):
    pytester.makepyfile(test_fail_claims="""
import pytest
from harness.claim import Claim
from harness.costs import Phase

C = Claim(id="broken.c", statement="c", source="nowhere")

@pytest.mark.claim(C)
def test_c(evidence):
    evidence.full_size_phases(lambda: {"own": Phase("evaluate", "own", 90.0)})
    raise RuntimeError("the one-step run broke")
""")
    result = dry_run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*estimated time of the full profile*", "broken * 1.5 *"])

"""The plugin's workflow, run in a sandbox with pytester:
no reference -> regenerate -> pass -> tampered reference fails -> corrupt file errors."""

from __future__ import annotations

import json

import pandas  # noqa: F401
import pytest
import torch  # noqa: F401

# pytester's in-process runs drop modules first imported inside them; torch and pandas must not
# be re-imported (their C extensions cannot be initialised twice), so import everything here.
import harness.environment  # noqa: F401
import harness.html_report  # noqa: F401
import harness.profiles  # noqa: F401
import harness.references  # noqa: F401
import harness.results  # noqa: F401

CLAIM_FILE = """
import os
import pytest
from harness.claim import Claim, Tolerance

DEMO = Claim(id="demo.claim", statement="x is about 1", source="nowhere", paper={"x": "1"})
GPU_DEMO = Claim(id="demo.gpu", statement="gpu only", source="nowhere", scope="gpu")
TOL = Tolerance(why="test tolerance", abs=0.1)

@pytest.mark.claim(DEMO)
def test_demo(evidence, profile):
    x = float(os.environ.get("DEMO_X", "1.0"))
    evidence.metric("x", x, TOL, paper="1", key=True)
    evidence.decide(abs(x - 1) < 0.5, f"x={x}")

@pytest.mark.claim(GPU_DEMO)
def test_gpu_demo(evidence):
    evidence.metric("y", 2.0, TOL)
    evidence.note("a caveat worth reading")
    evidence.decide(True, "y is 2")
"""


@pytest.fixture
def sandbox(pytester: pytest.Pytester):
    pytester.makepyfile(test_demo_claims=CLAIM_FILE)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    refs = pytester.path / "refs"
    return pytester.runpytest_inprocess(
        "--references-dir", str(refs), "--results-dir", str(pytester.path / "results"),
        "--profile", "smoke", "--device", "cpu", *args,
    )


def ref_file(pytester: pytest.Pytester, claim: str = "demo.claim"):
    return pytester.path / "refs" / "smoke" / "cpu" / f"{claim}.json"


def test_missing_reference_reports_verdict_and_the_command(sandbox):
    result = run(sandbox)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*demo.claim*REPRODUCED*NO_REFERENCE*",
                                 "*nox -s regen -- --profile smoke --device cpu --claim demo.claim*"])
    assert not ref_file(sandbox).exists()


def test_strict_references_fails_without_a_reference(sandbox):
    run(sandbox, "--strict-references").assert_outcomes(failed=2)


def test_full_workflow_regen_pass_tamper_corrupt(sandbox, monkeypatch):
    result = run(sandbox, "--regen-references")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*references regenerated*", "*x: (absent) -> 1*"])
    stored = json.loads(ref_file(sandbox).read_text())
    assert stored["schema"] == 1 and stored["verdict"] == "REPRODUCED"
    assert stored["metrics"]["x"]["justification"] == "test tolerance"
    assert {"torch", "harness_commit", "device_name", "cpu"} <= stored["environment"].keys()

    run(sandbox).assert_outcomes(passed=2)  # same measurement: PASS

    # a tampered reference value fails, naming the metric
    stored["metrics"]["x"]["value"] = 1.5
    ref_file(sandbox).write_text(json.dumps(stored))
    result = run(sandbox)
    result.assert_outcomes(passed=1, failed=1)
    assert "x: measured 1 outside [1.4, 1.6] (reference 1.5" in result.stdout.str()

    # a verdict change fails even when the numbers are within tolerance
    stored["metrics"]["x"]["value"] = 1.0
    stored["verdict"] = "NOT_REPRODUCED"
    ref_file(sandbox).write_text(json.dumps(stored))
    run(sandbox).stdout.fnmatch_lines(["*verdict: REPRODUCED but reference NOT_REPRODUCED*"])

    # a corrupt file names the file; an unknown schema too
    ref_file(sandbox).write_text("{not json")
    result = run(sandbox)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*corrupt reference file {ref_file(sandbox)}*"])
    ref_file(sandbox).write_text(json.dumps({**stored, "schema": 99}))
    run(sandbox).stdout.fnmatch_lines(["*has schema 99*"])

    # regeneration replaces it, and shows old against new
    monkeypatch.setenv("DEMO_X", "0.9")
    result = run(sandbox, "--regen-references", "--claim", "demo.claim")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["*x: 1 -> 0.9*"])
    run(sandbox).assert_outcomes(passed=2)


def test_measured_regression_is_caught(sandbox, monkeypatch):
    run(sandbox, "--regen-references").assert_outcomes(passed=2)
    monkeypatch.setenv("DEMO_X", "1.3")
    result = run(sandbox)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*demo.claim regressed*", "*x: measured 1.3 outside*"])
    obtained = list((sandbox.path / "results").glob("*/demo.claim.obtained.json"))
    assert obtained, "a regression leaves this run's record beside the results"


def test_gpu_scoped_claim_is_out_of_scope_on_cpu(sandbox):
    result = run(sandbox)
    result.stdout.fnmatch_lines(["*demo.gpu*OUT_OF_SCOPE*GPU-scoped, measured on cpu*"])


def test_results_are_written_as_csv_json_and_report(sandbox):
    run(sandbox)
    (run_dir,) = (sandbox.path / "results").iterdir()
    import pandas as pd

    frame = pd.read_csv(run_dir / "claims.csv")
    assert set(frame["claim"]) == {"demo.claim", "demo.gpu"}
    doc = json.loads((run_dir / "claims.json").read_text())
    assert doc["profile"] == "smoke" and "torch" in doc["environment"]
    report = (run_dir / "report.md").read_text()
    assert "demo.claim" in report and "Note: a caveat worth reading" in report
    html = (run_dir / "report.html").read_text()  # the HTML report, written at session end
    assert 'id="verdict-table"' in html and "demo.gpu" in html and "a caveat worth reading" in html


def test_notes_show_in_the_table(sandbox):
    result = run(sandbox)
    result.stdout.fnmatch_lines(["*note: a caveat worth reading*"])


def test_unknown_claim_is_a_usage_error(sandbox):
    result = run(sandbox, "--claim", "no.such.claim")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown claim 'no.such.claim'; known claims: demo.claim, demo.gpu*"])


KEYWORD_FILE = """
import pytest
from harness.claim import Claim, Tolerance

RULE = Claim(id="alpha.rule", statement="a", source="nowhere")
SPEED = Claim(id="beta.speed", statement="b", source="nowhere")
TOL = Tolerance(why="test tolerance", abs=0.1)

@pytest.mark.claim(RULE)
def test_one(evidence):
    evidence.metric("x", 1.0, TOL)
    evidence.decide(True, "ok")

@pytest.mark.claim(SPEED)
def test_two(evidence):
    evidence.metric("x", 1.0, TOL)
    evidence.decide(True, "ok")
"""


@pytest.mark.parametrize("keyword, selected, dropped", [
    ("alpha.rule", "alpha.rule", "beta.speed"), ("alpha", "alpha.rule", "beta.speed"),
    ("beta", "beta.speed", "alpha.rule"), ("beta.speed", "beta.speed", "alpha.rule")])
def test_k_selects_claims_by_id_and_family(pytester, keyword, selected, dropped):
    pytester.makepyfile(test_keyword_claims=KEYWORD_FILE)
    result = run(pytester, "-k", keyword)
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines([f"{selected} *REPRODUCED*"])
    assert dropped not in result.stdout.str()


def test_unknown_profile_is_a_usage_error(sandbox):
    result = sandbox.runpytest_inprocess("--profile", "huge")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid choice: 'huge'*"])


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_worker_count_is_a_usage_error(sandbox, value):
    result = sandbox.runpytest_inprocess(f"--workers={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--workers: a positive integer or 'auto', not '{value}'*"])


def test_dry_run_skips_reference_comparison(sandbox):
    result = run(sandbox, "--dry-run", "--strict-references")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*dry run*", "*demo.claim*DRY_RUN*"])


def test_check_without_verdict_fails(pytester):
    pytester.makepyfile("""
        import pytest
        from harness.claim import Claim
        C = Claim(id="demo.none", statement="s", source="s")
        @pytest.mark.claim(C)
        def test_none(evidence):
            pass
    """)
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*recorded no verdict*"])


TRAINED_FILE = """
import os
import pytest
from harness.bands import Measured
from harness.claim import ACCURACY, Claim

TRAINED = Claim(id="demo.trained", statement="it learns", source="nowhere", trained=True)
UNTRAINED = Claim(id="demo.exact", statement="exact", source="nowhere")

@pytest.mark.claim(TRAINED)
def test_trained(evidence):
    acc = [float(a) for a in os.environ.get("DEMO_ACC", "0.5,0.6").split(",")]
    evidence.baseline(acc, chance=0.1, what="the demo net")
    evidence.metric("acc", sum(acc) / len(acc), Measured("accuracy", ACCURACY, floor=0.05),
                    samples=acc)
    evidence.decide(True, "fine")

@pytest.mark.claim(UNTRAINED)
def test_exact(evidence):
    evidence.metric("n", 3, Measured("a count", (0, 10)))
    evidence.decide(True, "fine")
"""


def test_trained_selects_trained_claims_and_regen_refuses_nets_at_chance(pytester, monkeypatch):
    pytester.makepyfile(test_trained_claims=TRAINED_FILE)
    run(pytester, "--trained").assert_outcomes(passed=1, deselected=1)
    monkeypatch.setenv("DEMO_ACC", "0.11,0.12")
    result = run(pytester, "--trained", "--regen-references")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*refusing to store a reference that guards nothing*",
                                 "*baseline_learned is 0*"])
    assert not ref_file(pytester, "demo.trained").exists()
    monkeypatch.setenv("DEMO_ACC", "0.5,0.6")
    run(pytester, "--trained", "--regen-references").assert_outcomes(passed=1, deselected=1)
    stored = json.loads(ref_file(pytester, "demo.trained").read_text())
    assert stored["trained"] and stored["metrics"]["baseline_learned"]["value"] == 1
    assert stored["metrics"]["acc"]["samples"] == [0.5, 0.6]
    assert stored["metrics"]["acc"]["domain"] == [0.0, 1.0]
    assert "NOT MEASURED" in stored["metrics"]["acc"]["justification"]
    # A loop that stops learning fails the exact baseline metric of the stored reference.
    monkeypatch.setenv("DEMO_ACC", "0.1,0.1")
    result = run(pytester, "--trained")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*baseline_learned: measured 0 outside ?1, 1?*"])


def test_measured_bands_come_from_the_stored_noise(pytester):
    pytester.makepyfile(test_trained_claims=TRAINED_FILE)
    noise = pytester.path / "refs" / "smoke" / "cpu" / "noise" / "demo.trained.json"
    noise.parent.mkdir(parents=True)
    noise.write_text(json.dumps({"schema": 1, "claim": "demo.trained", "metrics": {
        "acc": {"native": {"value": 0.55, "samples": [0.5, 0.6]},
                "avx2": {"value": 0.45, "samples": [0.4, 0.5]}}}}))
    run(pytester, "--trained", "--regen-references").assert_outcomes(passed=1, deselected=1)
    acc = json.loads(ref_file(pytester, "demo.trained").read_text())["metrics"]["acc"]
    assert "native 0.55 (seeds 0.5, 0.6), avx2 0.45" in acc["justification"]
    assert acc["abs_tol"] > 0.1
    noise.write_text("{corrupt")
    result = run(pytester, "--trained")
    result.stdout.fnmatch_lines(["*corrupt noise file*"])

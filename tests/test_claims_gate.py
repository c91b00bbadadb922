"""Claim gating: a claim that leaves its reference band or changes verdict makes the pytest run,
and ``nox -s claims`` around it, exit non-zero; ``--regen-references`` shows old -> new.
Run on the cheapest real claim (``agc.rule``: exact counts, no training, half a second)
against a copy of its committed reference that the test shifts or flips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLAIM = "agc.rule"
STORED = REPO / "reference_results" / "smoke" / "cpu" / f"{CLAIM}.json"

pytestmark = pytest.mark.slow


def references(tmp_path: Path, change=None) -> Path:
    """A reference store holding only this claim's committed reference, changed by ``change``."""
    doc = json.loads(STORED.read_text())
    if change:
        change(doc)
    path = tmp_path / "refs" / "smoke" / "cpu" / f"{CLAIM}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    return tmp_path / "refs"


def run_claim(tmp_path: Path, refs: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "claims", "-p", "no:cacheprovider", "--claim", CLAIM,
         "--profile", "smoke", "--device", "cpu", "--references-dir", str(refs),
         "--results-dir", str(tmp_path / "results"), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600)


def shift(doc):
    doc["metrics"]["cases_checked"]["value"] += 1.0


def flip(doc):
    doc["verdict"] = "NOT_REPRODUCED"


@pytest.mark.parametrize("change, message", [
    (shift, "cases_checked: measured 50 outside [51, 51]"),
    (flip, "verdict: REPRODUCED but reference NOT_REPRODUCED"),
])
def test_a_regressed_or_flipped_claim_fails_the_run(tmp_path, change, message):
    result = run_claim(tmp_path, references(tmp_path, change))
    assert result.returncode == 1, result.stdout[-3000:]
    assert message in result.stdout and "REGRESSED" in result.stdout
    assert list((tmp_path / "results").glob(f"*/{CLAIM}.obtained.json"))


def test_nox_claims_exits_non_zero_on_a_regression(tmp_path):
    """The session's status is pytest's: nox fails the session on any non-zero exit."""
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                                  os.environ.get("PATH", "")]),
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "nox", "-f", str(REPO / "noxfile.py"), "--no-venv", "--no-install",
           "-s", "claims", "--", "-p", "no:cacheprovider", "--claim", CLAIM, "--profile", "smoke",
           "--device", "cpu", "--results-dir", str(tmp_path / "results"), "--references-dir"]
    bad = subprocess.run([*cmd, str(references(tmp_path / "bad", shift))], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0, bad.stdout[-3000:] + bad.stderr[-3000:]
    assert "cases_checked: measured" in bad.stdout + bad.stderr
    good = subprocess.run([*cmd, str(references(tmp_path / "good"))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]  # unchanged: passes
    assert "PASS" in good.stdout


def test_regeneration_prints_old_and_new_of_every_changed_metric(tmp_path):
    refs = references(tmp_path, shift)
    result = run_claim(tmp_path, refs, "--regen-references")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "references regenerated (old -> new)" in result.stdout
    assert "cases_checked: 51 -> 50" in result.stdout
    assert "violations: 0 -> 0" in result.stdout  # every metric, changed or not
    stored = json.loads((refs / "smoke" / "cpu" / f"{CLAIM}.json").read_text())
    assert stored["metrics"]["cases_checked"]["value"] == 50

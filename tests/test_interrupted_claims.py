"""A claims run killed midway, as a user's Ctrl-C, a scheduler's SIGKILL or the OOM killer would
end it, then run again: finished cells are reused, nothing on disk is left half-written (cache
entries, the reference, the run's results), and the final table equals an uninterrupted run's.

Real processes: ``python -m pytest`` on a small trained claim (eight slow cells through
``run_jobs`` and the ``executor`` fixture, as the families' grids), its own process group, so
the kill reaches its workers too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from tests.killable import default_sigint, wait_for_an_entry

REPO = Path(__file__).resolve().parent.parent

CLAIM_FILE = textwrap.dedent("""
    import time
    import pytest
    import torch, torch.nn as nn
    from harness.bands import mean_accuracy
    from harness.claim import Claim
    from harness.runs.jobs import TrainJob, run_jobs
    from harness.train import TrainConfig

    LEARNS = Claim(id="demo.learns", statement="a linear model learns a linear task",
                   source="nowhere", trained=True)

    class SlowStep:  # each cell takes about 0.6 s: a kill lands between cells
        def __call__(self, state):
            time.sleep(0.05)

    def model():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

    def split(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(96, 3, 2, 2, generator=g)
        return x, x.flatten(1)[:, :3].argmax(1)  # the label is the largest of 3 inputs

    @pytest.mark.claim(LEARNS)
    def test_learns(evidence, executor):
        train, test = split(0), split(1)
        jobs = [TrainJob({"demo-interrupt": seed}, model, train, test,
                         TrainConfig(epochs=1, batch_size=8, lr=0.2, warmup_epochs=0, seed=seed),
                         before_step=[SlowStep()], desc=f"seed {seed}")
                for seed in range(8)]
        accs = [r.test_acc for r in run_jobs(jobs, executor=executor, progress=False)]
        evidence.baseline(accs, chance=1 / 3, what="the linear model")
        evidence.metric("acc", sum(accs) / len(accs), mean_accuracy("linear model"), key=True,
                        samples=accs)
        evidence.decide(min(accs) > 0.5, f"accuracies {accs}")
""")


def _start(tmp: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pytest", str(tmp / "test_demo_claims.py"), "-q",
           "-p", "no:cacheprovider", "--profile", "smoke", "--device", "cpu",
           "--references-dir", str(tmp / "refs"), "--results-dir", str(tmp / "results"), *args]
    return subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=default_sigint,
                            env={**os.environ, "PYTHONPATH": str(REPO),
                                 "HARNESS_CACHE": str(tmp / "cache")})


def _run(tmp: Path, *args: str) -> str:
    proc = _start(tmp, *args)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    return out


def _table(tmp: Path) -> pd.DataFrame:
    (csv,) = sorted((tmp / "results").glob("*/claims.csv"), key=lambda p: p.stat().st_mtime)[-1:]
    return pd.read_csv(csv)


def _every_file_whole(root: Path) -> None:
    """No file a reader would take is half-written: each JSON parses; temporaries are named so
    that no reader takes them."""
    for p in root.rglob("*.json"):
        json.loads(p.read_text())
    for p in root.rglob("*.csv"):
        pd.read_csv(p)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, pd.DataFrame, str]:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    (tmp / "test_demo_claims.py").write_text(CLAIM_FILE)
    _run(tmp, "--regen-references")
    _run(tmp, "--strict-references")  # the uninterrupted run: its table is the one to match
    ref = (tmp / "refs" / "smoke" / "cpu" / "demo.learns.json").read_text()
    return tmp, _table(tmp), ref


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "executor"), [(signal.SIGINT, "processes"),
                                               (signal.SIGKILL, "processes"),
                                               (signal.SIGKILL, "local")])
def test_a_killed_claims_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path, uninterrupted,
                                                                      sig, executor):
    done, expected, reference = uninterrupted
    (tmp_path / "test_demo_claims.py").write_text(CLAIM_FILE)
    ref_dir = tmp_path / "refs" / "smoke" / "cpu"
    ref_dir.mkdir(parents=True)
    (ref_dir / "demo.learns.json").write_text(reference)
    cache = tmp_path / "cache"
    args = ("--executor", executor) + (("--workers", "2") if executor == "processes" else ())

    proc = _start(tmp_path, "--strict-references", *args)
    wait_for_an_entry(cache, proc)
    os.killpg(proc.pid, sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    finished = {p.name for p in cache.glob("*.json")}
    assert 0 < len(finished) < 8, "the kill should land midway"
    for root in (cache, tmp_path / "refs", tmp_path / "results"):
        _every_file_whole(root)
    assert (ref_dir / "demo.learns.json").read_text() == reference  # never touched

    out = _run(tmp_path, "--strict-references", *args)
    assert "PASS" in out
    table = _table(tmp_path)
    same = ["claim", "verdict", "reason", "measured", "reference"]  # not the wall time
    assert table[same].equals(expected[same])
    rec = json.loads(max((tmp_path / "results").glob("*/claims.json"),
                         key=lambda p: p.stat().st_mtime).read_text())
    expected_rec = json.loads(max((done / "results").glob("*/claims.json"),
                                  key=lambda p: p.stat().st_mtime).read_text())
    assert _metrics(rec) == _metrics(expected_rec)


def _metrics(doc: dict) -> dict:
    return {c["claim"]: (c["metrics"], c["samples"]) for c in doc["claims"]}

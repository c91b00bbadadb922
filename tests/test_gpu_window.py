"""``python -m harness.gpu_window`` on the CPU, with a fake runner and a fake clock: the CUDA tests
first, then the families cheapest first, each with the time left as its timeout; a family that
would not fit is not started; the summary says what each measured beside its estimate."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest

from harness import gpu_window as gw

ESTIMATE = {"total_minutes": 40.0, "families": {"scaling": 20.0, "agc": 3.0, "itop": 2.0,
                                                  "nasvit": 6.0, "decomp": 1.0, "deploy": 8.0},
            "assumptions": []}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeRunner:
    """Each family takes ``minutes[family]`` on the fake clock (or its whole timeout, when
    longer: then it is killed); writes what pytest would and one training record per family."""

    def __init__(self, clock: Clock, cache: Path, minutes: dict[str, float]) -> None:
        self.clock, self.cache, self.minutes = clock, cache, minutes
        self.calls: list[tuple[str, float]] = []

    def __call__(self, cmd, timeout, log, env=None):
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(" ".join(cmd) + "\n")
        if "tests/test_cuda.py" in cmd:
            self.calls.append(("test_cuda", timeout))
            self.clock.t += 30
            return gw.Outcome(0, 30.0)
        arg = dict(zip(cmd, cmd[1:]))
        family = arg["--claim"].removesuffix(".*")
        self.calls.append((family, timeout))
        assert arg["--profile"] == "full" and arg["--device"] == "cuda"
        assert not Path(arg["--references-dir"]).exists()  # an empty store: measure only
        seconds = self.minutes.get(family, 1.0) * 60
        if seconds > timeout:
            self.clock.t += timeout
            return gw.Outcome(None, timeout)
        self.clock.t += seconds
        run = Path(arg["--results-dir"]) / "20260101-000000-full-cuda-nvidia-h200"
        run.mkdir(parents=True)
        (run / "claims.json").write_text(json.dumps({"claims": [
            {"claim": f"{family}.a", "verdict": "REPRODUCED", "reference": "NO_REFERENCE",
             "seconds": seconds, "metrics": {"acc": 0.9}},
            {"claim": f"{family}.b", "verdict": "SKIPPED", "reference": "SKIPPED",
             "metrics": {}}]}))
        self.cache.mkdir(parents=True, exist_ok=True)
        (self.cache / f"{family}.json").write_text(json.dumps(
            {"key": {}, "record": {"peak_memory_mb": 100.0 * len(family)}}))
        return gw.Outcome(0, seconds)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(gw, "now", clock)
    monkeypatch.setattr(gw, "_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(gw, "load_estimate", lambda: ESTIMATE)

    def make(minutes: dict[str, float]) -> FakeRunner:
        runner = FakeRunner(clock, tmp_path / "cache", minutes)
        monkeypatch.setattr(gw, "run_command", runner)
        return runner

    return make


def test_families_run_cheapest_first_within_the_limit(tmp_path, fake):
    runner = fake({"decomp": 1.0, "itop": 2.5, "agc": 3.0, "nasvit": 2.0, "deploy": 8.0})
    out = tmp_path / "out"
    assert gw.main(["--out", str(out), "--limit-s", "900"]) == 0
    # test_cuda, then by estimate: decomp 1, itop 2, agc 3, nasvit 6 (fits: 7.5 min left),
    # deploy 8 (too long for what is left), scaling 20: not started
    assert [c[0] for c in runner.calls] == ["test_cuda", "decomp", "itop", "agc", "nasvit"]
    left = 900 - gw.RESERVE_S
    expected = [min(left, 300), left - 30, left - 90, left - 240, left - 420]
    assert [c[1] for c in runner.calls] == pytest.approx(expected)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["order"] == ["decomp", "itop", "agc", "nasvit", "deploy", "scaling"]
    fams = {f["family"]: f for f in summary["families"]}
    assert fams["itop"]["measured_minutes"] == 2.5 and fams["itop"]["estimate_minutes"] == 2.0
    assert fams["itop"]["peak_gpu_memory_mb"] == 400.0 and fams["itop"]["trained_runs"] == 1
    assert fams["agc"]["records"] == ["agc.a"]  # agc.b was skipped: no record to make
    assert fams["nasvit"]["status"] == "passed"
    assert fams["deploy"]["status"].startswith("not started") and "estimated 8.0 min" in \
        fams["deploy"]["status"]
    assert fams["scaling"]["status"].startswith("not started")
    assert summary["test_cuda"]["status"] == "passed"

    # DIR holds the four files only; the run folders (with their claims.json) are in the tarball
    assert sorted(p.name for p in out.iterdir()) == ["runs.tar.gz", "summary.json", "summary.md",
                                                     "test_cuda.txt"]
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    assert "runs/agc/20260101-000000-full-cuda-nvidia-h200/claims.json" in names
    assert "runs/agc.log" in names
    md = (out / "summary.md").read_text()
    assert "| itop | 2.0 | 2.50 | 400.0 | passed | itop.a |" in md
    assert "| scaling | 20.0 | — | — | not started" in md


def test_without_an_estimate_the_fixed_order_and_a_killed_family(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(gw, "load_estimate", lambda: None)
    runner = fake({"decomp": 2.0, "deploy": 2.0, "itop": 60.0})
    out = tmp_path / "out"
    assert gw.main(["--out", str(out), "--limit-s", "600"]) == 0
    # no estimate: every family is started while time is left; itop runs into the limit
    assert [c[0] for c in runner.calls] == ["test_cuda", "decomp", "deploy", "itop"]
    summary = json.loads((out / "summary.json").read_text())
    fams = {f["family"]: f for f in summary["families"]}
    assert summary["order"] == list(gw.FAMILIES)
    assert fams["itop"]["status"] == "timed out" and fams["itop"]["records"] == []
    assert fams["itop"]["timeout_s"] == pytest.approx(600 - gw.RESERVE_S - 30 - 240)
    for f in ("nasvit", "agc", "scaling"):
        assert fams[f]["status"].startswith("not started")


def test_a_failing_cuda_test_run_is_the_exit_status(tmp_path, fake, monkeypatch):
    runner = fake({})

    def failing(cmd, timeout, log, env=None):
        if "tests/test_cuda.py" in cmd:
            log.write_text("1 failed\n")
            return gw.Outcome(1, 5.0)
        return runner(cmd, timeout, log, env)

    monkeypatch.setattr(gw, "run_command", failing)
    assert gw.main(["--out", str(tmp_path / "out"), "--limit-s", "120"]) == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["test_cuda"] == {"returncode": 1, "status": "tests failed", "minutes": 0.08}
    assert "1 failed" in (tmp_path / "out" / "test_cuda.txt").read_text()
    assert [f["family"] for f in summary["families"]][:1] == ["decomp"]  # the claims still ran


def test_family_order_puts_unestimated_families_last():
    assert gw.family_order({"families": {"agc": 2.0, "decomp": 5.0}}) == [
        ("agc", 2.0), ("decomp", 5.0), ("deploy", None), ("itop", None), ("nasvit", None),
        ("scaling", None)]


def test_run_command_stops_the_whole_process_group_at_its_timeout(tmp_path):
    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', " \
            "'import time; time.sleep(60)']); time.sleep(60)"
    o = gw.run_command([sys.executable, "-c", child], 1.0, tmp_path / "log.txt")
    assert o.timed_out and o.seconds < 30
    assert "stopped at its timeout" in (tmp_path / "log.txt").read_text()

"""``nox -s calibrate`` (harness/calibrate.py): references for a device class that has none, in
one command. End to end on the CPU (its three kernel paths stand in for the GPU's settings), in
a copy of the tree; the resume logic with a fake pytest; and the claims run's advice when its
device class has no references."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import calibrate
from harness.environment import CUDA_KERNEL_SETTINGS, KERNEL_SETTINGS, KERNEL_VARIABLES

REPO = Path(__file__).resolve().parent.parent
ESTIMATE = {"total_minutes": 30.0, "families": {"agc": 4.0, "scaling": 10.0, "itop": 16.0},
            "assumptions": ["a test"]}


def _tree(dst: Path) -> Path:
    """The code a calibration runs, copied: its resume check hashes the sources, which must not
    move under it while the test runs."""
    for folder in ("harness", "claims"):
        shutil.copytree(REPO / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")
    return dst


def _env(tree: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
    return {**env, "PYTHONPATH": str(tree), "HARNESS_CACHE": str(cache)}


@pytest.mark.slow
def test_calibrate_end_to_end_on_the_cpu_then_resume(tmp_path):
    tree = _tree(tmp_path / "tree")
    refs, results = tmp_path / "refs", tmp_path / "results"
    cmd = [sys.executable, "-m", "harness.calibrate", "--profile", "smoke", "--device", "cpu",
           "--claim", "agc.rule", "--references-dir", str(refs), "--results-dir", str(results),
           "--yes"]
    env = _env(tree, tmp_path / "cache")
    first = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    out = first.stdout
    assert first.returncode == 0, out + first.stderr
    # the cost comes first, with the device class
    assert out.splitlines()[0].startswith("calibrate: estimated cost 3 CPU kernel paths "
                                          "(native, aten-default, avx2)"), out
    assert "device class cpu" in out.splitlines()[0]
    # one run per kernel path, each under its own setting
    for name in KERNEL_SETTINGS:
        (run,) = calibrate.run_folders(results / "calibrate" / name, "smoke", "cpu")
        assert json.loads((run / "claims.json").read_text())["environment"]["kernel_setting"] == name
    noise = json.loads((refs / "smoke" / "cpu" / "noise" / "agc.rule.json").read_text())
    assert list(noise["settings"]) == list(KERNEL_SETTINGS)
    assert set(noise["metrics"]["violations"]) == set(KERNEL_SETTINGS)
    reference = refs / "smoke" / "cpu" / "agc.rule.json"
    stored = json.loads(reference.read_text())
    assert stored["claim"] == "agc.rule" and stored["environment"]["kernel_setting"] == "native"
    assert f"  {reference}" in out and "wrote 2 files" in out
    assert "no references for" not in out  # measuring against an empty store is on purpose
    stamps = {p: p.stat().st_mtime_ns for p in refs.rglob("*.json")}

    second = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.splitlines()[0].startswith("calibrate: estimated cost")
    assert "calibrated already" in second.stdout and "nothing to do" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in refs.rglob("*.json")} == stamps  # nothing rewritten
    for name in KERNEL_SETTINGS:  # and nothing measured again
        assert len(calibrate.run_folders(results / "calibrate" / name, "smoke", "cpu")) == 1

    # the references it made gate a claims run, strictly, with no advice printed
    claims = subprocess.run(
        [sys.executable, "-m", "pytest", "claims", "-q", "-p", "no:cacheprovider", "--profile",
         "smoke", "--device", "cpu", "--claim", "agc.rule", "--references-dir", str(refs),
         "--results-dir", str(tmp_path / "check"), "--strict-references"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    assert claims.returncode == 0, claims.stdout + claims.stderr
    assert "PASS" in claims.stdout and "no references for" not in claims.stdout


@pytest.mark.slow
def test_a_claims_run_without_references_says_how_to_make_them_first_and_after_the_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "claims", "-q", "-p", "no:cacheprovider", "--profile",
         "smoke", "--device", "cpu", "--claim", "agc.rule", "--references-dir",
         str(tmp_path / "empty"), "--results-dir", str(tmp_path / "results")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    advice = ("no references for cpu: every row is NO_REFERENCE and gates nothing. Make them: "
              "nox -s calibrate -- --profile smoke --device cpu (3 CPU kernel paths")
    lines = out.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith(advice)]
    table = next(i for i, line in enumerate(lines) if "claims: profile smoke on cpu" in line)
    results = next(i for i, line in enumerate(lines) if line.startswith("results: "))
    assert len(at) == 2, out
    assert at[0] < table < at[1] < results  # at the top, and right after the table
    assert "agc.rule" in "\n".join(lines[table:at[1]])


def test_the_advice_on_a_gpu_prices_every_setting_from_the_stored_estimate(monkeypatch):
    monkeypatch.setattr(calibrate, "load_estimate", lambda: ESTIMATE)
    msg = calibrate.no_references_message("full", "cuda", "cuda-nvidia-h200")
    assert msg == ("no references for cuda-nvidia-h200: every row is NO_REFERENCE and gates "
                   "nothing. Make them: nox -s calibrate (about 90 GPU-minutes: 3 CUDA kernel "
                   "settings (native, no-tf32, deterministic) × the full profile's estimated "
                   "30 min)")
    monkeypatch.setattr(calibrate, "load_estimate", lambda: None)
    msg = calibrate.no_references_message("full", "cuda", "cuda-nvidia-h200")
    assert "Make them: nox -s calibrate (3 CUDA kernel settings" in msg
    assert "no stored estimate" in msg
    total, text = calibrate.cost_text("full", "cuda", ["agc.*", "itop.rate_definition"], ESTIMATE)
    assert total == 3 * (4 + 16) and "(agc.*, itop.rate_definition) estimated 20 min" in text


# ------------------------------------------------------------------ resuming, with a fake pytest


STAMPS = itertools.count(1)  # run folders are named by their time stamp: later sorts last


class FakePytest:
    """Stands in for ``calibrate.run``: writes the run folder a claims run would (its
    ``claims.json`` under the setting the environment names) or, regenerating, a reference."""

    def __init__(self, fail: set[str] = frozenset(), rc: int = 0):
        self.calls: list[str] = []
        self.fail, self.rc = fail, rc

    def __call__(self, cmd: list[str], env: dict[str, str]) -> int:
        from harness.environment import kernel_setting_name

        arg = dict(zip(cmd, cmd[1:]))
        name = kernel_setting_name({v: env.get(v) for v in KERNEL_VARIABLES})
        if "--regen-references" in cmd:
            self.calls.append("regen")
            ref = Path(arg["--references-dir"]) / "smoke" / "cpu" / "demo.claim.json"
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text("{}")
            return 0
        self.calls.append(name)
        if name in self.fail:
            return 2
        n = next(STAMPS)
        run = Path(arg["--results-dir"]) / f"20260101-{n:06d}-smoke-cpu"
        run.mkdir(parents=True)
        (run / "claims.json").write_text(json.dumps({
            "environment": {"kernel_setting": name, "kernel_path": {"setting": name}},
            "claims": [{"claim": "demo.claim", "verdict": "REPRODUCED",
                        "metrics": {"x": 1.0 + 0.01 * (n % 7)}}]}))
        return self.rc


def _main(tmp_path, *extra: str) -> int:
    return calibrate.main(["--profile", "smoke", "--device", "cpu", "--references-dir",
                           str(tmp_path / "refs"), "--results-dir", str(tmp_path / "results"),
                           "--yes", *extra])


def test_a_stopped_calibration_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(calibrate, "load_estimate", lambda: None)
    stopped = FakePytest(fail={"aten-default"}, rc=1)  # 1: claims failed, fine while measuring
    monkeypatch.setattr(calibrate, "run", stopped)
    assert _main(tmp_path) == 2
    assert stopped.calls == ["native", "aten-default"]
    assert "pytest exited 2 under setting aten-default" in capsys.readouterr().err

    resumed = FakePytest()
    monkeypatch.setattr(calibrate, "run", resumed)
    assert _main(tmp_path) == 0
    assert resumed.calls == ["aten-default", "avx2", "regen"]  # native is not measured again
    out = capsys.readouterr().out
    assert "setting native measured already" in out and "(resumed)" in out
    noise = json.loads((tmp_path / "refs" / "smoke" / "cpu" / "noise" / "demo.claim.json").read_text())
    assert set(noise["metrics"]["x"]) == set(KERNEL_SETTINGS)

    done = FakePytest()
    monkeypatch.setattr(calibrate, "run", done)
    assert _main(tmp_path) == 0 and done.calls == []
    assert "nothing to do" in capsys.readouterr().out
    assert _main(tmp_path, "--fresh") == 0  # measures everything again on request
    assert done.calls == [*KERNEL_SETTINGS, "regen"]

    other = FakePytest()  # other arguments: not the same measurement
    monkeypatch.setattr(calibrate, "run", other)
    assert _main(tmp_path, "--claim", "demo.*") == 0
    assert other.calls == [*KERNEL_SETTINGS, "regen"]


def test_it_asks_before_starting_on_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(calibrate, "load_estimate", lambda: ESTIMATE)
    fake = FakePytest()
    monkeypatch.setattr(calibrate, "run", fake)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or "n")
    assert calibrate.main(["--profile", "full", "--device", "cpu", "--references-dir",
                           str(tmp_path / "refs"), "--results-dir", str(tmp_path / "r")]) == 1
    assert asked == ["estimated 90 minutes, continue? [y/N] "] and fake.calls == []
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("calibrate: estimated cost about 90 minutes: 3 CPU kernel paths")


def test_has_references_answers_by_exit_status(tmp_path, capsys):
    assert calibrate.main(["--profile", "smoke", "--device", "cpu", "--has-references"]) == 0
    assert calibrate.main(["--profile", "smoke", "--device", "cpu", "--has-references",
                           "--references-dir", str(tmp_path)]) == 1
    assert "make them: nox -s calibrate -- --profile smoke --device cpu" in capsys.readouterr().out
    (tmp_path / "smoke" / "cpu" / "noise").mkdir(parents=True)
    (tmp_path / "smoke" / "cpu" / "noise" / "x.json").write_text("{}")
    assert not calibrate.has_references(tmp_path, "smoke", "cpu")  # noise alone is not one


def test_collect_takes_the_cuda_settings_for_a_cuda_device_class(tmp_path):
    from harness import bands

    runs = []
    for name in CUDA_KERNEL_SETTINGS:
        run = tmp_path / name
        run.mkdir()
        (run / "claims.json").write_text(json.dumps({
            "environment": {"kernel_setting": name, "kernel_path": {"cuda": {"setting": name}}},
            "claims": [{"claim": "demo.claim", "verdict": "REPRODUCED", "metrics": {"x": 1.0}}]}))
        runs.append(run)
    bands.collect(runs, tmp_path / "refs", "full", "cuda-nvidia-h200")
    noise = bands.load_noise(bands.noise_path(tmp_path / "refs", "full", "cuda-nvidia-h200",
                                              "demo.claim"))
    assert set(noise.of("x")) == set(CUDA_KERNEL_SETTINGS)
    with pytest.raises(bands.NoiseError, match="unnamed kernel setting"):
        bands.collect(runs[1:], tmp_path / "refs", "full", "cpu")  # no-tf32 is no CPU path


def test_the_nox_session_defaults_to_the_full_profile_on_cuda_only_on_a_gpu_box():
    sys.path.insert(0, str(REPO))
    import noxfile

    assert callable(noxfile.calibrate)
    assert noxfile.calibrate_arguments([], True) == ["--profile", "full", "--device", "cuda"]
    assert noxfile.calibrate_arguments(["--has-references"], True) == [
        "--profile", "full", "--device", "cuda", "--has-references"]
    assert noxfile.calibrate_arguments(["--device=cpu"], True) == ["--profile", "full",
                                                                    "--device=cpu"]
    assert noxfile.calibrate_arguments([], False) is None  # elsewhere the user names them
    assert noxfile.calibrate_arguments(["--profile", "smoke"], False) is None
    assert noxfile.calibrate_arguments(["--profile", "smoke", "--device", "cpu"], False) == [
        "--profile", "smoke", "--device", "cpu"]

"""The speed gate (harness/benchgate.py): the pure decisions, then both gates end to end on
tiny synthetic benchmarks whose hot path is slowed on purpose (the baseline gate through an
environment variable; the A/B gate through a commit of a tiny git repository)."""

from __future__ import annotations

import argparse
import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from harness import benchgate
from harness.benchgate import BenchStat, Change, GateError

# A hot path that sleeps: stable enough on a loaded CPU, and its slowdown is known exactly.
BENCH_FILE = textwrap.dedent("""
    import os, time

    from hot import hot_path

    def test_hot_path(benchmark):
        benchmark.pedantic(hot_path, warmup_rounds=1, rounds=8, iterations=1)
""")
HOT = ("import os, time\n\ndef hot_path():\n"
       "    time.sleep(0.002 + float(os.environ.get('HOT_PATH_DELAY', '0')))\n")


def stats(**medians: float) -> dict[str, BenchStat]:
    return {n: BenchStat(n, m, 0.0, 10) for n, m in medians.items()}


@pytest.mark.parametrize("text, value", [("0.1", 0.1), ("10%", 0.1), ("7.5%", 0.075), ("0.025", 0.025)])
def test_threshold_is_a_fraction_or_a_percentage(text, value):
    assert benchgate.parse_threshold(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "-5%", "ten", "nan"])
def test_bad_thresholds_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        benchgate.parse_threshold(text)


def test_baseline_gate_is_one_sided_and_judges_only_shared_benchmarks():
    base = stats(a=1.0, b=1.0, c=1.0, gone=1.0)
    run = stats(a=1.099, b=1.101, c=0.5, new=3.0)
    changes = {c.name: c for c in benchgate.compare_to_baseline(base, run, 0.10)}
    assert not changes["a"].failed and changes["b"].failed  # just under / just over 10%
    assert not changes["c"].failed and changes["c"].decision == "ok (faster)"  # speed-ups pass
    assert not changes["new"].failed and "new" in changes["new"].decision
    assert not changes["gone"].failed and changes["gone"].decision == "not run"
    assert Change("x", 1.0, 1.05, 0.025).failed  # a fractional threshold


def test_baseline_is_stored_atomically_per_machine_with_old_and_new(tmp_path):
    path = benchgate.baseline_path(tmp_path, "cpu-test-2c")
    with pytest.raises(GateError, match="no benchmark baseline.*--save-baseline"):
        benchgate.load_baseline(path)
    lines = benchgate.save_baseline(path, stats(a=0.002), {"machine_id": "cpu-test-2c"})
    assert lines == ["a: (absent) -> 2 ms"]
    assert benchgate.load_baseline(path)["a"].median == 0.002
    lines = benchgate.save_baseline(path, stats(a=0.003), {})
    assert lines == ["a: 2 ms -> 3 ms"] and not list(path.parent.glob("*.tmp"))
    path.write_text("{broken")
    with pytest.raises(GateError, match="malformed benchmark baseline"):
        benchgate.load_baseline(path)


def test_machine_id_names_the_hardware_or_the_override(monkeypatch):
    monkeypatch.delenv("HARNESS_MACHINE_ID", raising=False)
    assert benchgate.machine_id("NVIDIA H100 80GB HBM3") == "cuda-nvidia-h100-80gb-hbm3"
    assert benchgate.machine_id(None).startswith("cpu-") and benchgate.machine_id(None).endswith("c")
    monkeypatch.setenv("HARNESS_MACHINE_ID", "CI runner #3")
    assert benchgate.machine_id("anything") == "ci-runner-3"


def test_machine_info_has_gpu_driver_and_cuda_keys():
    info = benchgate.machine_info()
    assert {"gpu", "driver", "cuda", "torch", "machine_id", "harness_commit"} <= info.keys()


def test_ab_fails_only_when_slower_beyond_threshold_and_significant():
    base = [1.00, 1.01, 0.99, 1.02, 0.98, 1.00]
    slow = benchgate.judge_ab("x", base, [1.30, 1.31, 1.29, 1.32, 1.28, 1.30])
    assert slow.failed and slow.p_value < 0.01 and slow.low > 1.2 and "FAIL" in slow.decision
    same = benchgate.judge_ab("x", base, [1.01, 0.99, 1.00, 1.02, 1.00, 0.98])
    assert not same.failed and 0.95 < same.ratio < 1.05
    faster = benchgate.judge_ab("x", base, [0.5] * 6)
    assert not faster.failed and faster.p_value > 0.5  # one-sided: a speed-up never fails
    # 20% slower in the median but as noisy as the effect: not significant, so not failed
    noisy = benchgate.judge_ab("x", [1.0, 0.6, 1.4, 1.0], [1.2, 0.7, 1.5, 1.25])
    assert noisy.slower and not noisy.significant and not noisy.failed
    assert "not significant" in noisy.decision
    # significant but within the threshold: passes
    small = benchgate.judge_ab("x", base, [x * 1.05 for x in base], threshold=0.10)
    assert small.significant and not small.failed


def test_ab_table_shows_medians_ratio_interval_p_and_decision():
    j = benchgate.judge_ab("bench::x", [0.010] * 3 + [0.011] * 3, [0.020] * 3 + [0.021] * 3)
    table = benchgate.ab_table([j])
    for text in ("bench::x", "10.5 ms", "20.5 ms", "1.95", "[", "FAIL"):
        assert text in table, table


def test_a_missing_benchmark_run_is_a_clear_error(tmp_path):
    with pytest.raises(GateError, match="cannot read benchmark results"):
        benchgate.read_run(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"benchmarks": [{"name": "x"}]}))
    with pytest.raises(GateError, match="malformed"):
        benchgate.read_run(tmp_path / "bad.json")


# ------------------------------------- end to end ------------------------------------- #


def write_bench_tree(root: Path, hot: str = HOT) -> None:
    (root / "benchmarks").mkdir(parents=True, exist_ok=True)
    (root / "benchmarks" / "test_hot.py").write_text(BENCH_FILE)
    (root / "benchmarks" / "conftest.py").write_text(
        "import sys, pathlib\nsys.path.insert(0, str(pathlib.Path(__file__).parent.parent))\n")
    (root / "hot.py").write_text(hot)


@pytest.mark.slow
def test_a_slowed_hot_path_fails_the_baseline_gate(tmp_path, monkeypatch, capsys):
    write_bench_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_MACHINE_ID", "test-machine")
    monkeypatch.delenv("HOT_PATH_DELAY", raising=False)
    common = ["--benchmarks", "benchmarks", "--baseline-dir", str(tmp_path / "baselines")]

    assert benchgate.main(["bench", "--compare", *common]) == 2  # no baseline yet
    assert "nox -s bench -- --save-baseline" in capsys.readouterr().err
    assert benchgate.main(["bench", "--save-baseline", *common]) == 0
    assert (tmp_path / "baselines" / "test-machine" / "baseline.json").exists()
    # unchanged: passes (a generous threshold: sleep's own jitter on a loaded CPU)
    assert benchgate.main(["bench", "--compare", "--threshold", "50%", *common]) == 0
    capsys.readouterr()
    monkeypatch.setenv("HOT_PATH_DELAY", "0.004")  # 2 ms -> 6 ms
    assert benchgate.main(["bench", "--compare", *common]) == 1
    out = capsys.readouterr().out
    assert "benchmarks/test_hot.py::test_hot_path" in out and "FAIL" in out
    assert "bench gate: FAILED" in out


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_a_slowed_hot_path_fails_the_ab_gate_and_an_unchanged_tree_passes(tmp_path, monkeypatch,
                                                                          capsys):
    repo = tmp_path / "repo"
    write_bench_tree(repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "fast")
    monkeypatch.chdir(repo)
    monkeypatch.delenv("HOT_PATH_DELAY", raising=False)
    ab = ["--benchmarks", "benchmarks/test_hot.py", "--rounds", "4"]

    assert benchgate.main(["ab", "main", *ab]) == 0  # the same tree against itself
    out = capsys.readouterr().out
    assert "A/B gate: passed" in out and "test_hot_path" in out

    write_bench_tree(repo, HOT.replace("0.002 +", "0.004 +"))  # the hot path takes twice as long
    git(repo, "commit", "-qam", "slower")
    assert benchgate.main(["ab", "HEAD~1", *ab]) == 1
    out = capsys.readouterr().out
    assert "A/B gate: FAILED: benchmarks/test_hot.py::test_hot_path" in out
    assert "p < 0.05" in out
    assert git(repo, "worktree", "list").count("\n") == 0  # the temporary worktree is gone

    assert benchgate.main(["ab", "no-such-ref", *ab]) == 2
    assert "is not a commit" in capsys.readouterr().err


def test_ab_needs_enough_rounds_for_significance(capsys):
    assert benchgate.main(["ab", "HEAD", "--rounds", "3"]) == 2  # smallest p 1/20
    assert "can never fail the gate" in capsys.readouterr().err
    assert benchgate.main(["ab", "HEAD", "--rounds", "4", "--alpha", "0.01"]) == 2  # 1/70


def test_options_are_not_abbreviated_so_pytest_gets_its_own():
    args, rest = benchgate._parser().parse_known_args(["bench", "--benchmark", "-k", "x"])
    assert args.benchmarks is None and rest == ["--benchmark", "-k", "x"]


def test_each_tree_imports_its_own_harness(tmp_path):
    benchgate.check_imports_from(Path(benchgate.__file__).parent.parent)  # this tree: fine
    fake = tmp_path / "tree"
    (fake / "harness").mkdir(parents=True)
    (fake / "harness" / "__init__.py").write_text("")
    benchgate.check_imports_from(fake)  # PYTHONPATH wins over the installed copy
    (fake / "harness" / "__init__.py").write_text("raise ImportError('broken tree')")
    with pytest.raises(GateError, match="broken tree"):
        benchgate.check_imports_from(fake)


def test_a_stored_baseline_is_not_taken_for_a_claim_reference(tmp_path):
    from harness import references

    claim_ref = tmp_path / "smoke" / "cpu" / "demo.json"
    claim_ref.parent.mkdir(parents=True)
    claim_ref.write_text("{}")
    benchgate.save_baseline(benchgate.baseline_path(tmp_path / references.BENCHMARKS_DIR, "m"),
                            stats(a=1.0), {})
    assert references.reference_files(tmp_path) == [claim_ref]

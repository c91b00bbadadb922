"""The speed gate over pytest-benchmark: a stored per-machine baseline, and a same-job A/B run.

- ``bench``: run the benchmarks (``--benchmark-json``); ``--compare`` checks each median against
  the baseline stored for this machine (``reference_results/benchmarks/<machine id>/``) and
  fails on a slowdown above the threshold (one-sided: a speed-up never fails);
  ``--save-baseline`` stores this run as the baseline, atomically, showing old -> new.
- ``ab REF``: a noisy CI machine cannot keep a baseline, so the same job times both trees: REF
  checked out into a temporary git worktree and this tree, in fresh processes, interleaved
  (base, head, head, base, ...) so that load hits both alike. Each process gives one median
  per benchmark; a benchmark fails only when head/base is above the threshold *and* the
  slowdown is significant by a one-sided Mann-Whitney U test over those medians (as asv does).

Exit status: 0 pass, 1 a gate failed, 2 the gate could not run (no baseline, bad ref, a
benchmark errored). ``python -m harness.benchgate {bench,ab} --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness import atomic
from harness.environment import REPO_ROOT, cpu_name, git_commit

DEFAULT_THRESHOLD = 0.10  # a median slowdown above 10% fails
ALPHA = 0.05  # the A/B test's significance level
AB_ROUNDS = 6  # with 6 samples a side the smallest one-sided MWU p is 1/924
BASELINE_ROOT = REPO_ROOT / "reference_results" / "benchmarks"  # references.BENCHMARKS_DIR
# The A/B run's default subset: fast enough to run each tree AB_ROUNDS times in a few minutes.
AB_BENCHMARKS = ("benchmarks/test_bench_train_step.py", "benchmarks/test_bench_models.py")
SCHEMA_VERSION = 1


class GateError(Exception):
    """The gate could not run: no baseline, an unknown ref, a benchmark run that failed."""


# ------------------------------------------ machine ------------------------------------------ #


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def gpu_info() -> dict[str, Any]:
    """GPU name, driver and CUDA version (None where there is no GPU or no nvidia-smi)."""
    import torch

    info: dict[str, Any] = {"gpu": None, "gpu_count": 0, "driver": None,
                            "cuda": torch.version.cuda, "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cudnn"] = torch.backends.cudnn.version()
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
            info["driver"] = out.splitlines()[0].strip() if out.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def machine_id(gpu: str | None = None) -> str:
    """Which machine a baseline belongs to: ``$HARNESS_MACHINE_ID``, else the GPU's name, else
    the CPU's model and core count (``cpu-intel-r-xeon-r-...-2c``)."""
    given = os.environ.get("HARNESS_MACHINE_ID")
    if given:
        return _slug(given)
    if gpu:
        return "cuda-" + _slug(gpu)
    return f"cpu-{_slug(cpu_name())}-{os.cpu_count()}c"


def machine_info() -> dict[str, Any]:
    """What ``pytest_benchmark_update_machine_info`` adds to every benchmark run."""
    info = gpu_info()
    return {**info, "cpu_model": cpu_name(), "machine_id": machine_id(info["gpu"]),
            "harness_commit": git_commit()}


# ---------------------------------------- benchmark runs ---------------------------------------- #


@dataclass(frozen=True)
class BenchStat:
    """One benchmark's timing in one run: seconds per call."""

    name: str
    median: float
    iqr: float
    rounds: int


def read_run(path: Path) -> dict[str, BenchStat]:
    """The benchmarks of a pytest-benchmark JSON file (``--benchmark-json``), by full name."""
    try:
        doc = json.loads(Path(path).read_text())
        return {b["fullname"]: BenchStat(b["fullname"], float(b["stats"]["median"]),
                                         float(b["stats"]["iqr"]), int(b["stats"]["rounds"]))
                for b in doc["benchmarks"]}
    except OSError as e:
        raise GateError(f"cannot read benchmark results {path}: {e}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise GateError(f"malformed benchmark results {path}: {type(e).__name__}: {e}") from None


def check_imports_from(tree: Path, python: str = sys.executable) -> None:
    """A process started as ``run_benchmarks`` starts it imports ``harness`` from ``tree``
    (PYTHONPATH precedes an installed or editable copy); else an A/B run would time one tree
    twice and call it a comparison."""
    if not (Path(tree) / "harness" / "__init__.py").exists():
        return  # benchmarks that do not use the harness
    found = subprocess.run([python, "-c", "import harness; print(harness.__file__)"], cwd=tree,
                           env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                           text=True)
    where = Path(found.stdout.strip() or ".").resolve()
    if found.returncode != 0 or not where.is_relative_to(Path(tree).resolve()):
        raise GateError(f"in {tree}, `import harness` loads {found.stdout.strip() or found.stderr.strip()}, "
                        "not this tree's copy")


def run_benchmarks(tree: Path, paths: Sequence[str], json_out: Path, pytest_args: Sequence[str] = (),
                   python: str = sys.executable, echo: bool = False) -> dict[str, BenchStat]:
    """Run ``paths`` of ``tree`` with pytest-benchmark in a fresh process that imports the
    harness from ``tree``; the medians by benchmark. A failing or empty run is a GateError."""
    # Never under pytest-xdist: pytest-benchmark switches itself off there, so a ``-n`` in the
    # user's addopts, or an xdist worker's variables inherited from a test run, would time nothing.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    env["PYTHONPATH"] = str(tree)
    cmd = [python, "-m", "pytest", *paths, "--benchmark-only", f"--benchmark-json={json_out}",
           "-p", "no:cacheprovider", "-p", "no:xdist", *pytest_args]
    result = subprocess.run(cmd, cwd=tree, env=env, text=True,
                            capture_output=not echo)
    if result.returncode != 0:
        tail = "" if echo else "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        what = "selected no benchmarks" if result.returncode == 5 else f"exited {result.returncode}"
        raise GateError(f"benchmarks in {tree} {what}: {' '.join(cmd)}\n{tail}")
    return read_run(json_out)


# ------------------------------------------ thresholds ------------------------------------------ #


def parse_threshold(text: str) -> float:
    """``0.1``, ``10%`` or ``7.5%``: the allowed slowdown as a fraction."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fraction (0.1) or a percentage (10%), not {text!r}") from None
    if not 0 < value < 10 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"threshold {text!r} must be above 0 (0.1 = 10%)")
    return value


# ------------------------------------------ baseline ------------------------------------------ #


@dataclass(frozen=True)
class Change:
    """One benchmark against the baseline: ratio = new / baseline median (>1: slower)."""

    name: str
    baseline: float | None
    new: float | None
    threshold: float

    @property
    def ratio(self) -> float | None:
        return None if self.baseline is None or self.new is None else self.new / self.baseline

    @property
    def failed(self) -> bool:
        return self.ratio is not None and self.ratio > 1 + self.threshold

    @property
    def decision(self) -> str:
        if self.baseline is None:
            return "new (not in the baseline)"
        if self.new is None:
            return "not run"
        if self.failed:
            return f"FAIL: {self.ratio - 1:+.1%} > +{self.threshold:.1%}"
        return "ok" if self.ratio >= 1 else "ok (faster)"


def baseline_path(root: Path, machine: str) -> Path:
    return Path(root) / machine / "baseline.json"


def load_baseline(path: Path) -> dict[str, BenchStat]:
    if not Path(path).exists():
        raise GateError(f"no benchmark baseline for this machine at {path}; store one on this "
                        "machine: nox -s bench -- --save-baseline")
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("schema") != SCHEMA_VERSION:
            raise GateError(f"{path} has schema {doc.get('schema')!r}, expected {SCHEMA_VERSION}; "
                            "store it again: nox -s bench -- --save-baseline")
        return {n: BenchStat(n, float(b["median"]), float(b["iqr"]), int(b["rounds"]))
                for n, b in doc["benchmarks"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise GateError(f"malformed benchmark baseline {path}: {type(e).__name__}: {e}") from None


def compare_to_baseline(baseline: dict[str, BenchStat], run: dict[str, BenchStat],
                        threshold: float = DEFAULT_THRESHOLD) -> list[Change]:
    """Every benchmark of either side; only those in both are judged."""
    names = list(run) + [n for n in baseline if n not in run]
    return [Change(n, baseline[n].median if n in baseline else None,
                   run[n].median if n in run else None, threshold) for n in names]


def save_baseline(path: Path, run: dict[str, BenchStat], info: dict[str, Any]) -> list[str]:
    """Atomically store ``run`` as the baseline; old -> new median of every benchmark."""
    path = Path(path)
    old: dict[str, BenchStat] = {}
    if path.exists():
        try:
            old = load_baseline(path)
        except GateError:
            pass  # a broken baseline is being replaced on purpose
    doc = {"schema": SCHEMA_VERSION, "machine": info,
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "benchmarks": {n: {"median": s.median, "iqr": s.iqr, "rounds": s.rounds}
                          for n, s in run.items()}}
    atomic.write_json(path, doc)
    return [f"{n}: {_ms(old[n].median) if n in old else '(absent)'} -> {_ms(s.median)}"
            for n, s in run.items()] + [f"{n}: {_ms(old[n].median)} -> (removed)"
                                        for n in old if n not in run]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.4g} ms"


def baseline_table(changes: list[Change]) -> str:
    import pandas as pd

    frame = pd.DataFrame([{
        "benchmark": c.name, "baseline": _ms(c.baseline), "this run": _ms(c.new),
        "ratio": "-" if c.ratio is None else f"{c.ratio:.3f}", "decision": c.decision,
    } for c in changes])
    return frame.to_string(index=False) if len(frame) else "(no benchmarks)"


# -------------------------------------------- A/B -------------------------------------------- #


@dataclass(frozen=True)
class ABJudgement:
    """One benchmark over interleaved rounds: each sample is one process's median (seconds)."""

    name: str
    base: tuple[float, ...]
    head: tuple[float, ...]
    threshold: float
    alpha: float
    ratio: float  # median(head) / median(base); > 1: head is slower
    low: float  # 95% bootstrap interval of that ratio
    high: float
    p_value: float  # one-sided Mann-Whitney U: head slower than base

    @property
    def slower(self) -> bool:
        return self.ratio > 1 + self.threshold

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    @property
    def failed(self) -> bool:
        return self.slower and self.significant

    @property
    def decision(self) -> str:
        if self.failed:
            return f"FAIL: {self.ratio - 1:+.1%} > +{self.threshold:.1%}, p < {self.alpha:g}"
        if self.slower:
            return f"ok: {self.ratio - 1:+.1%} but not significant"
        return "ok"


def judge_ab(name: str, base: Sequence[float], head: Sequence[float],
             threshold: float = DEFAULT_THRESHOLD, alpha: float = ALPHA,
             seed: int = 0) -> ABJudgement:
    """Ratio of medians with a percentile-bootstrap interval, and the one-sided MWU p-value."""
    import numpy as np
    from scipy import stats

    b, h = np.asarray(base, dtype=float), np.asarray(head, dtype=float)
    if b.size < 2 or h.size < 2:
        raise ValueError(f"{name}: the A/B test needs at least 2 samples a side")
    ratio = float(np.median(h) / np.median(b))
    p = float(stats.mannwhitneyu(h, b, alternative="greater").pvalue)

    def median_ratio(hh, bb, axis=-1):
        return np.median(hh, axis=axis) / np.median(bb, axis=axis)

    ci = stats.bootstrap((h, b), median_ratio, paired=False, vectorized=True, n_resamples=2000,
                         method="percentile", **_seeded(seed)).confidence_interval
    return ABJudgement(name, tuple(base), tuple(head), threshold, alpha, ratio,
                       float(ci.low), float(ci.high), p)


def _seeded(seed: int) -> dict[str, Any]:
    """scipy >= 1.15 spells the generator ``rng``; older ones ``random_state``."""
    import inspect

    import numpy as np
    from scipy import stats

    key = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    return {key: np.random.default_rng(seed)}


def ab_table(judgements: list[ABJudgement]) -> str:
    import pandas as pd

    frame = pd.DataFrame([{
        "benchmark": j.name, "base median": _ms(statistics.median(j.base)),
        "head median": _ms(statistics.median(j.head)), "head/base": f"{j.ratio:.3f}",
        "95% interval": f"[{j.low:.3f}, {j.high:.3f}]", "p (slower)": f"{j.p_value:.3g}",
        "n": f"{len(j.base)}+{len(j.head)}", "decision": j.decision,
    } for j in judgements])
    return frame.to_string(index=False) if len(frame) else "(no benchmarks in both trees)"


@dataclass
class ABRun:
    """Per benchmark and tree, one median per round."""

    base: dict[str, list[float]] = field(default_factory=dict)
    head: dict[str, list[float]] = field(default_factory=dict)

    def add(self, side: str, stats: dict[str, BenchStat]) -> None:
        samples = getattr(self, side)
        for name, s in stats.items():
            samples.setdefault(name, []).append(s.median)


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise GateError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout.strip()


def resolve_ref(tree: Path, ref: str, merge_base: bool = False) -> str:
    """The commit ``ref`` names (or its merge base with HEAD), as a full hash."""
    try:
        sha = _git(tree, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except GateError:
        raise GateError(f"{ref!r} is not a commit in {tree} (fetch it first, e.g. "
                        "`git fetch origin main`)") from None
    return _git(tree, "merge-base", sha, "HEAD") if merge_base else sha


def run_ab(head_tree: Path, base_sha: str, paths: Sequence[str], rounds: int = AB_ROUNDS,
           pytest_args: Sequence[str] = (), python: str = sys.executable,
           log: Callable[[str], None] = print) -> ABRun:
    """Check ``base_sha`` out into a temporary worktree and time ``paths`` in both trees,
    interleaved; each round alternates which tree goes first. The worktree is removed after."""
    run = ABRun()
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        base_tree = Path(tmp) / "base"
        _git(head_tree, "worktree", "add", "--detach", "--quiet", str(base_tree), base_sha)
        try:
            trees = {"base": base_tree, "head": head_tree}
            selected = {side: [p for p in paths if (tree / p.split("::")[0]).exists()]
                        for side, tree in trees.items()}
            for side, chosen in selected.items():
                if not chosen:
                    raise GateError(f"none of {list(paths)} exists in the {side} tree ({trees[side]})")
                check_imports_from(trees[side], python)
            for r in range(rounds):
                order = ("base", "head") if r % 2 == 0 else ("head", "base")
                for side in order:
                    log(f"round {r + 1}/{rounds}: {side}")
                    out = Path(tmp) / f"{side}-{r}.json"
                    run.add(side, run_benchmarks(trees[side], selected[side], out, pytest_args,
                                                 python))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=head_tree,
                           capture_output=True)
            subprocess.run(["git", "worktree", "prune"], cwd=head_tree, capture_output=True)
    return run


def judge_run(run: ABRun, threshold: float = DEFAULT_THRESHOLD,
              alpha: float = ALPHA) -> tuple[list[ABJudgement], list[str]]:
    """Judgements for the benchmarks both trees ran; notes for those only one did."""
    both = [n for n in run.head if n in run.base]
    notes = [f"{n}: only in the head tree (new), not judged" for n in run.head if n not in run.base]
    notes += [f"{n}: only in the base tree (removed), not judged" for n in run.base
              if n not in run.head]
    return [judge_ab(n, run.base[n], run.head[n], threshold, alpha) for n in both], notes


# -------------------------------------------- CLI -------------------------------------------- #


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.benchgate",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    # No abbreviations: the rest of the line goes to pytest, whose options share prefixes.
    bench = sub.add_parser("bench", help="run the benchmarks; --compare / --save-baseline",
                           allow_abbrev=False)
    bench.add_argument("--compare", action="store_true",
                       help="fail on a median slowdown above --threshold against this machine's baseline")
    bench.add_argument("--save-baseline", action="store_true",
                       help="store this run as this machine's baseline")
    bench.add_argument("--baseline-dir", type=Path, default=BASELINE_ROOT)
    bench.add_argument("--benchmarks", action="append", default=None, metavar="PATH",
                       help="benchmark files or folders (default: benchmarks)")
    bench.add_argument("--json", type=Path, default=None,
                       help="where the run's JSON goes (default results/benchmarks/<time>.json)")
    ab = sub.add_parser("ab", help="time REF and this tree interleaved in one job",
                        allow_abbrev=False)
    ab.add_argument("ref", help="the git ref to compare against (e.g. origin/main)")
    ab.add_argument("--merge-base", action="store_true",
                    help="compare against the merge base of REF and HEAD, as a PR would")
    ab.add_argument("--rounds", type=int, default=AB_ROUNDS)
    ab.add_argument("--alpha", type=float, default=ALPHA)
    ab.add_argument("--benchmarks", action="append", default=None, metavar="PATH",
                    help=f"benchmark files (default: the fast subset {' '.join(AB_BENCHMARKS)})")
    for sp in (bench, ab):
        sp.add_argument("--threshold", type=parse_threshold, default=DEFAULT_THRESHOLD,
                        help="allowed median slowdown: 0.1 or 10%% (default 10%%)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, pytest_args = _parser().parse_known_args(argv)
    try:
        if args.command == "bench":
            return _bench(args, pytest_args)
        return _ab(args, pytest_args)
    except GateError as e:
        print(f"bench gate: {e}", file=sys.stderr)
        return 2


def _bench(args: argparse.Namespace, pytest_args: list[str]) -> int:
    tree = Path.cwd()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.json or tree / "results" / "benchmarks" / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    path = baseline_path(args.baseline_dir, info["machine_id"])
    if args.compare:
        baseline = load_baseline(path)  # before the run: a missing baseline fails fast
    run = run_benchmarks(tree, args.benchmarks or ["benchmarks"], out, pytest_args, echo=True)
    print(f"benchmark results: {out}")
    status = 0
    if args.compare:
        changes = compare_to_baseline(baseline, run, args.threshold)
        print(f"\nagainst the baseline {path} (threshold +{args.threshold:.1%}, one-sided):")
        print(baseline_table(changes))
        failed = [c.name for c in changes if c.failed]
        print(f"\nbench gate: {'FAILED: ' + ', '.join(failed) if failed else 'passed'}")
        status = 1 if failed else 0
    if args.save_baseline:
        print(f"\nbaseline for {info['machine_id']} stored at {path} (old -> new):")
        for line in save_baseline(path, run, info):
            print(f"  {line}")
    return status


def _ab(args: argparse.Namespace, pytest_args: list[str]) -> int:
    smallest_p = 1 / math.comb(2 * args.rounds, args.rounds)  # head's samples all above base's
    if smallest_p >= args.alpha:
        raise GateError(f"--rounds {args.rounds} can never fail the gate: with {args.rounds} "
                        f"samples a side the smallest one-sided Mann-Whitney p is "
                        f"{smallest_p:.3g}, not below --alpha {args.alpha:g}; use more rounds")
    head = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel"))
    sha = resolve_ref(head, args.ref, args.merge_base)
    print(f"A/B: base {args.ref}{' (merge base)' if args.merge_base else ''} = {sha[:12]} "
          f"vs head {head} ({git_commit(head)[:12]}), {args.rounds} interleaved rounds")
    run = run_ab(head, sha, args.benchmarks or list(AB_BENCHMARKS), args.rounds, pytest_args)
    judgements, notes = judge_run(run, args.threshold, args.alpha)
    print(f"\nhead vs base (threshold +{args.threshold:.1%}, one-sided Mann-Whitney U, "
          f"alpha {args.alpha:g}; each sample is one process's median):")
    print(ab_table(judgements))
    for n in notes:
        print(f"note: {n}")
    failed = [j.name for j in judgements if j.failed]
    print(f"\nA/B gate: {'FAILED: ' + ', '.join(failed) if failed else 'passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

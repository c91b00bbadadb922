"""The most evidence from a short GPU window: ``python -m harness.gpu_window --out DIR --limit-s 600``.

1. ``pytest tests/test_cuda.py`` (every CUDA path once), its output in ``DIR/test_cuda.txt``;
2. the full profile family by family, cheapest first (by the stored estimate,
   ``harness.costs.load_estimate()['families']``, else ``FAMILIES``' fixed order), each as
   ``pytest claims --profile full --device cuda --claim '<family>.*'`` against an empty reference
   store, with the time left as its timeout; a family whose estimate exceeds the time left is
   not started;
3. ``DIR/summary.json`` and ``DIR/summary.md``: per family the measured minutes beside the
   estimate, the peak GPU memory (from the training records the family wrote to the training
   cache, and any memory metric in its ``claims.json``), the exit status, and which claims
   produced records (each claim's verdict and metrics: the references the run could make);
   ``DIR/runs.tar.gz``: the run folders (each with its ``claims.json``) and each family's log.

DIR holds only those four files (a GPU machine may send back only a few). Arguments it does
not know go to every claims run (e.g. ``--data-root /data/cifar``, ``--offline``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.environment import REPO_ROOT

# Claim-ID prefixes, cheapest first by the full profile's design (decomposition and deployment
# timings, then the sparse grid, the supernets, AGC's grid, the scaling study).
FAMILIES = ("decomp", "deploy", "itop", "nasvit", "agc", "scaling")
MIN_START_S = 30.0  # a family is not started with less time than this left
RESERVE_S = 15.0  # kept back from the last timeout for the summary and the tarball
KILL_GRACE_S = 10.0


@dataclass(frozen=True)
class Outcome:
    returncode: int | None  # None: killed at its timeout
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def now() -> float:  # a seam: tests run the window on a fake clock
    return time.monotonic()


def run_command(cmd: list[str], timeout: float, log: Path, env: dict[str, str] | None = None) -> Outcome:
    """``cmd`` in the repository, its output to ``log``; at ``timeout`` its whole process group
    is stopped (SIGTERM, then SIGKILL), so worker processes go too."""
    t0 = now()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
            out.write(f"\n[gpu_window: stopped at its timeout of {timeout:.0f} s]\n")
    return Outcome(rc, now() - t0)


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def load_estimate() -> dict[str, Any] | None:
    from harness.calibrate import load_estimate as load

    return load()


def family_order(estimate: dict[str, Any] | None) -> list[tuple[str, float | None]]:
    """(family, estimated minutes or None), cheapest first: by the estimate where it has the
    family, then the rest in ``FAMILIES``' order."""
    families = {f: float(m) for f, m in ((estimate or {}).get("families") or {}).items()}
    ordered: list[tuple[str, float | None]] = sorted(families.items(), key=lambda kv: (kv[1], kv[0]))
    ordered += [(f, None) for f in FAMILIES if f not in families]
    return ordered


# ------------------------------------------------------------------ what a run left


def _cache_dir() -> Path:
    from harness.runs.cache import cache_dir

    return cache_dir()


def _cache_entries(cache: Path) -> set[Path]:
    return set(cache.glob("*.json")) if cache.is_dir() else set()


def _peak_from_cache(entries: set[Path]) -> tuple[float | None, int]:
    """(largest peak_memory_mb among these training records, how many were read)."""
    peaks, n = [], 0
    for p in entries:
        try:
            rec = json.loads(p.read_text())["record"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        n += 1
        if isinstance(rec.get("peak_memory_mb"), (int, float)):
            peaks.append(float(rec["peak_memory_mb"]))
    return (max(peaks) if peaks else None), n


def _claims_doc(runs: Path) -> tuple[Path | None, dict[str, Any] | None]:
    found = sorted(runs.glob("*/claims.json")) if runs.is_dir() else []
    if not found:
        return None, None
    try:
        return found[-1], json.loads(found[-1].read_text())
    except (OSError, ValueError):
        return found[-1], None


def _claim_rows(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for r in (doc or {}).get("claims", []):
        rows.append({"claim": r.get("claim"), "verdict": r.get("verdict"),
                     "reference": r.get("reference"), "seconds": r.get("seconds"),
                     "record": bool(r.get("metrics")) and r.get("verdict") not in ("ERROR", "SKIPPED"),
                     "metrics": r.get("metrics") or {}, "reason": r.get("reason")})
    return rows


def _memory_metric(rows: list[dict[str, Any]]) -> float | None:
    vals = [float(v) for r in rows for k, v in r["metrics"].items()
            if "memory" in k.lower() and isinstance(v, (int, float)) and math.isfinite(v)]
    return max(vals) if vals else None


# ------------------------------------------------------------------ the window


def _status(outcome: Outcome, failed: str = "claims failed or regressed") -> str:
    if outcome.timed_out:
        return "timed out"
    return {0: "passed", 1: failed}.get(outcome.returncode, f"error (exit {outcome.returncode})")


def window(out: Path, limit_s: float, extra: Sequence[str] = (), work: Path | None = None,
           tests_limit_s: float = 300.0) -> dict[str, Any]:
    """Run the window (module docstring) and write DIR's four files; returns the summary."""
    start = now()
    deadline = start + limit_s
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work or tempfile.mkdtemp(prefix="gpu-window-"))
    runs_root = work / "runs"
    runs_root.mkdir(parents=True, exist_ok=True)
    empty = work / "no-references"
    env = {**os.environ, "HARNESS_CALIBRATING": "1"}  # an empty store on purpose
    estimate = load_estimate()
    summary: dict[str, Any] = {
        "limit_s": limit_s, "estimate_total_minutes": (estimate or {}).get("total_minutes"),
        "estimate_source": "harness.costs.load_estimate()" if estimate else None,
        "test_cuda": None, "families": [], "order": [f for f, _ in family_order(estimate)],
    }

    left = min(deadline - now() - RESERVE_S, tests_limit_s)
    t = run_command([sys.executable, "-m", "pytest", "tests/test_cuda.py", "-q", "-p",
                     "no:cacheprovider"], left, out / "test_cuda.txt", env)
    summary["test_cuda"] = {"returncode": t.returncode, "status": _status(t, "tests failed"),
                            "minutes": round(t.seconds / 60, 2)}
    _write(out, summary, runs_root)

    cache = _cache_dir()
    for family, est in family_order(estimate):
        left = deadline - now() - RESERVE_S
        entry: dict[str, Any] = {"family": family, "claims": f"{family}.*",
                                 "estimate_minutes": est}
        if left < MIN_START_S or (est is not None and est * 60 > left):
            entry["status"] = (f"not started: {left / 60:.1f} min left"
                               + (f", estimated {est:.1f} min" if est is not None else ""))
            summary["families"].append(entry)
            continue
        before = _cache_entries(cache)
        results = runs_root / family
        o = run_command([sys.executable, "-m", "pytest", "claims", "-q", "-p", "no:cacheprovider",
                         "--profile", "full", "--device", "cuda", "--claim", f"{family}.*",
                         "--references-dir", str(empty), "--results-dir", str(results), *extra],
                        left, runs_root / f"{family}.log", env)
        run_path, doc = _claims_doc(results)
        rows = _claim_rows(doc)
        peak, trained = _peak_from_cache(_cache_entries(cache) - before)
        mem = [m for m in (peak, _memory_metric(rows)) if m is not None]
        entry.update({
            "status": _status(o), "returncode": o.returncode, "timeout_s": round(left, 1),
            "measured_minutes": round(o.seconds / 60, 2),
            "peak_gpu_memory_mb": round(max(mem), 1) if mem else None,
            "trained_runs": trained,
            "run": str(run_path.parent.relative_to(work)) if run_path else None,
            "records": [r["claim"] for r in rows if r["record"]],
            "rows": rows,
        })
        summary["families"].append(entry)
        _write(out, summary, runs_root)
    summary["minutes"] = round((now() - start) / 60, 2)
    _write(out, summary, runs_root)
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _write(out: Path, summary: dict[str, Any], runs_root: Path) -> None:
    """summary.json, summary.md and runs.tar.gz, rewritten after every step (a window cut
    short still leaves them)."""
    from harness import atomic

    atomic.write_json(out / "summary.json", summary)
    atomic.write_text(out / "summary.md", markdown(summary))
    tmp = out / ".runs.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(runs_root, arcname="runs")
    os.replace(tmp, out / "runs.tar.gz")


def _num(x: Any, fmt: str = ".1f") -> str:
    return "—" if x is None else format(x, fmt)


def markdown(summary: dict[str, Any]) -> str:
    tc = summary.get("test_cuda") or {}
    lines = [f"# GPU window ({summary['limit_s']:.0f} s)", "",
             f"tests/test_cuda.py: {tc.get('status', 'not run')}"
             f" ({_num(tc.get('minutes'), '.2f')} min)", "",
             f"estimate: {_num(summary.get('estimate_total_minutes'))} min for the full profile"
             f" ({summary.get('estimate_source') or 'no stored estimate'})", "",
             "| family | estimate (min) | measured (min) | peak GPU memory (MiB) | status | "
             "claims with records |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for f in summary["families"]:
        lines.append(f"| {f['family']} | {_num(f.get('estimate_minutes'))} | "
                     f"{_num(f.get('measured_minutes'), '.2f')} | {_num(f.get('peak_gpu_memory_mb'))} | "
                     f"{f['status']} | {', '.join(f.get('records') or []) or '—'} |")
    lines += ["", "Each family's claims (verdict, reference status) and metrics are in summary.json; "
              "the run folders with their claims.json and the logs in runs.tar.gz.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.gpu_window",
                                 description="the CUDA tests, then the full profile family by "
                                             "family, cheapest first, within a time limit")
    ap.add_argument("--out", type=Path, required=True, help="where the four files go")
    ap.add_argument("--limit-s", type=float, default=600.0, help="the whole window, in seconds")
    ap.add_argument("--tests-limit-s", type=float, default=300.0,
                    help="the most tests/test_cuda.py may take of it")
    args, extra = ap.parse_known_args(argv)
    summary = window(args.out.resolve(), args.limit_s, extra, tests_limit_s=args.tests_limit_s)
    print(markdown(summary))
    failed = (summary["test_cuda"] or {}).get("returncode") != 0 or any(
        f.get("returncode") not in (0, 1) and f.get("returncode") is not None
        for f in summary["families"] if "returncode" in f)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

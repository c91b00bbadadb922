"""A dry run's estimate of the profile at full size, priced by ``harness.costs``.

A dry run trains one step of each job; on it each claim check records what it would run at full
size (``Evidence.full_size_jobs``, ``Evidence.full_size_phases``: ``evidence.FullSize``).
``price`` turns one claim's record into a ``costs.Estimate``; ``settle`` writes the run's
``estimate.json``, stores it with ``--regen-references`` (``reference_results/<profile>/
estimate.json``, shown old -> new) and lists what fails the run: a stored estimate it no longer
matches (as a moved reference does), a peak over the memory budget, a total over the time
budget; ``print_estimates`` prints minutes per family and per phase kind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import atomic, costs
from harness.evidence import FullSize
from harness.memory import PLANNING_BUDGET_BYTES


def price(work: Sequence[FullSize]) -> costs.Estimate:
    """The GPU time of what one claim recorded: its training runs (``cells_per_gpu`` sharing a
    GPU, by default ``executors.CELLS_PER_GPU``) and its other phases, each key once."""
    from harness.runs.executors import CELLS_PER_GPU

    est = costs.Estimate()
    for w in work:
        est.add(w.jobs, concurrency=CELLS_PER_GPU if w.cells_per_gpu is None else w.cells_per_gpu)
        for key, phase in w.phases.items():
            est.add_phase(key, phase)
    return est


def settle(estimates: dict[str, costs.Estimate], root: Path, profile: str, run_dir: Path,
           regenerate: bool) -> tuple[list[str], list[str]]:
    """The dry run's estimate (claim ID -> ``costs.Estimate``) against the one stored for
    ``profile`` under ``root``: (lines for the regeneration log, problems that fail the run).
    With ``regenerate`` it is stored; otherwise a stored estimate it no longer matches is a
    problem, and so are a total over the budget and a peak over the planning budget."""
    record = costs.estimate_record(estimates)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "estimate.json").write_text(json.dumps(record, indent=1) + "\n")
    total = record["total_minutes"]
    path = costs.estimate_path(root, profile)
    stored = costs.load_estimate(root, profile)
    log: list[str] = []
    problems: list[str] = []
    if regenerate:
        atomic.write_json(path, record, indent=1)
        old = "none" if stored is None else f"{stored['total_minutes']:g} min"
        log += [f"{path}: total {old} -> {total:g} min"] + [
            f"  {f}: {(stored or {}).get('families', {}).get(f, 'none')} -> {m:g} min"
            for f, m in record["families"].items()]
    elif stored is not None and not same_estimate(stored, record):
        problems.append(
            f"the stored estimate {path} ({stored['total_minutes']:g} min: {stored['families']}) "
            f"no longer matches the model's ({total:g} min: {record['families']}); if the change "
            f"is intended: nox -s claims -- --profile {profile} --dry-run --regen-references")
    for fam, est in costs.by_family(estimates).items():
        if est.peak_bytes() > PLANNING_BUDGET_BYTES:
            problems.append(
                f"{fam}: predicted peak {est.peak_bytes() / 2**30:.1f} GiB at once exceeds the "
                f"{PLANNING_BUDGET_BYTES / 1e9:g} GB planning budget (harness/memory.py)")
    if total > costs.FULL_BUDGET_MINUTES:
        problems.append(
            f"the {profile} profile is estimated at {total:g} min on one H100, over its "
            f"{costs.FULL_BUDGET_MINUTES:g}-minute budget")
    return log, problems


def same_estimate(stored: dict[str, Any], record: dict[str, Any], rel: float = 0.01) -> bool:
    """Kernel and MAC counts are exact, so the estimate only moves when the code or the model
    does: 1% covers rounding."""
    a, b = stored.get("families", {}), record["families"]
    return set(a) == set(b) and all(abs(a[f] - b[f]) <= rel * max(abs(b[f]), 0.1) for f in b)


def print_estimates(tr: Any, estimates: dict[str, costs.Estimate], profile: str,
                    problems: Sequence[str] = ()) -> None:
    """On pytest's terminal reporter ``tr``: minutes per family and per phase kind, the total
    against the budget, the model's assumptions, and the ``problems`` ``settle`` found."""
    families = costs.by_family(estimates)
    total = costs.estimate_record(estimates)["total_minutes"]
    tr.section(f"estimated time of the {profile} profile on one H100 (harness/costs.py)")
    kinds = sorted({k for e in families.values() for k in e.by_kind()})
    tr.write_line(f"{'family':10s} {'runs':>5s} {'minutes':>8s}  "
                  + "  ".join(f"{k:>9s}" for k in kinds) + "  launch-bound runs  peak GiB")
    for fam, est in families.items():
        by_kind = est.by_kind()
        tr.write_line(f"{fam:10s} {est.runs:5d} {est.minutes:8.1f}  "
                      + "  ".join(f"{by_kind.get(k, 0.0):9.1f}" for k in kinds)
                      + f"  {est.launch_bound_runs():17d}  {est.peak_bytes() / 2**30:8.1f}")
    within = total <= costs.FULL_BUDGET_MINUTES
    tr.write_line(f"{'all':10s} {sum(e.runs for e in families.values()):5d} {total:8.1f}  "
                  f"(shared runs and phases counted once; budget {costs.FULL_BUDGET_MINUTES:g} "
                  f"min: {'within' if within else 'OVER'})", green=within, red=not within)
    tr.write_line("assumptions:")
    for line in costs.ASSUMPTIONS:
        tr.write_line(f"  - {line}")
    for problem in problems:
        tr.write_line(problem, red=True)

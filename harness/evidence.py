"""What one claim check measured, and its verdict: the ``Evidence`` recorder.

The plugin's ``evidence`` fixture hands one to each claim check; afterwards the plugin compares
it with the stored reference (``harness.references``) and renders it (``harness.results``).
On a dry run it also records what the check would run at full size (``FullSize``), which
``harness.dry_run`` prices: this module imports neither the costs nor the runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.claim import EXACT, Claim, Tolerance, Verdict, format_value
from harness.jsonable import to_jsonable

BASELINE_MARGIN = 0.05  # "learned": more than 5 points above chance


@dataclass(frozen=True)
class FullSize:
    """What a check would run at full size, recorded on a dry run for ``harness.dry_run`` to
    price: training jobs (``train.TrainJob``), ``cells_per_gpu`` of them sharing a GPU at once
    (None: ``executors.CELLS_PER_GPU``), or other phases by key (``costs.Phase``)."""

    jobs: tuple[Any, ...] = ()
    cells_per_gpu: int | None = None
    phases: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Measurement:
    name: str
    value: float | None  # None when not finite (NaN/inf: e.g. a diverged run)
    tolerance: Tolerance
    paper: str | None = None  # the paper's figure for the same quantity, if any
    unit: str = ""
    key: bool = False  # shown in the terminal table
    samples: tuple[float | None, ...] = ()  # per-seed values behind a mean, when it is one

    def shown(self) -> str:
        text = f"{self.name}={format_value(self.value)}{self.unit}"
        return text + (f" (paper {self.paper})" if self.paper else "")


class Evidence:
    """Collects what one claim check measured, and its verdict."""

    def __init__(self, claim: Claim, device: str, artifacts_dir: Path | None = None) -> None:
        self.claim = claim
        self.device = device
        self.artifacts_dir = artifacts_dir
        self.measurements: dict[str, Measurement] = {}
        self.verdict: Verdict | None = None
        self.reason = ""
        self.config: dict[str, Any] = {}
        self.seeds: list[int] = []
        self.notes: list[str] = []
        self.artifacts: list[Path] = []
        # Measured noise of this claim's metrics (``harness.bands.NoiseTable``): it turns a
        # ``bands.Measured`` band spec into a Tolerance. Set by the plugin's fixture.
        self.noise: Any = None
        self.observed: dict[str, float | None] = {}
        # How likely each verdict is on a seed redraw (``harness.odds.VerdictOdds``), when the
        # check gave its judge to ``decide``; the reference accepts every plausible one.
        self.odds: Any = None
        # On a dry run: what the check's runs would be at full size, for ``harness.dry_run`` to
        # price. ``estimating`` is set by the plugin's fixture.
        self.estimating = False
        self.full_size: list[FullSize] = []

    def full_size_jobs(self, jobs: Callable[[], Sequence[Any]],
                       cells_per_gpu: int | None = None) -> None:
        """On a dry run, the ``TrainJob``s this check trains at full size (``jobs()``: built
        from the un-shrunk config on ``costs.placeholder_data``), so the plugin can print their
        estimated GPU time. ``cells_per_gpu``: how many share a GPU at once (default
        ``executors.CELLS_PER_GPU``; 1 for a check that reads the runs' timings). Elsewhere
        nothing is built."""
        if self.estimating:
            self.full_size.append(FullSize(jobs=tuple(jobs()), cells_per_gpu=cells_per_gpu))

    def full_size_phases(self, phases: Callable[[], dict[str, Any]]) -> None:
        """On a dry run, the check's other priced phases at full size (``phases()``: key ->
        ``costs.Phase``; timing, evaluation, compilation, decomposition): the same key in two
        claims is one phase, done once. Elsewhere nothing is built."""
        if self.estimating:
            self.full_size.append(FullSize(phases=dict(phases())))

    def metric(
        self,
        name: str,
        value: float,
        tol: Any,
        *,
        paper: str | None = None,
        unit: str = "",
        key: bool = False,
        samples: Any = (),
    ) -> float:
        """Record a measured number, guarded by ``tol`` against the reference.

        ``tol`` is a ``Tolerance``, or a ``bands.Measured`` spec resolved here from the claim's
        measured noise. ``samples``: the per-seed values when ``value`` is their mean."""
        if name in self.measurements:
            raise ValueError(f"{self.claim.id}: metric {name!r} recorded twice")
        v = float(value)
        stored = v if math.isfinite(v) else None
        kept = tuple(float(x) if math.isfinite(float(x)) else None for x in samples)
        if hasattr(tol, "resolve"):
            tol = tol.resolve(name, self.noise, stored)
        self.measurements[name] = Measurement(name, stored, tol, paper, unit, key, kept)
        return v

    def observe(self, name: str, value: float, why: str) -> float:
        """Report a number without guarding it: noise that no band could cover without
        covering the metric's whole domain (e.g. CPU timing ratios of a GPU-scoped claim).
        It reaches the table, the report and claims.json, never the reference."""
        v = float(value)
        self.observed[name] = v if math.isfinite(v) else None
        self.note(f"{name} = {format_value(self.observed[name])} (reported, not guarded: {why})")
        return v

    def baseline(self, accuracies: Any, chance: float, what: str) -> bool:
        """Record ``baseline_learned``: 1 when the baseline's mean accuracy is more than
        ``BASELINE_MARGIN`` above chance. Exact, so a loop that stops learning fails the
        reference; and regeneration refuses to store a trained claim's reference at 0."""
        values = [float(a) for a in accuracies]
        mean = sum(values) / len(values) if values else math.nan  # no runs: not learned
        learned = mean - chance > BASELINE_MARGIN
        self.metric("baseline_learned", int(learned), Tolerance(
            why=f"1 when the baseline ({what}) ends more than {BASELINE_MARGIN:g} above chance "
                f"({chance:g}); a reference made from nets at chance guards nothing",
            domain=(0, 1)))
        if not learned:
            self.note(f"the baseline ({what}) did not learn: {mean:.4f} vs chance {chance:g}")
        return learned

    def record_config(self, config: Any, seeds: list[int] | tuple[int, ...] = ()) -> None:
        self.config = to_jsonable(config)
        self.seeds = list(seeds)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def laws(self, checked_name: str, checked: int, violations: list[str],
             bad_caught: dict[str, int]) -> tuple[bool, str]:
        """Record a law suite: how much was checked, the violations of the harness's
        implementation and, per planted bug (``known_bad``), whether the laws caught it. All
        exact. Returns (holds, summary): the laws hold and every known-bad is caught."""
        caught = sum(n > 0 for n in bad_caught.values())
        self.metric(checked_name, checked, EXACT)
        self.metric("violations", len(violations), EXACT, key=True)
        self.metric("known_bad_caught", caught, EXACT, key=True)
        for name, n in bad_caught.items():
            self.metric(f"caught_{name}", int(n > 0), EXACT)
        for v in violations[:5]:
            self.note(v)
        summary = (f"{len(violations)} violations; known-bad caught {caught}/{len(bad_caught)} "
                   f"({bad_caught} violations)"
                   + (f"; first: {violations[0]}" if violations else ""))
        return not violations and caught == len(bad_caught), summary

    def decide(self, holds: bool | None, reason: str, odds: Any = None) -> Verdict:
        """Set the verdict from what was measured; outside the claim's scope it is OUT_OF_SCOPE.

        ``holds=None``: the measurement cannot decide (a precondition failed): INCONCLUSIVE.
        ``odds`` (``harness.odds.VerdictOdds``): how often a redraw of the seeds reaches each
        verdict; every trained check passes it, so the reference can accept each verdict a
        user's machine may plausibly give (``harness.odds``)."""
        if self.claim.scope == "gpu" and self.device != "cuda":
            self.verdict = Verdict.OUT_OF_SCOPE
            claim_would = {True: "holds", False: "fails", None: "is undecided"}[holds]
            self.reason = f"GPU-scoped, measured on {self.device} (here it {claim_would}: {reason})"
            odds = None  # out of scope whatever the seeds say
        else:
            self.verdict = {True: Verdict.REPRODUCED, False: Verdict.NOT_REPRODUCED,
                            None: Verdict.INCONCLUSIVE}[holds]
            self.reason = reason
        self.odds = odds
        if odds is not None and len(odds.shares) > 1:
            self.note(f"verdict on {odds.resamples} paired redraws of the seeds: {odds.text()}")
        paths = getattr(self.noise, "verdicts", None) or {}
        if len(set(paths.values())) > 1:
            self.note("measured under other CPU kernel paths the verdict was "
                      + ", ".join(f"{v} ({s})" for s, v in paths.items())
                      + ": the design sits at its decision boundary")
        return self.verdict

    def artifact_path(self, filename: str) -> Path | None:
        """Where to save a file of evidence (a plot, a table); None when no results dir."""
        if self.artifacts_dir is None:
            return None
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        path = self.artifacts_dir / filename
        self.artifacts.append(path)
        return path

    def table(self, filename: str, frame: Any) -> None:
        """Save a pandas DataFrame as CSV beside the results."""
        path = self.artifact_path(filename)
        if path is not None:
            frame.to_csv(path, index=False)

    def figure(self, filename: str, fig: Any) -> None:
        """Save a matplotlib figure beside the results, then close it."""
        path = self.artifact_path(filename)
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)

    def key_numbers(self) -> str:
        shown = [m for m in self.measurements.values() if m.key] or list(self.measurements.values())[:3]
        return "; ".join(m.shown() for m in shown)

"""What a claim is, what a check measures, and how its verdict is recorded.

A claim file in ``claims/`` declares a ``Claim`` as data next to its test and marks the test
with ``@pytest.mark.claim(CLAIM)``. The test receives an ``Evidence`` recorder (a fixture of the
harness plugin), measures with the harness, records metrics with their tolerances, and decides
the verdict. The plugin compares the evidence with the stored reference and renders the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from harness.jsonable import to_jsonable  # noqa: F401 (re-exported: claims record configs)

SCOPES = ("any", "gpu")
DIRECTIONS = ("two-sided", "higher-is-better", "lower-is-better")


class Verdict(str, Enum):
    REPRODUCED = "REPRODUCED"
    NOT_REPRODUCED = "NOT_REPRODUCED"
    OUT_OF_SCOPE = "OUT_OF_SCOPE"
    # The measurement cannot decide: a precondition of the test failed (e.g. the bases whose
    # order is to be preserved have no established order at this budget). Never a pass.
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True)
class Claim:
    """A published claim, declared as data beside the check that tests it."""

    id: str
    statement: str
    source: str  # paper, figure or table
    scope: str = "any"  # "any" device, or "gpu": elsewhere the verdict is OUT_OF_SCOPE
    paper: dict[str, str] = field(default_factory=dict)  # the paper's figures, as quoted
    # A trained claim must show that its baseline learned the task (``Evidence.baseline``):
    # a reference made from nets at chance guards nothing and is refused at regeneration,
    # unless chance is what the claim expects.
    trained: bool = False
    chance_expected: bool = False
    # Verdicts the reference accepts beyond the measured ones, each with why: for a design
    # that sits on its decision boundary on some kernel path where neither the paths nor the
    # seed redraws of the others show it (the held-out check in tests/test_references.py).
    # A stronger design is the better fix; this says the smoke budget could not buy it.
    boundary: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"claim {self.id}: scope {self.scope!r} not in {SCOPES}")
        unknown = set(self.boundary) - {"REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE"}
        if unknown or not all(why.strip() for why in self.boundary.values()):
            raise ValueError(f"claim {self.id}: boundary verdicts {sorted(self.boundary)} must "
                             "be REPRODUCED, NOT_REPRODUCED or INCONCLUSIVE, each with why")


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may move from its reference, and why that much.

    The band half-width is ``max(abs, rel * |reference|)``. A one-sided metric (a speed or an
    accuracy that may only improve) fails only when it moves the wrong way.
    """

    why: str  # what noise the band covers and how it was measured
    abs: float = 0.0
    rel: float = 0.0
    direction: str = "two-sided"
    # The values the metric can take, e.g. (0, 1) for an accuracy: a band that covers all of
    # it guards nothing (tests/test_references.py refuses such a stored reference).
    domain: tuple[float, float] | None = None
    # The band spec a measured band came from (``bands.Measured`` fields), stored with the
    # reference so the band can be rebuilt from other kernel paths (the held-out check).
    rule: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction {self.direction!r} not in {DIRECTIONS}")
        if self.abs < 0 or self.rel < 0:
            raise ValueError("tolerances are non-negative")
        if not self.why.strip():
            raise ValueError("every tolerance needs a justification")
        if self.domain is not None:
            lo, hi = self.domain
            if not lo < hi:
                raise ValueError(f"domain {self.domain} is empty")

    @property
    def exact(self) -> bool:
        return self.abs == 0 and self.rel == 0

    def half_width(self, reference: float) -> float:
        return max(self.abs, self.rel * abs(reference))

    def band(self, reference: float) -> tuple[float, float]:
        """The values that pass around ``reference`` (one-sided metrics: open on one side)."""
        tol = self.half_width(reference)
        lo = -math.inf if self.direction == "lower-is-better" else reference - tol
        hi = math.inf if self.direction == "higher-is-better" else reference + tol
        return lo, hi

    def covers_domain(self, reference: float | None) -> bool:
        """True when every value of the metric's domain would pass: the band guards nothing."""
        if self.domain is None or reference is None:
            return False
        lo, hi = self.band(reference)
        return lo <= self.domain[0] and hi >= self.domain[1]

    def violation(self, name: str, value: float | None, reference: float | None) -> str | None:
        """A message when ``value`` leaves the band around ``reference``, else None."""
        if value is None or reference is None:
            if value is None and reference is None:
                return None  # both non-finite, e.g. a run that diverged both times
            return f"{name}: {_fmt(value)} but reference {_fmt(reference)}"
        tol = self.half_width(reference)
        # The band is closed; the slack keeps its edges inside despite float rounding
        # (4/9 + 3/9 < 7/9 in binary floating point).
        slack = 1e-12 * max(1.0, abs(reference))
        lo, hi = reference - tol - slack, reference + tol + slack
        too_low = value < lo and self.direction != "lower-is-better"
        too_high = value > hi and self.direction != "higher-is-better"
        if too_low or too_high:
            return (
                f"{name}: measured {_fmt(value)} outside [{_fmt(lo)}, {_fmt(hi)}] "
                f"(reference {_fmt(reference)}, tolerance ±{_fmt(tol)}, {self.direction})"
            )
        return None


EXACT = Tolerance(why="an exact count: deterministic integer arithmetic, no noise")
ACCURACY = (0.0, 1.0)  # domains
SHARE = (0.0, 1.0)
DIFFERENCE = (-1.0, 1.0)  # of two accuracies or shares
CORRELATION = (-1.0, 1.0)
RATIO = (0.0, math.inf)

BASELINE_MARGIN = 0.05  # "learned": more than 5 points above chance


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
        text = f"{self.name}={_fmt(self.value)}{self.unit}"
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
        # On a dry run: the GPU time the check's runs would take at full size
        # (``harness.costs.Estimate``). ``estimating`` is set by the plugin's fixture.
        self.estimating = False
        self.full_size: Any = None

    def full_size_jobs(self, jobs: Callable[[], Sequence[Any]],
                       cells_per_gpu: int | None = None) -> None:
        """On a dry run, the ``TrainJob``s this check trains at full size (``jobs()``: built
        from the un-shrunk config on ``costs.placeholder_data``), so the plugin can print their
        estimated GPU time. ``cells_per_gpu``: how many share a GPU at once (default
        ``executors.CELLS_PER_GPU``; 1 for a check that reads the runs' timings). Elsewhere
        nothing is built."""
        if not self.estimating:
            return
        from harness.costs import Estimate
        from harness.executors import CELLS_PER_GPU

        n = CELLS_PER_GPU if cells_per_gpu is None else cells_per_gpu
        self.full_size = (self.full_size or Estimate()).add(jobs(), concurrency=n)

    def full_size_phases(self, phases: Callable[[], dict[str, Any]]) -> None:
        """On a dry run, the check's other priced phases at full size (``phases()``: key ->
        ``costs.Phase``; timing, evaluation, compilation, decomposition): the same key in two
        claims is one phase, done once. Elsewhere nothing is built."""
        if not self.estimating:
            return
        from harness.costs import Estimate

        est = self.full_size or Estimate()
        for key, phase in phases().items():
            est.add_phase(key, phase)
        self.full_size = est

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
        self.note(f"{name} = {_fmt(self.observed[name])} (reported, not guarded: {why})")
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


def _fmt(x: float | None) -> str:
    if x is None:
        return "nan"
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.4g}"

"""What a claim is and how far its measurements may move: ``Claim``, ``Verdict``, ``Tolerance``.

A claim file in ``claims/`` declares a ``Claim`` as data next to its test and marks the test
with ``@pytest.mark.claim(CLAIM)``. The test receives an ``Evidence`` recorder
(``harness.evidence``, a fixture of the harness plugin), measures with the harness, records
metrics with their tolerances (``Tolerance``, with the domains below) and decides the verdict.
This module imports nothing of the harness's training, costs or runs: every family sits above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
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
            return f"{name}: {format_value(value)} but reference {format_value(reference)}"
        tol = self.half_width(reference)
        # The band is closed; the slack keeps its edges inside despite float rounding
        # (4/9 + 3/9 < 7/9 in binary floating point).
        slack = 1e-12 * max(1.0, abs(reference))
        lo, hi = reference - tol - slack, reference + tol + slack
        too_low = value < lo and self.direction != "lower-is-better"
        too_high = value > hi and self.direction != "higher-is-better"
        if too_low or too_high:
            return (
                f"{name}: measured {format_value(value)} outside [{format_value(lo)}, {format_value(hi)}] "
                f"(reference {format_value(reference)}, tolerance ±{format_value(tol)}, {self.direction})"
            )
        return None


EXACT = Tolerance(why="an exact count: deterministic integer arithmetic, no noise")
ACCURACY = (0.0, 1.0)  # domains
SHARE = (0.0, 1.0)
DIFFERENCE = (-1.0, 1.0)  # of two accuracies or shares
CORRELATION = (-1.0, 1.0)
RATIO = (0.0, math.inf)


def format_value(x: float | None) -> str:
    """A measured number as the tables, reasons and reports print it: integers in full with
    thousands separators, the rest to 4 significant digits; None as "nan"."""
    if x is None:
        return "nan"
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.4g}"

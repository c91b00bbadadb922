"""Statistics over seeds and populations: summaries, one-sided comparisons, correlations.

Comparisons are decided by a one-sided Welch confidence bound on the difference of means
(``scipy.stats.ttest_ind``), never by single runs. With few seeds the bound is wide, so a claim
can fail to be established: that is reported as such, not rounded up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class SeedSummary:
    """Mean, sample standard deviation and a two-sided t confidence interval over seeds."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.std:.2g} (n={self.n}, CI [{self.ci_low:.4g}, {self.ci_high:.4g}])"


def summarize(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("summarize needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return SeedSummary(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * std / math.sqrt(x.size)
    return SeedSummary(mean, std, int(x.size), mean - half, mean + half)


@dataclass(frozen=True)
class OneSided:
    """Is mean(a) − mean(b) > −margin?  ``lower``/``upper``: one-sided confidence bounds on
    mean(a) − mean(b). ``holds``: the lower bound clears −margin; ``refuted``: the upper bound
    is below it. Neither: the seeds cannot tell (too few or too noisy)."""

    holds: bool
    difference: float
    lower: float
    margin: float
    confidence: float
    upper: float = math.inf

    @property
    def refuted(self) -> bool:
        return self.upper < -self.margin

    @property
    def detectable(self) -> float:
        """The smallest difference this design could establish: the distance from the
        difference to its one-sided bound (the t quantile times the standard error)."""
        return self.difference - self.lower

    @property
    def decided(self) -> bool | None:
        """True (holds), False (refuted) or None (undecided)."""
        return True if self.holds else (False if self.refuted else None)

    def __str__(self) -> str:
        return (f"diff {self.difference:+.4g}, {self.confidence:.0%} bounds "
                f"[{self.lower:+.4g}, {self.upper:+.4g}] vs −margin {-self.margin:+.4g}")


def bounds_of_difference(a: Sequence[float], b: Sequence[float],
                         confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) − mean(b), its one-sided Welch lower bound, its one-sided upper bound)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return diff, -math.inf, math.inf  # one run per side bounds nothing
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        return diff, diff, diff  # deterministic: no spread to allow for
    low = stats.ttest_ind(a, b, equal_var=False, alternative="greater").confidence_interval(confidence)
    high = stats.ttest_ind(a, b, equal_var=False, alternative="less").confidence_interval(confidence)
    return diff, float(low.low), float(high.high)


def mean(values: Sequence[float]) -> float:
    """Mean of per-seed values; NaN for none (an empty cell is reported, not an error)."""
    return sum(values) / len(values) if values else math.nan


def clearly_above(test: OneSided, by: float) -> bool | None:
    """Is the difference established (``test.holds``) and at least ``by`` on average? False
    when even its upper bound is below ``by``; None when the seeds cannot tell."""
    if test.holds and test.difference >= by:
        return True
    return False if test.upper < by else None


def word(decided: bool | None, yes: str, no: str, undecided: str = "undecided") -> str:
    """The reason's word for a three-valued decision."""
    return {True: yes, False: no, None: undecided}[decided]


def all_of(*parts: bool | None) -> bool | None:
    """Three-valued AND: False when any part is refuted, None when any is undecided."""
    if any(p is False for p in parts):
        return False
    if any(p is None for p in parts):
        return None
    return True


def within_margin(a: Sequence[float], b: Sequence[float], margin: float,
                  confidence: float = 0.95) -> OneSided:
    """A is no worse than B by more than ``margin``, at the given one-sided confidence."""
    diff, lower, upper = bounds_of_difference(a, b, confidence)
    return OneSided(lower > -margin, diff, lower, margin, confidence, upper)


def beats(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> OneSided:
    """A is better than B (mean(a) > mean(b)) at the given one-sided confidence."""
    diff, lower, upper = bounds_of_difference(a, b, confidence)
    return OneSided(lower > 0, diff, lower, 0.0, confidence, upper)


def exceeds(values: Sequence[float], than: float, confidence: float = 0.95) -> OneSided:
    """mean(values) > ``than``, by a one-sample one-sided t bound (for a per-seed statistic
    compared with a fixed value, e.g. a rank correlation with 0)."""
    x = np.asarray(values, float)
    diff = float(x.mean() - than) if x.size else math.nan
    if x.size < 2:
        lower, upper = -math.inf, math.inf
    elif x.std(ddof=1) == 0:
        lower = upper = diff
    else:
        half = float(stats.t.ppf(confidence, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(
            x.size)
        lower, upper = diff - half, diff + half
    return OneSided(lower > 0, diff, lower, 0.0, confidence, upper)


@dataclass(frozen=True)
class Correlation:
    r: float
    ci_low: float
    ci_high: float
    n: int

    def __str__(self) -> str:
        return f"r={self.r:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] (n={self.n})"


def pearson(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> Correlation:
    """Pearson r with its Fisher-z confidence interval (scipy)."""
    res = stats.pearsonr(np.asarray(x, float), np.asarray(y, float))
    ci = res.confidence_interval(confidence_level=confidence)
    return Correlation(float(res.statistic), float(ci.low), float(ci.high), len(x))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return float(stats.spearmanr(np.asarray(x, float), np.asarray(y, float)).statistic)

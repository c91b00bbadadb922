"""How likely each verdict is on a machine nobody measured.

Another CPU's kernels move a trained number like a new seed, so "the verdict seen under three
kernel paths" does not say which verdicts a fourth path can give: a design at its decision
boundary flips with every metric still in band. What does say it is the spread of the seeds
themselves. ``verdict_odds`` redraws the experiment from its own seeds (a paired bootstrap: the
same drawn seeds in every cell, so paired comparisons stay paired), re-runs the claim's pure
judge on each redraw, and gives the share of redraws that reach each verdict.

A reference accepts every verdict whose share is at least ``PLAUSIBLE`` under the native run or
under any measured kernel path (``references.verdicts_plausible``); a claim for which both
REPRODUCED and NOT_REPRODUCED are plausible cannot decide anything on another machine and is
refused at regeneration (a stronger design is the fix, not a wider acceptance).

Why redraws with one distinct seed are redrawn: n copies of one seed have zero spread, which a
real run of n seeds never has, and a Welch bound on them decides anything; counting them would
call every verdict plausible. ``tests/test_references.py`` checks the rule by holding each
measured kernel path out in turn.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

PLAUSIBLE = 0.05  # a verdict reached by at least 1 redraw in 20 is one a user's machine can give
RESAMPLES = 100  # standard error of a 5% share: 2.2 points; a judge call costs 20-50 ms
VERDICT_OF_HOLDS = {True: "REPRODUCED", False: "NOT_REPRODUCED", None: "INCONCLUSIVE"}


@dataclass(frozen=True)
class VerdictOdds:
    """Share of seed redraws per verdict (keys are ``Verdict`` values), out of ``resamples``."""

    shares: dict[str, float]
    resamples: int

    def plausible(self, floor: float = PLAUSIBLE) -> list[str]:
        return sorted(v for v, p in self.shares.items() if p >= floor)

    def text(self) -> str:
        return ", ".join(f"{v} {p:.0%}" for v, p in sorted(self.shares.items(),
                                                            key=lambda kv: -kv[1]))

    def to_json(self) -> dict[str, Any]:
        return {"shares": dict(self.shares), "resamples": self.resamples}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> VerdictOdds:
        return cls({str(k): float(v) for k, v in raw["shares"].items()}, int(raw["resamples"]))


def seed_draw(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` seed positions drawn with replacement, at least two distinct when ``n`` ≥ 2."""
    while True:
        idx = rng.integers(0, n, size=n)
        if n < 2 or len(set(idx.tolist())) > 1:
            return idx


def resample_seeds(table: pd.DataFrame, idx: Sequence[int], column: str = "seed") -> pd.DataFrame:
    """The table as if its seeds had been ``idx`` (positions into its sorted distinct seeds):
    every row of each drawn seed, relabelled to its draw's position so that a seed drawn twice
    counts as two seeds. Every cell must hold the same seeds, or pairing is meaningless."""
    codes, seeds = pd.factorize(table[column], sort=True)
    rows = [np.flatnonzero(codes == i) for i in range(len(seeds))]
    picked = [rows[i] for i in idx]
    out = table.iloc[np.concatenate(picked)].reset_index(drop=True)
    out[column] = np.repeat(np.arange(len(picked)), [len(r) for r in picked])
    return out


def resample_lists(values: Mapping[str, Sequence[float]], idx: Sequence[int]) -> dict[str, list]:
    """Per-seed lists (same seed order in each) as if their seeds had been ``idx``."""
    return {k: [v[i] for i in idx] for k, v in values.items()}


def verdict_odds(holds_of: Callable[[Sequence[int]], bool | None], n_seeds: int,
                 resamples: int = RESAMPLES, seed: int = 0) -> VerdictOdds:
    """Share of verdicts over ``resamples`` paired seed redraws; ``holds_of(idx)`` re-judges
    the claim on the seeds at positions ``idx``. Seeded, so a rerun gives the same odds."""
    if n_seeds < 2:  # one seed cannot be redrawn: the verdict is all there is
        return VerdictOdds({VERDICT_OF_HOLDS[holds_of([0] * n_seeds)]: 1.0}, 1)
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    with warnings.catch_warnings():
        # A redraw repeats seeds, so scipy warns of nearly identical samples: expected here.
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(resamples):
            v = VERDICT_OF_HOLDS[holds_of(seed_draw(n_seeds, rng).tolist())]
            counts[v] = counts.get(v, 0) + 1
    return VerdictOdds({v: c / resamples for v, c in counts.items()}, resamples)


def judge_odds(judge: Callable[..., Any], table: pd.DataFrame, *args: Any, column: str = "seed",
               resamples: int = RESAMPLES) -> VerdictOdds:
    """``verdict_odds`` of a family's pure judge, called as ``judge(table, *args)`` on redraws
    of the per-run table's seeds; it returns a judgement with ``holds``."""
    n = table[column].nunique()
    if n == 0:  # no runs at all: the judge says what that means (or names the empty cell)
        return VerdictOdds({VERDICT_OF_HOLDS[judge(table, *args).holds]: 1.0}, 1)
    return verdict_odds(lambda idx: judge(resample_seeds(table, idx, column), *args).holds, n,
                        resamples)

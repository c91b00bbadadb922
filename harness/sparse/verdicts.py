"""The ITOP claims' verdict rules: pure functions of a runs table (one row per training run:
method, batch_size, interval, seed, acc with a diverged run at chance, rs).

Each returns a typed judgement: ``holds`` True (holds), False (refuted) or None (the seeds
cannot tell, reported as INCONCLUSIVE), a reason stating the numbers and the smallest
difference the design could detect, and the per-seed samples the claim stores. The tests feed
the rules fabricated grids, including ones where the claim must fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from harness import stats
from harness.stats import mean, word

DENSE, STATIC, SET, RIGL = "dense", "static", "SET", "RigL"

# The margins, in accuracy (fractions), fixed before any result was seen: ``study.GridConfig``'s
# defaults, which a claim's config may override (the claim file then says so).
DENSE_MARGIN = 0.02  # DST "reaches dense": not worse than dense by more than this
CLEARLY_BELOW = 0.02  # static "ends clearly below" DST by at least this
LEARNED_MARGIN = 0.05  # a comparison says something only above chance + this


class Margins(Protocol):
    """What the rules read of a grid's config (``study.GridConfig``), fixed a priori."""

    batch_size: int
    intervals: tuple[int, ...]
    ref_interval: int
    batch_sizes: tuple[int, ...]
    dense_margin: float
    clearly_below: float
    learned_margin: float

    @property
    def chance(self) -> float: ...


def values(runs: pd.DataFrame, method: str, batch_size: int, interval: int | None = None,
           column: str = "acc") -> list[float]:
    """Per-seed ``column`` of one cell, in seed order."""
    sel = runs[(runs.method == method) & (runs.batch_size == batch_size)]
    if interval is not None:
        sel = sel[sel.interval == interval]
    return sel.sort_values("seed")[column].tolist()


@dataclass(frozen=True)
class ReachesDense:
    holds: bool | None
    reason: str
    dense: tuple[float, ...]
    dst: tuple[float, ...]  # SET at the reference ΔT
    dst_rs: tuple[float, ...]


def judge_reaches_dense(runs: pd.DataFrame, cfg: Margins) -> ReachesDense:
    """DST (SET at the reference ΔT) is within ``dense_margin`` of dense (one-sided 95% Welch,
    ``stats.within_margin``); only informative when dense learned the task."""
    b, dt = cfg.batch_size, cfg.ref_interval
    dense, dst = values(runs, DENSE, b), values(runs, SET, b, dt)
    rs = values(runs, SET, b, dt, "rs")
    close = stats.within_margin(dst, dense, cfg.dense_margin)
    learned = mean(dense) - cfg.chance >= cfg.learned_margin
    reason = (f"SET (ΔT={dt}, R_s {mean(rs):.3f}) {mean(dst):.4f} vs dense {mean(dense):.4f}: "
              f"{close} (margin {cfg.dense_margin:g}; detectable ±{close.detectable:.3f}) → "
              + word(close.decided, "within the margin of dense", "clearly below dense")
              + ("" if learned else f"; dense {mean(dense):.4f} is not above chance: "
                                    "uninformative"))
    return ReachesDense(stats.all_of(close.decided, learned), reason, tuple(dense), tuple(dst),
                        tuple(rs))


@dataclass(frozen=True)
class StaticBelow:
    holds: bool | None
    reason: str
    static: tuple[float, ...]
    dst: tuple[float, ...]


def judge_static_below_dst(runs: pd.DataFrame, cfg: Margins) -> StaticBelow:
    """DST beats static at the same sparsity (one-sided 95% Welch) by a mean of at least
    ``clearly_below``; refuted when the upper bound of DST − static is below that margin."""
    b, dt = cfg.batch_size, cfg.ref_interval
    static, dst = values(runs, STATIC, b), values(runs, SET, b, dt)
    test = stats.beats(dst, static)
    below = stats.clearly_above(test, cfg.clearly_below)
    learned = mean(dst) - cfg.chance >= cfg.learned_margin
    reason = (f"SET (ΔT={dt}) {mean(dst):.4f} vs static {mean(static):.4f}: DST−static {test} "
              f"(needs significant and ≥{cfg.clearly_below:g}; detectable "
              f"±{test.detectable:.3f}) → "
              + word(below, "static clearly below", "static not clearly below")
              + ("" if learned else "; DST not above chance: uninformative"))
    return StaticBelow(stats.all_of(below, learned), reason, tuple(static), tuple(dst))


@dataclass(frozen=True)
class TracksRate:
    holds: bool | None
    reason: str
    intervals: tuple[int, ...]  # rare to frequent
    acc: tuple[tuple[float, ...], ...]  # per interval, per seed
    rs: tuple[tuple[float, ...], ...]


def judge_accuracy_tracks_rs(runs: pd.DataFrame, cfg: Margins) -> TracksRate:
    """Across ΔT (rare → frequent): R_s rises at every step (means); accuracy rises from the
    rarest to the best intermediate ΔT (one-sided 95% Welch) and falls from it to the most
    frequent. Refuted when R_s does not rise, or when the rarest or the most frequent ΔT is
    established as better than every intermediate one; undecided otherwise."""
    b = cfg.batch_size
    dts = tuple(cfg.intervals)
    if len(dts) < 3:
        raise ValueError(f"accuracy_tracks_rs needs at least 3 intervals, got {dts}")
    acc = tuple(tuple(values(runs, SET, b, dt)) for dt in dts)
    rs = tuple(tuple(values(runs, SET, b, dt, "rs")) for dt in dts)
    rs_means = [mean(r) for r in rs]
    rs_rises = all(a < c for a, c in zip(rs_means, rs_means[1:]))
    mid = max(range(1, len(dts) - 1), key=lambda i: mean(acc[i]))
    rises = stats.beats(acc[mid], acc[0])
    falls = stats.beats(acc[mid], acc[-1])
    holds = stats.all_of(rs_rises, rises.decided, falls.decided)
    shown = ", ".join(f"ΔT={dt}: acc {mean(a):.4f}, R_s {r:.3f}"
                      for dt, a, r in zip(dts, acc, rs_means))
    reason = (f"{shown}; R_s {'rises' if rs_rises else 'does not rise'} as ΔT shrinks; "
              f"acc(ΔT={dts[mid]}) − acc(ΔT={dts[0]}) {rises} (detectable "
              f"±{rises.detectable:.3f}) → {word(rises.decided, 'rises', 'falls')}; "
              f"acc(ΔT={dts[mid]}) − acc(ΔT={dts[-1]}) {falls} (detectable "
              f"±{falls.detectable:.3f}) → "
              + word(falls.decided, "falls when updates come too often",
                      "keeps rising at the most frequent ΔT"))
    return TracksRate(holds, reason, dts, acc, rs)


@dataclass(frozen=True)
class ExploresMore:
    holds: bool | None
    reason: str
    set_rs: tuple[float, ...]
    rigl_rs: tuple[float, ...]


def judge_set_explores_more(runs: pd.DataFrame, cfg: Margins) -> ExploresMore:
    """SET's R_s beats RigL's at the same ΔT and batch (one-sided 95% Welch); refuted when
    RigL's is established as at least as high (upper bound of SET − RigL ≤ 0)."""
    b, dt = cfg.batch_size, cfg.ref_interval
    set_rs, rigl_rs = values(runs, SET, b, dt, "rs"), values(runs, RIGL, b, dt, "rs")
    test = stats.beats(set_rs, rigl_rs)
    holds = True if test.holds else (False if test.upper <= 0 else None)
    reason = (f"ΔT={dt}, B={b}: R_s SET {mean(set_rs):.4f} vs RigL {mean(rigl_rs):.4f}; "
              f"SET−RigL {test} (detectable ±{test.detectable:.4f}) → "
              + word(holds, "SET explores more", "RigL explores as much or more"))
    return ExploresMore(holds, reason, tuple(set_rs), tuple(rigl_rs))


@dataclass(frozen=True)
class SmallBatch:
    holds: bool | None
    reason: str
    smallest: int
    largest: int
    rs_small: tuple[float, ...]
    rs_large: tuple[float, ...]
    acc_small: tuple[float, ...]
    acc_large: tuple[float, ...]


def judge_small_batch_more_exploration(runs: pd.DataFrame, cfg: Margins) -> SmallBatch:
    """For the same epochs, the smallest batch reaches a higher R_s than the largest and a
    higher accuracy (each one-sided 95% Welch). Refuted when either is established the other
    way (the paper's caveat, SGD noise taking over at a small enough batch, would show here as
    a refutation at this batch)."""
    dt = cfg.ref_interval
    small, large = min(cfg.batch_sizes), max(cfg.batch_sizes)
    rs_s, rs_l = values(runs, SET, small, dt, "rs"), values(runs, SET, large, dt, "rs")
    acc_s, acc_l = values(runs, SET, small, dt), values(runs, SET, large, dt)
    if not acc_s or len(acc_s) != len(acc_l):  # the claim pairs them seed by seed
        raise ValueError(f"SET at ΔT={dt} needs the same seeds at B={small} and B={large}: "
                         f"got {len(acc_s)} and {len(acc_l)} runs")
    more = stats.beats(rs_s, rs_l)
    better = stats.beats(acc_s, acc_l)
    rs_holds = True if more.holds else (False if more.upper <= 0 else None)
    acc_holds = better.decided
    reason = (f"SET ΔT={dt}: B={small} R_s {mean(rs_s):.4f}, acc {mean(acc_s):.4f}; "
              f"B={large} R_s {mean(rs_l):.4f}, acc {mean(acc_l):.4f}; R_s small−large {more} "
              f"→ {word(rs_holds, 'higher', 'not higher')}; acc small−large {better} "
              f"(detectable ±{better.detectable:.3f}) → "
              + word(acc_holds, "higher", "lower"))
    return SmallBatch(stats.all_of(rs_holds, acc_holds), reason, small, large, tuple(rs_s),
                      tuple(rs_l), tuple(acc_s), tuple(acc_l))

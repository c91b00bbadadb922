"""The NASViT claims' verdict rules: pure functions of a runs table (one row per training run
and evaluated subnet: net, method, seed, arch, acc with a diverged run at chance,
tensor_share, step_share, mean_cos; see ``study.train_supernet_cells``).

Each returns a typed judgement: ``holds`` True (holds), False (refuted) or None (the seeds
cannot tell, or the baseline did not learn: INCONCLUSIVE), a reason stating the numbers and the
smallest difference the design could detect, and the per-seed samples the claim stores. Every
comparison is a one-sided 95% Welch bound over seeds (``harness.stats``); margins are the
config's, fixed before any run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from harness import stats
from harness.stats import mean, word

NAIVE, PROJECTED, STANDALONE = "naive", "projected", "standalone"
CNN, HYBRID = "cnn", "hybrid"
LARGEST, SMALLEST, MID = "largest", "smallest", "mid"

# The margins, fixed before any result was seen: ``study.GridConfig``'s defaults, which a
# claim's config may override (the claim file then says so).
CONFLICT_MARGIN = 0.02  # the hybrid's share of negative cosines above the CNN's by this
PROJECTION_MARGIN = 0.02  # "at least the accuracy": not worse by more than this (fraction)
LEARNED_MARGIN = 0.05  # a comparison says something only above chance + this


class Margins(Protocol):
    """What the rules read of a grid's config (``study.GridConfig``), fixed a priori."""

    conflict_margin: float
    projection_margin: float
    learned_margin: float

    @property
    def chance(self) -> float: ...


def values(runs: pd.DataFrame, net: str, method: str, arch: str = LARGEST,
           column: str = "acc") -> list[float]:
    """Per-seed ``column`` of one (net, method, arch), in seed order."""
    sel = runs[(runs.net == net) & (runs.method == method) & (runs.arch == arch)]
    return sel.sort_values("seed")[column].tolist()


def _same_seeds(a: tuple | list, b: tuple | list, what_a: str, what_b: str) -> None:
    """The claims pair these per seed: a ValueError naming the cells when one is empty or
    their seeds differ in number (nothing to pair, so nothing to judge)."""
    if not a or not b or len(a) != len(b):
        raise ValueError(f"{what_a} and {what_b} need the same seeds: got {len(a)} and "
                         f"{len(b)} runs")


def _learned(accs: list[float], cfg: Margins) -> bool:
    return mean(accs) - cfg.chance >= cfg.learned_margin


@dataclass(frozen=True)
class ConflictsMore:
    holds: bool | None
    reason: str
    hybrid: tuple[float, ...]  # per seed: share of (logged step, tensor) with cos < 0
    cnn: tuple[float, ...]
    hybrid_steps: tuple[float, ...]  # per seed: share of logged steps with overall cos < 0
    cnn_steps: tuple[float, ...]


def judge_transformer_conflicts_more(runs: pd.DataFrame, cfg: Margins) -> ConflictsMore:
    """Under naive sandwich training the hybrid's share of conflicting (step, tensor) pairs
    exceeds the CNN's, established and by at least ``conflict_margin`` on average
    (``stats.clearly_above``); refuted when even the upper bound is below the margin. Only
    informative when both supernets learned the task."""
    hybrid = values(runs, HYBRID, NAIVE, column="tensor_share")
    cnn = values(runs, CNN, NAIVE, column="tensor_share")
    h_steps = values(runs, HYBRID, NAIVE, column="step_share")
    c_steps = values(runs, CNN, NAIVE, column="step_share")
    _same_seeds(hybrid, cnn, "the hybrid's naive sandwich runs", "the CNN's")
    test = stats.beats(hybrid, cnn)
    more = stats.clearly_above(test, cfg.conflict_margin)
    learned = _learned(values(runs, HYBRID, NAIVE), cfg) and _learned(values(runs, CNN, NAIVE),
                                                                      cfg)
    reason = (f"share of (step, tensor) with cos(g₁,g₂) < 0: hybrid {mean(hybrid):.4f} vs CNN "
              f"{mean(cnn):.4f}; hybrid−CNN {test} (needs established and ≥ "
              f"{cfg.conflict_margin:g}; detectable ±{test.detectable:.3f}) → "
              + word(more, "the hybrid conflicts more", "not more in the hybrid")
              + f"; steps with overall cos < 0: hybrid {mean(h_steps):.3f}, CNN "
              f"{mean(c_steps):.3f}"
              + ("" if learned else "; a supernet did not learn the task: uninformative"))
    return ConflictsMore(stats.all_of(more, True if learned else None), reason, tuple(hybrid),
                         tuple(cnn), tuple(h_steps), tuple(c_steps))


@dataclass(frozen=True)
class ProjectionHelps:
    holds: bool | None
    reason: str
    naive: dict[str, tuple[float, ...]]  # arch -> per-seed accuracy
    projected: dict[str, tuple[float, ...]]
    better: dict[str, bool | None]  # the paper's stronger form: projection established better


def judge_projection_helps(runs: pd.DataFrame, cfg: Margins) -> ProjectionHelps:
    """For the smallest and the mid-size subnet of the hybrid, projected training is no worse
    than naive by more than ``projection_margin`` (``stats.within_margin``); holds when both
    are established, refuted when either is refuted. Whether projection is established as
    better (the paper's claim) is reported beside it."""
    naive = {a: tuple(values(runs, HYBRID, NAIVE, a)) for a in (SMALLEST, MID)}
    proj = {a: tuple(values(runs, HYBRID, PROJECTED, a)) for a in (SMALLEST, MID)}
    parts, better, shown = [], {}, []
    for a in (SMALLEST, MID):
        _same_seeds(proj[a], naive[a], f"the hybrid's {a} subnet, projected", "naive")
    for a in (SMALLEST, MID):
        close = stats.within_margin(proj[a], naive[a], cfg.projection_margin)
        gain = stats.beats(proj[a], naive[a])
        parts.append(close.decided)
        better[a] = gain.decided
        shown.append(f"{a}: projected {mean(proj[a]):.4f} vs naive {mean(naive[a]):.4f}, "
                     f"{close} → " + word(close.decided, "at least as good", "worse")
                     + f" (better: {word(gain.decided, 'yes', 'no')}, detectable "
                       f"±{gain.detectable:.3f})")
    learned = _learned(values(runs, HYBRID, NAIVE), cfg)
    reason = ("; ".join(shown) + f" (margin {cfg.projection_margin:g})"
              + ("" if learned else "; the naive supernet did not learn: uninformative"))
    return ProjectionHelps(stats.all_of(*parts, True if learned else None), reason, naive,
                           proj, better)


@dataclass(frozen=True)
class Underperforms:
    holds: bool | None
    reason: str
    inherited: dict[str, tuple[float, ...]]  # arch -> per-seed accuracy (naive sandwich)
    standalone: dict[str, tuple[float, ...]]


def judge_naive_underperforms(runs: pd.DataFrame, cfg: Margins) -> Underperforms:
    """The hybrid's smallest and mid-size subnets inherited from naive sandwich training are
    below the same architectures trained alone (one-sided 95% Welch, standalone beats
    inherited); holds when both are established, refuted when either is established the other
    way round or equal (upper bound of standalone − inherited below 0)."""
    inherited = {a: tuple(values(runs, HYBRID, NAIVE, a)) for a in (SMALLEST, MID)}
    alone = {a: tuple(values(runs, HYBRID, STANDALONE, a)) for a in (SMALLEST, MID)}
    parts, shown = [], []
    for a in (SMALLEST, MID):
        test = stats.beats(alone[a], inherited[a])
        parts.append(test.decided)
        shown.append(f"{a}: alone {mean(alone[a]):.4f} vs inherited {mean(inherited[a]):.4f}, "
                     f"alone−inherited {test} (detectable ±{test.detectable:.3f}) → "
                     + word(test.decided, "inherited below", "inherited not below"))
    learned = all(_learned(list(alone[a]), cfg) for a in (SMALLEST, MID))
    reason = ("; ".join(shown)
              + ("" if learned else "; a standalone subnet did not learn: uninformative"))
    return Underperforms(stats.all_of(*parts, True if learned else None), reason, inherited,
                         alone)

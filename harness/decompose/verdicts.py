"""The decomposition and deployment claims' verdict rules: pure functions of the study's tables.

Each returns a typed judgement: ``holds`` True (holds), False (refuted) or None (the seeds
cannot tell, or a precondition failed: INCONCLUSIVE), and a reason stating the numbers. Every
margin is a field of the config, fixed before the run. The tests feed the rules fabricated
tables, including ones where the claim must fail.

Tables (``harness.decompose.study``):
- damage: one row per (seed, layer, keep): ``error`` (random-tensor), ``acc_drop``;
- strategies: one row per (seed, strategy) with strategy in original / all / selective /
  prune+selective: ``acc``, ``acc_drop``, ``removed_share``, ``layers``;
- pruning: one row per sparsity: ``time_ratio``, ``saved_ratio``, ``gzip_ratio``;
- depthwise grid: one row per (channels, size): ``flops_ratio``, ``time_ratio``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from harness import stats
from harness.stats import mean, word

# The decomposition margins (accuracy fractions, shares of conv parameters), fixed a priori:
# ``study.DecompStudyConfig``'s defaults, which a claim's config may override.
DAMAGE_RHO = 0.5  # "ranks the damage": mean per-seed Spearman at least this
SELECTIVE_MARGIN = 0.02  # selective stays within this of the original
ALL_DROP_MIN = 0.05  # decompose-all "costs much": at least this much accuracy
MIN_REMOVED = 0.10  # selective still removes this share of conv parameters
PRUNING_GAIN = 0.01  # pruning "helps": removes at least this much more (talk: ~2%)
LEARNED_MARGIN = 0.05  # a comparison says something only above chance + this


class DecompMargins(Protocol):
    """What the rules read of a ``study.DecompStudyConfig``, fixed a priori."""

    threshold: float
    damage_rho: float
    selective_margin: float
    all_drop_min: float
    min_removed: float
    pruning_gain: float
    learned_margin: float

    @property
    def chance(self) -> float: ...


# ------------------------------------------------------------ decomp.layer_error_predicts_damage


def per_seed_rank_correlation(damage: pd.DataFrame) -> list[float]:
    """Per seed: the mean over rank levels (``keep``) of Spearman ρ(layer error, accuracy
    drop) across layers. Within a level every layer gets the same rule, so ρ ranks *layers*
    (pooling levels would let the rank itself drive the correlation)."""
    out = []
    for _, by_seed in damage.groupby("seed", sort=True):
        rhos = [stats.spearman(level.error, level.acc_drop)
                for _, level in by_seed.groupby("keep") if len(level) >= 3]
        rhos = [r for r in rhos if not math.isnan(r)]
        out.append(mean(rhos))
    return out


@dataclass(frozen=True)
class DamageRanking:
    holds: bool | None
    reason: str
    rho: tuple[float, ...]  # per seed
    pooled_rho: float
    pooled_p: float


def judge_damage_ranking(damage: pd.DataFrame, cfg: DecompMargins) -> DamageRanking:
    """The random-tensor error ranks layers by their single-layer damage: the per-seed ρ is
    established above 0 (one-sided 95% t bound over seeds) and at least ``damage_rho`` on
    average. Refuted when even its upper bound is below ``damage_rho``."""
    from scipy.stats import spearmanr

    rho = per_seed_rank_correlation(damage)
    test = stats.exceeds(rho, 0.0)
    decided = stats.clearly_above(test, cfg.damage_rho)
    pooled = spearmanr(damage.error, damage.acc_drop, alternative="greater")
    layers = damage.layer.nunique()
    levels = damage.keep.nunique()
    reason = (f"Spearman ρ(layer error, single-layer accuracy drop) over {layers} layers at "
              f"{levels} rank levels, per seed {', '.join(f'{r:.2f}' for r in rho)}: mean "
              f"{mean(rho):.3f}, 95% one-sided bounds [{test.lower:+.3f}, {test.upper:+.3f}] "
              f"(needs > 0 and mean ≥ {cfg.damage_rho:g}) → "
              + word(decided, "the error ranks the damage", "the error does not rank it")
              + f"; all points pooled: ρ {float(pooled.statistic):.3f}, one-sided p "
                f"{float(pooled.pvalue):.2g} (n={len(damage)})")
    return DamageRanking(decided, reason, tuple(rho), float(pooled.statistic),
                         float(pooled.pvalue))


# --------------------------------------------------------------- decomp.selective_keeps_error_low


def strategy_values(table: pd.DataFrame, strategy: str, column: str) -> list[float]:
    """Per-seed ``column`` of one strategy, in seed order."""
    sel = table[table.strategy == strategy].sort_values("seed")
    return sel[column].astype(float).tolist()


@dataclass(frozen=True)
class SelectiveLow:
    holds: bool | None
    reason: str
    original: tuple[float, ...]
    all_acc: tuple[float, ...]
    selective_acc: tuple[float, ...]
    all_removed: tuple[float, ...]
    selective_removed: tuple[float, ...]


def judge_selective(table: pd.DataFrame, cfg: DecompMargins) -> SelectiveLow:
    """Three parts, each fixed a priori: decomposing every conv costs at least ``all_drop_min``
    accuracy (established over seeds); selective stays within ``selective_margin`` of the
    original (one-sided 95% Welch); and selective still removes at least ``min_removed`` of the
    conv parameters on average. A selective run that decomposes nothing fails the last part:
    it kept the accuracy by not compressing."""
    original = strategy_values(table, "original", "acc")
    all_acc = strategy_values(table, "all", "acc")
    sel_acc = strategy_values(table, "selective", "acc")
    all_removed = strategy_values(table, "all", "removed_share")
    sel_removed = strategy_values(table, "selective", "removed_share")
    all_costly = stats.clearly_above(stats.beats(original, all_acc), cfg.all_drop_min)
    sel_close = stats.within_margin(sel_acc, original, cfg.selective_margin).decided
    removes = mean(sel_removed) >= cfg.min_removed
    learned = mean(original) - cfg.chance >= cfg.learned_margin
    layers = strategy_values(table, "selective", "layers")
    reason = (f"decompose-all: accuracy {mean(all_acc):.4f} vs original {mean(original):.4f} "
              f"(removes {mean(all_removed):.1%} of conv parameters) → "
              + word(all_costly, f"costs ≥ {cfg.all_drop_min:g}", f"costs < {cfg.all_drop_min:g}")
              + f"; selective (error < {cfg.threshold:g}; {mean(layers):.1f} layers): accuracy "
                f"{mean(sel_acc):.4f} → "
              + word(sel_close, f"within {cfg.selective_margin:g}",
                     f"more than {cfg.selective_margin:g} below")
              + f", removes {mean(sel_removed):.1%} "
              + ("≥" if removes else "<") + f" {cfg.min_removed:.0%}"
              + ("" if learned else f"; the original {mean(original):.4f} is not above chance: "
                                    "uninformative"))
    return SelectiveLow(stats.all_of(all_costly, sel_close, removes, learned), reason,
                        tuple(original), tuple(all_acc), tuple(sel_acc), tuple(all_removed),
                        tuple(sel_removed))


# ------------------------------------------------------------ decomp.pruning_helps_decomposition


@dataclass(frozen=True)
class PruningHelps:
    holds: bool | None
    reason: str
    selective_removed: tuple[float, ...]
    pruned_removed: tuple[float, ...]


def judge_pruning_helps(table: pd.DataFrame, cfg: DecompMargins) -> PruningHelps:
    """Pruning with the binary-searched ratio, then decomposing, removes more conv parameters
    than decomposing alone at the same threshold: established over seeds and by at least
    ``pruning_gain`` (the talk reports about 2% more). When no layer passes the threshold even
    unpruned, the search never runs (the published procedure), so the claim is untested:
    INCONCLUSIVE."""
    sel = strategy_values(table, "selective", "removed_share")
    pruned = strategy_values(table, "prune+selective", "removed_share")
    layers = strategy_values(table, "selective", "layers")
    if len(pruned) != len(sel):
        raise ValueError(f"prune+selective and selective need the same seeds (paired by seed): "
                         f"got {len(pruned)} and {len(sel)} rows")
    if not any(n > 0 for n in layers):
        return PruningHelps(None, f"no layer's decomposition is under the threshold "
                                  f"{cfg.threshold:g} unpruned in any seed, so the ratio search "
                                  f"never runs: both remove {mean(sel):.1%} (untested)",
                            tuple(sel), tuple(pruned))
    # Paired by seed: both strategies decompose the same trained network.
    test = stats.exceeds([p - s for p, s in zip(pruned, sel, strict=True)], 0.0)
    decided = stats.clearly_above(test, cfg.pruning_gain)
    acc_sel = strategy_values(table, "selective", "acc")
    acc_pruned = strategy_values(table, "prune+selective", "acc")
    reason = (f"conv parameters removed: prune+selective {mean(pruned):.2%} vs selective "
              f"{mean(sel):.2%} (paired by seed: {test}; needs ≥ {cfg.pruning_gain:.0%} more) → "
              + word(decided, "pruning helps", "pruning does not help")
              + f"; accuracy {mean(acc_pruned):.4f} vs {mean(acc_sel):.4f} (not fine-tuned)")
    return PruningHelps(decided, reason, tuple(sel), tuple(pruned))


# ------------------------------------------------------------------------------ deploy.*


# The deployment margins, fixed a priori: ``study.DeployConfig``'s defaults.
TIME_UNCHANGED = 0.10  # |time ratio − 1| within this is "unchanged"
SIZE_UNCHANGED = 0.01  # |saved-size ratio − 1| within this
GZIP_SHRINKS = 0.5  # a gzip ratio at most this is "substantially" smaller
# 3×3 depthwise + 1×1 over a 3×3 conv is (9C + C²)/(9C²) = 1/C + 1/9, exact: "far fewer" is at
# most half in every cell (0.36 at C = 4, 0.12 at C = 256).
FLOPS_FAR_FEWER = 0.5  # depthwise flops ratio at most this is "far fewer"
SPEEDUP_REAL = 1.2  # a precision speed-up at least this is "real"
MUCH_SMALLER = 0.5  # time saving at most this fraction of the flops saving


class DeployMargins(Protocol):
    time_unchanged: float  # |time ratio − 1| within this is "unchanged"
    size_unchanged: float  # |saved-size ratio − 1| within this
    gzip_shrinks: float  # a gzip ratio at most this is "substantially" smaller
    flops_far_fewer: float  # depthwise flops ratio at most this is "far fewer"
    speedup_real: float  # a precision speed-up at least this is "real"
    much_smaller: float  # time saving at most this fraction of the flops saving


@dataclass(frozen=True)
class PruningNoSpeedup:
    holds: bool
    reason: str
    sparsity: float
    time_ratio: float
    saved_ratio: float
    gzip_ratio: float


def judge_pruning_no_speedup(table: pd.DataFrame, cfg: DeployMargins) -> PruningNoSpeedup:
    """At the highest sparsity: dense inference time unchanged (it changed only when every
    interleaved round puts the ratio beyond ``time_unchanged`` of 1 on the same side: one
    round slowed by load is not a change), the saved size within ``size_unchanged`` of 1, the
    gzip size at most ``gzip_shrinks``."""
    if table.empty:
        raise ValueError("the pruning table has no rows: no sparsity was timed")
    top = table.sort_values("sparsity").iloc[-1]
    low = top.get("time_low", top.time_ratio)
    high = top.get("time_high", top.time_ratio)
    time_same = not (high < 1 - cfg.time_unchanged or low > 1 + cfg.time_unchanged)
    size_same = abs(top.saved_ratio - 1) <= cfg.size_unchanged
    shrinks = top.gzip_ratio <= cfg.gzip_shrinks
    reason = (f"at {top.sparsity:.0%} sparsity: dense inference time ×{top.time_ratio:.3f} "
              f"(rounds {low:.3f}-{high:.3f}: "
              + ("unchanged" if time_same else "changed in every round")
              + f", ±{cfg.time_unchanged:g}), "
              f"saved size ×{top.saved_ratio:.4f} ("
              + ("unchanged" if size_same else "changed") + f"), gzip size "
              f"×{top.gzip_ratio:.3f} (" + ("≤" if shrinks else ">") + f" {cfg.gzip_shrinks:g})")
    return PruningNoSpeedup(bool(time_same and size_same and shrinks), reason,
                            float(top.sparsity), float(top.time_ratio), float(top.saved_ratio),
                            float(top.gzip_ratio))


@dataclass(frozen=True)
class DepthwiseCrossover:
    holds: bool
    reason: str
    max_flops_ratio: float
    smallest_cell_time: float
    largest_cell_time: float
    slower_cells: int
    cells: int


def judge_depthwise(grid: pd.DataFrame, cfg: DeployMargins) -> DepthwiseCrossover:
    """Depthwise-separable blocks have far fewer flops in every cell (ratio at most
    ``flops_far_fewer``), yet are not faster in the smallest cell (fewest channels, smallest
    map: time ratio ≥ 1) and are faster in the largest (time ratio < 1)."""
    if grid.empty:
        raise ValueError("the depthwise grid has no cells: nothing was timed")
    ordered = grid.sort_values(["channels", "size"])
    small, large = ordered.iloc[0], ordered.iloc[-1]
    max_flops = float(grid.flops_ratio.max())
    far_fewer = max_flops <= cfg.flops_far_fewer
    slower = int((grid.time_ratio >= 1).sum())
    holds = bool(far_fewer and small.time_ratio >= 1 and large.time_ratio < 1)
    reason = (f"flops ratio ≤ {max_flops:.3f} in every cell ("
              + ("far fewer" if far_fewer else f"not ≤ {cfg.flops_far_fewer:g}")
              + f"); time ratio {small.time_ratio:.2f} at {int(small.channels)} channels, "
                f"{int(small['size'])} px (" + ("not faster" if small.time_ratio >= 1 else "faster")
              + f") and {large.time_ratio:.2f} at {int(large.channels)} channels, "
                f"{int(large['size'])} px ("
              + ("faster" if large.time_ratio < 1 else "not faster")
              + f"); not faster in {slower} of {len(grid)} cells")
    return DepthwiseCrossover(holds, reason, max_flops, float(small.time_ratio),
                              float(large.time_ratio), slower, len(grid))


def depthwise_verdict(judged: DepthwiseCrossover, cfg: DeployMargins,
                      dispatch_bound: str = "") -> tuple[bool | None, str]:
    """The verdict on the grid: ``judged``'s, unless the timing would decide it (the flops are
    far fewer) and ``dispatch_bound`` names deciding cells whose t(2B)/t(B) shows their time
    followed kernel launches, not the convs: then they cannot decide (None)."""
    if dispatch_bound and judged.max_flops_ratio <= cfg.flops_far_fewer:
        return None, (f"{judged.reason}; but the deciding cell(s) {dispatch_bound} timed "
                      "dispatch-bound (t(2B)/t(B) under the threshold): their ratios follow "
                      "kernel launches, so they cannot decide; raise grid_batch")
    return judged.holds, judged.reason


@dataclass(frozen=True)
class PrecisionSpeedup:
    holds: bool
    reason: str


def judge_precision_speedup(speedups: dict[str, float], cfg: DeployMargins) -> PrecisionSpeedup:
    """Half precision is a real speed-up: fp32 time over fp16 time at least ``speedup_real``."""
    fp16 = speedups.get("fp16", math.nan)
    holds = fp16 >= cfg.speedup_real
    shown = ", ".join(f"{k} ×{v:.2f}" for k, v in speedups.items())
    return PrecisionSpeedup(bool(holds), f"inference speed-up over fp32: {shown} (a real "
                                         f"speed-up is ≥ ×{cfg.speedup_real:g})")


@dataclass(frozen=True)
class DecomposedSpeedup:
    holds: bool | None
    reason: str
    flops_saving: float
    time_saving: float


def judge_decomposed_speedup(flops_ratio: float, time_ratio: float,
                             cfg: DeployMargins) -> DecomposedSpeedup:
    """The wall-clock saving (1 − time ratio) is at most ``much_smaller`` of the flops saving
    (1 − flops ratio). A network whose flops did not fall cannot test it."""
    flops_saving, time_saving = 1 - flops_ratio, 1 - time_ratio
    if flops_saving <= 0:
        return DecomposedSpeedup(None, f"the decomposed network saves no flops (ratio "
                                       f"{flops_ratio:.3f}): nothing to compare", flops_saving,
                                 time_saving)
    holds = time_saving <= cfg.much_smaller * flops_saving
    reason = (f"flops saved {flops_saving:.1%}, wall-clock saved {time_saving:.1%} ("
              f"{time_saving / flops_saving:.2f} of it; 'much smaller' is ≤ "
              f"{cfg.much_smaller:g}) → "
              + ("the saving shrinks in wall-clock time" if holds
                 else "the flops saving carries into wall-clock time"))
    return DecomposedSpeedup(bool(holds), reason, flops_saving, time_saving)

"""The AGC claims' verdict rules: pure functions of a runs table (one row per training run:
method, batch_size, lam, clip_head, seed, acc with a diverged run at chance, diverged).

Each rule returns its own typed judgement: ``holds`` (True), refuted (False) or undecided by the
seeds (None, reported as INCONCLUSIVE), a ``reason`` that states the smallest difference the
design could detect, and the per-seed ``Samples`` it judged, which the claims store. Tests feed
the rules fabricated grids, including ones where the claim must fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from harness import stats
from harness.stats import word

NF, AGC, BN = "NF", "NF+AGC", "BN"  # the methods of the runs table


class Margins(Protocol):
    """What the rules read of a grid's config (``study.GridConfig``): margins fixed a priori."""

    clearly_below: float
    bn_margin: float
    learned_margin: float
    lambdas: tuple[float, ...]

    @property
    def chance(self) -> float: ...


def best_lambdas(runs: pd.DataFrame) -> dict[int, float]:
    """Per batch size, the lambda of NF+AGC (classifier unclipped) with the best mean accuracy
    over seeds; ties go to the smaller lambda."""
    agc = runs[(runs.method == AGC) & ~runs.clip_head]
    means = agc.groupby(["batch_size", "lam"]).acc.mean().reset_index()
    best = {}
    for b, grp in means.groupby("batch_size"):
        grp = grp.sort_values("lam")
        best[int(b)] = float(grp.lam.iloc[int(grp.acc.to_numpy().argmax())])
    return best


def accuracies(runs: pd.DataFrame, method: str, batch_size: int, lam: float | None = None,
               clip_head: bool = False) -> list[float]:
    """Per-seed accuracies (diverged = chance) of one cell of the grid, in seed order."""
    sel = runs[(runs.method == method) & (runs.batch_size == batch_size)
               & (runs.clip_head == clip_head)]
    if lam is not None:
        sel = sel[sel.lam == lam]
    return sel.sort_values("seed").acc.tolist()


def best_lambda_at(runs: pd.DataFrame, batch_size: int) -> float:
    """The best lambda (``best_lambdas``) at one batch size; a ValueError naming the empty cell
    when no NF+AGC run (classifier unclipped) exists there: nothing to judge at that batch."""
    best = best_lambdas(runs)
    if batch_size not in best:
        raise ValueError(f"no {AGC} runs (classifier unclipped) at B={batch_size}: the grid's "
                         f"cell is empty, so there is no best λ to judge")
    return best[batch_size]


def diverged_count(runs: pd.DataFrame, method: str, batch_size: int,
                   lam: float | None = None) -> int:
    sel = runs[(runs.method == method) & (runs.batch_size == batch_size) & ~runs.clip_head]
    if lam is not None:
        sel = sel[sel.lam == lam]
    return int(sel.diverged.sum())


# ----------------------------------------------------------------------- the verdict rules


@dataclass(frozen=True)
class Samples:
    """Per-seed values of one quantity (accuracies with diverged runs at chance, or per-seed
    differences), in seed order."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Samples:
        return cls(tuple(float(v) for v in values))

    @property
    def mean(self) -> float:
        return stats.mean(self.values)

    @property
    def seeds(self) -> list[float]:
        return list(self.values)


@dataclass(frozen=True)
class StabilityJudgement:
    holds: bool | None
    reason: str
    largest_batch: int
    best_lambda: float
    nf: Samples
    agc: Samples  # at best_lambda
    bn: Samples
    nf_diverged: int
    agc_diverged: int


@dataclass(frozen=True)
class BenefitJudgement:
    holds: bool | None
    reason: str
    smallest_batch: int
    largest_batch: int
    benefit_smallest_batch: Samples  # acc(NF+AGC, best λ) − acc(NF), per seed
    benefit_largest_batch: Samples


@dataclass(frozen=True)
class LambdaJudgement:
    holds: bool | None
    reason: str
    smallest_batch: int
    largest_batch: int
    best_lambda_smallest_batch: float
    best_lambda_largest_batch: float
    agc_best_smallest_batch: Samples  # NF+AGC at each batch's best λ
    agc_best_largest_batch: Samples


@dataclass(frozen=True)
class SkipFinalJudgement:
    holds: bool | None
    reason: str
    batch: int
    lam: float
    skipped: Samples  # the classifier left unclipped
    clipped: Samples


@dataclass(frozen=True)
class BNCostJudgement:
    holds: bool | None
    reason: str
    step_ratio: float  # time(BN step) / time(NF step)
    tiny_batch: int
    reference_batch: int
    bn_tiny: Samples
    bn_ref: Samples
    nf_tiny: Samples
    nf_ref: Samples


def judge_stabilizes_large_batch(runs: pd.DataFrame, cfg: Margins) -> StabilityJudgement:
    """At the largest batch:

    (i) NF without AGC is unstable: it diverges in at least half the seeds, or BN beats it
        (one-sided 95% Welch, ``stats.beats``) by a mean of at least ``cfg.clearly_below``;
        refuted when the upper bound of BN − NF is below ``cfg.clearly_below``;
    (ii) NF+AGC at its best lambda diverges in no seed and is within ``cfg.bn_margin`` of BN
        (``stats.within_margin``: established, refuted, or undecided by the seeds);
    (iii) the comparison is informative: BN's mean is at least ``cfg.learned_margin`` above
        chance (at chance, "within a margin of BN" would hold for anything that diverges).
    """
    b = int(runs.batch_size.max())
    lam = best_lambda_at(runs, b)
    nf, agc, bn = accuracies(runs, NF, b), accuracies(runs, AGC, b, lam), accuracies(runs, BN, b)
    nf_div, agc_div = diverged_count(runs, NF, b), diverged_count(runs, AGC, b, lam)
    below = stats.beats(bn, nf)
    unstable = True if nf_div * 2 >= len(nf) else stats.clearly_above(below, cfg.clearly_below)
    close = stats.within_margin(agc, bn, cfg.bn_margin)
    stable = False if agc_div else close.decided
    learned = stats.mean(bn) - cfg.chance >= cfg.learned_margin
    reason = (f"B={b}: (i) NF without AGC {word(unstable, 'unstable', 'not unstable')} "
              f"({nf_div}/{len(nf)} diverged; BN−NF {below}, needs significant and "
              f"≥{cfg.clearly_below:g}; detectable ±{below.detectable:.3f}); (ii) NF+AGC(λ={lam:g}) "
              f"{agc_div}/{len(agc)} diverged, vs BN {close} → "
              f"{word(stable, 'close to BN', 'not within the margin of BN')} (detectable "
              f"±{close.detectable:.3f}); (iii) BN {stats.mean(bn):.4f} vs chance {cfg.chance:.4f} "
              f"→ {'informative' if learned else 'task not learned: uninformative'}")
    return StabilityJudgement(stats.all_of(unstable, stable, learned), reason, b, lam,
                              Samples.of(nf), Samples.of(agc), Samples.of(bn), nf_div, agc_div)


def seed_benefits(runs: pd.DataFrame, batch_size: int, lam: float) -> list[float]:
    """Per seed: acc(NF+AGC at lam) − acc(NF); same seed = same init and batch order."""
    agc, nf = accuracies(runs, AGC, batch_size, lam), accuracies(runs, NF, batch_size)
    if not agc or len(agc) != len(nf):
        raise ValueError(f"per-seed benefit at B={batch_size} needs the same seeds of {AGC} "
                         f"(λ={lam:g}) and {NF}: got {len(agc)} and {len(nf)} runs")
    return [a - n for a, n in zip(agc, nf, strict=True)]


def judge_small_batch_benefit(runs: pd.DataFrame) -> BenefitJudgement:
    """AGC's benefit (best lambda, per seed) at the largest batch beats the one at the smallest
    batch (one-sided 95% Welch): the benefit shrinks as the batch gets smaller. Refuted when
    the upper bound of the gap is below 0."""
    best = best_lambdas(runs)
    small, large = min(best), max(best)
    b_small = seed_benefits(runs, small, best[small])
    b_large = seed_benefits(runs, large, best[large])
    test = stats.beats(b_large, b_small)
    reason = (f"benefit acc(AGC best λ)−acc(NF): {stats.mean(b_small):+.4f} at B={small}, "
              f"{stats.mean(b_large):+.4f} at B={large}; larger−smaller {test} (detectable "
              f"±{test.detectable:.3f}) → "
              + word(test.decided, "smaller at small batch", "larger at small batch",
                      "not shown smaller at small batch"))
    return BenefitJudgement(test.decided, reason, small, large, Samples.of(b_small),
                            Samples.of(b_large))


def _ambiguous_best(runs: pd.DataFrame, batch_size: int) -> bool:
    """More than one lambda shares the best mean accuracy at this batch size."""
    agc = runs[(runs.method == AGC) & ~runs.clip_head & (runs.batch_size == batch_size)]
    means = agc.groupby("lam").acc.mean()
    return int((means == means.max()).sum()) > 1


def judge_lambda_shrinks(runs: pd.DataFrame, cfg: Margins) -> LambdaJudgement:
    """The best lambda (by mean accuracy) at the largest batch is smaller than at the smallest,
    and at the largest batch it beats the smallest batch's best lambda (one-sided 95% Welch).
    Refuted when a larger lambda is established as better at the largest batch; undecided
    otherwise. The best lambdas' NF+AGC means must be ``cfg.learned_margin`` above chance (an
    argmax over chance-level accuracies, or a tie, says nothing)."""
    best = best_lambdas(runs)
    small, large = min(best), max(best)
    lam_s, lam_l = best[small], best[large]
    at_best = {b: Samples.of(accuracies(runs, AGC, b, best[b])) for b in (small, large)}
    accs = {b: a.mean for b, a in at_best.items()}
    learned = all(a - cfg.chance >= cfg.learned_margin for a in accs.values())
    ties = [b for b in (small, large) if _ambiguous_best(runs, b)]
    at_large = accuracies(runs, AGC, large, lam_l)
    if lam_l < lam_s:
        test = stats.beats(at_large, accuracies(runs, AGC, large, lam_s))
        shrinks = test.decided
    else:  # the best λ at the large batch is not smaller: is it clearly better than a smaller?
        smaller = [lam for lam in sorted(cfg.lambdas) if lam < lam_l]
        test = stats.beats(at_large, accuracies(runs, AGC, large, smaller[-1])) if smaller \
            else None
        shrinks = False if test is not None and test.holds else None
    per_batch = ", ".join(f"B={b}: {lam:g}" for b, lam in sorted(best.items()))
    reason = (f"best λ per batch {per_batch} → λ at B={large} "
              f"{'<' if lam_l < lam_s else '≥'} λ at B={small}"
              + (f"; at B={large}: {test} (detectable ±{test.detectable:.3f})" if test else "")
              + "; NF+AGC(best λ) " + ", ".join(f"{a:.4f} at B={b}" for b, a in accs.items())
              + f" vs chance {cfg.chance:.4f}"
              + ("" if learned else " (not learned: the argmax is noise)")
              + (f"; tie for best λ at B={ties}" if ties else ""))
    holds = stats.all_of(shrinks, learned, None if ties else True)
    return LambdaJudgement(holds, reason, small, large, lam_s, lam_l, at_best[small],
                           at_best[large])


def judge_skip_final_layer(runs: pd.DataFrame) -> SkipFinalJudgement:
    """At the largest batch and its best lambda, AGC that skips the classifier beats AGC that
    clips it too (one-sided 95% Welch over the same seeds); refuted when clipping is
    established as better."""
    b = int(runs.batch_size.max())
    lam = best_lambda_at(runs, b)
    skip = accuracies(runs, AGC, b, lam)
    clip = accuracies(runs, AGC, b, lam, clip_head=True)
    test = stats.beats(skip, clip)
    reason = (f"B={b}, λ={lam:g}: classifier skipped {stats.mean(skip):.4f} vs clipped "
              f"{stats.mean(clip):.4f}; skipped−clipped {test} (detectable ±{test.detectable:.3f}) "
              "→ clipping the classifier "
              + word(test.decided, "does worse", "does better", "not shown to do worse"))
    return SkipFinalJudgement(test.decided, reason, b, lam, Samples.of(skip), Samples.of(clip))


def step_time_decision(step_ratio: float, speed_margin: float) -> bool | None:
    """Is NF's step faster than BN's? True when time(BN)/time(NF) exceeds 1 + ``speed_margin``,
    False when it is below 1 − ``speed_margin``, None in between: a ratio inside the zone that
    the same pair moves by between machines and runs cannot say which is faster."""
    if step_ratio > 1.0 + speed_margin:
        return True
    return False if step_ratio < 1.0 - speed_margin else None


def judge_bn_costs(step_ratio: float, tiny: pd.DataFrame, degrade_margin: float,
                   speed_margin: float) -> BNCostJudgement:
    """(a) BN's training step is slower than NF's: time(BN)/time(NF) > 1 + ``speed_margin``
    (``step_time_decision``; below 1 − ``speed_margin`` refutes it); (b) from the larger
    to the tiny batch of ``tiny``, BN degrades (the larger beats the tiny batch, one-sided 95%,
    by a mean of at least ``degrade_margin``) while NF does not (its tiny-batch accuracy is
    within ``degrade_margin`` of the larger batch's, ``stats.within_margin``)."""
    small, ref = int(tiny.batch_size.min()), int(tiny.batch_size.max())
    bn_t, bn_r = accuracies(tiny, BN, small), accuracies(tiny, BN, ref)
    nf_t, nf_r = accuracies(tiny, NF, small), accuracies(tiny, NF, ref)
    bn_drop = stats.beats(bn_r, bn_t)
    bn_degrades = stats.clearly_above(bn_drop, degrade_margin)
    nf_keeps = stats.within_margin(nf_t, nf_r, degrade_margin)
    faster = step_time_decision(step_ratio, speed_margin)
    holds = stats.all_of(faster, bn_degrades, nf_keeps.decided)
    reason = (f"(a) step time BN/NF = {step_ratio:.3f} vs 1±{speed_margin:g} → NF "
              + word(faster, "faster", "slower", "undecided (within the margin)")
              + f"; (b) B={ref}→{small}: BN {stats.mean(bn_r):.4f}→{stats.mean(bn_t):.4f} "
              f"({word(bn_degrades, 'degrades', f'no drop ≥{degrade_margin:g}', 'undecided')}: "
              f"{bn_drop}; detectable ±{bn_drop.detectable:.3f}), NF {stats.mean(nf_r):.4f}→"
              f"{stats.mean(nf_t):.4f} ({word(nf_keeps.decided, 'holds up', 'degrades')}: "
              f"{nf_keeps}; detectable ±{nf_keeps.detectable:.3f})")
    return BNCostJudgement(holds, reason, step_ratio, small, ref, Samples.of(bn_t),
                           Samples.of(bn_r), Samples.of(nf_t), Samples.of(nf_r))

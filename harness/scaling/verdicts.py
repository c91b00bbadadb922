"""The trained scaling claims' verdict rules: pure functions of per-seed accuracies and times.

Each returns a typed judgement: ``holds`` is True (holds), False (refuted) or None (the seeds
cannot tell, reported as INCONCLUSIVE), with a ``reason`` that states the smallest difference
the design could detect; the tests feed the rules numbers that contradict the paper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harness import stats

Accuracies = Mapping[str, Sequence[float]]  # per strategy (or base), per seed


def _require(what: str, values: Mapping, keys: Sequence[str]) -> None:
    """A ValueError naming the strategies (or bases) a rule reads that have no values."""
    missing = [k for k in keys if k not in values or (
        isinstance(values[k], Sequence) and len(values[k]) == 0)]
    if missing:
        raise ValueError(f"{what}: no values for {', '.join(missing)} (that cell has no runs)")


@dataclass(frozen=True)
class DWrJudgement:
    holds: bool | None
    reason: str
    comparable: stats.OneSided  # acc(dWr) − acc(dwr) against −margin
    dWr_beats_w: stats.OneSided | None  # acc(dWr) − acc(w) against 0 (reported, not judged;
    # None when w was not trained)
    inference_ratio: float  # time(dWr) / time(dwr), one forward pass
    epoch_ratio: float  # seconds per epoch, dWr / dwr


# "Learned": dwr's mean more than this above chance (the bar ``Evidence.baseline`` sets): two
# strategies that both sit at chance are "within a margin" of each other and say nothing.
LEARNED_MARGIN = 0.05


def dWr_verdict(acc: Accuracies, times: Mapping[str, float], epoch: Mapping[str, float],
                margin: float, judge_speed: bool, chance: float | None = None,
                dispatch_bound: str = "", dispatch_note: str = "") -> DWrJudgement:
    """dWr's accuracy within ``margin`` of dwr's (one-sided 95% Welch over seeds); on GPUs also
    faster than dwr in inference and per epoch. dWr-vs-w and w-vs-dwr are reported alongside
    where ``acc`` and ``times`` have w (the verdict never reads it).

    True: holds; False: refuted (dWr clearly worse by more than the margin, or slower on a
    GPU); None: the seeds cannot tell either way, or (given ``chance``) dwr did not learn.
    ``dispatch_bound`` names the networks whose timing followed kernel launches: the speed half
    is then not judged, and only the accuracy half decides."""
    _require("accuracies", acc, ("dWr", "dwr"))
    _require("inference times", times, ("dWr", "dwr"))
    _require("epoch times", epoch, ("dWr", "dwr"))
    comparable = stats.within_margin(acc["dWr"], acc["dwr"], margin)
    over_w = stats.beats(acc["dWr"], acc["w"]) if "w" in acc else None
    inference, per_epoch = times["dWr"] / times["dwr"], epoch["dWr"] / epoch["dwr"]
    holds = comparable.decided
    if judge_speed and not dispatch_bound and not (inference < 1 and per_epoch < 1):
        holds = False
    if judge_speed and dispatch_bound and holds:  # the speed half is unknown: cannot hold
        holds = None
    learned = chance is None or stats.mean(acc["dwr"]) - chance > LEARNED_MARGIN
    if not learned:
        holds = None
    word = {True: "within", False: "clearly outside", None: "undecided"}[comparable.decided]
    reason = (f"acc dWr−dwr: {comparable} (margin {margin}; {word}; the design detects "
              f"±{comparable.detectable:.3f}); "
              + (f"dWr beats w: {over_w.holds} ({over_w}); " if over_w is not None else "")
              + f"runtime dWr/dwr: inference {inference:.2f}, epoch {per_epoch:.2f}"
              + (f"; w/dwr inference {times['w'] / times['dwr']:.2f}" if "w" in times else "")
              + ("" if judge_speed else " (speed is GPU-scoped: reported, not judged, on the CPU)")
              + ("" if learned else f"; but dwr did not learn ({stats.mean(acc['dwr']):.4f} vs "
                                    f"chance {chance:g}): nothing to compare")
              + (f"; but the runtime ratios are not judged: the timing of {dispatch_bound} was "
                 f"dispatch-bound ({dispatch_note})" if dispatch_bound else ""))
    return DWrJudgement(holds, reason, comparable, over_w, inference, per_epoch)


@dataclass(frozen=True)
class OrderJudgement:
    holds: bool | None
    reason: str
    better: str  # the base with the higher mean accuracy before scaling
    worse: str
    before: stats.OneSided  # acc(better) − acc(worse), the bases
    after: stats.OneSided  # the same two after scaling


def order_verdict(before: Accuracies, after: Accuracies) -> OrderJudgement:
    """The bases' order must be established (one-sided, over seeds) and hold after scaling.

    None (undecided) when the bases have no established order, or when after scaling neither
    the order nor its reversal is established; False only when it is clearly reversed."""
    _require("accuracies before scaling", before, list(before))
    _require("accuracies after scaling", after, list(before))
    (a, b) = sorted(before, key=lambda m: -stats.summarize(before[m]).mean)
    base_order = stats.beats(before[a], before[b])
    scaled_order = stats.beats(after[a], after[b])
    if not base_order.holds:
        return OrderJudgement(None, f"the bases' order is not established at this budget "
                                    f"({base_order}; detectable ±{base_order.detectable:.3f})",
                              a, b, base_order, scaled_order)
    holds = scaled_order.decided  # False only when the reversal is established
    return OrderJudgement(holds, f"bases: {a} > {b} ({base_order}); after scaling: "
                                 f"{scaled_order} (detectable ±{scaled_order.detectable:.3f})",
                          a, b, base_order, scaled_order)


# ------------------------------------------------------------- the complexity laws (exact)

# RegNetY-4GF scaled ×4 by dWr (Dollár et al. 2021, §4): GFLOPs, M params, M acts as published.
PUBLISHED_WORKED_EXAMPLE = (15.61, 68.1, 26.5)
# The paper's EfficientNet remark (its (d, w, r) factors against the closed forms'): the largest
# gap the check allows, a tenth, against the 0.06 the closed forms give.
EFFICIENTNET_REMARK_MAX_GAP = 0.1


@dataclass(frozen=True)
class LawsJudgement:
    holds: bool
    reason: str
    worked: tuple[float, float, float]  # the worked example, rounded as published


def complexity_laws_verdict(cells: int, violations: Sequence[str], flops: float, params: float,
                            acts: float, efficientnet_gap: float) -> LawsJudgement:
    """Exact: no scaled network breaks a closed-form law, the worked example matches the
    published figures at their precision, and the EfficientNet remark holds."""
    worked = (round(flops / 1e9, 2), round(params / 1e6, 1), round(acts / 1e6, 1))
    holds = (not violations and worked == PUBLISHED_WORKED_EXAMPLE
             and efficientnet_gap < EFFICIENTNET_REMARK_MAX_GAP)
    reason = (f"{cells} scaled networks checked, {len(violations)} law violations; worked "
              f"example {worked}" + (f"; first: {violations[0]}" if violations else ""))
    return LawsJudgement(holds, reason, worked)


# --------------------------------------------------- runtime follows activations (timed)

ACTS_R_MIN = 0.9  # "almost perfectly": Pearson r(time, acts) at least this, in both phases
PHASES = ("inference", "train_step")


@dataclass(frozen=True)
class RuntimeJudgement:
    holds: bool | None
    reason: str
    acts_best: bool  # r(acts) above r(flops) and r(params) in both phases


def acts_predict_verdict(r: Mapping[str, Mapping[str, float]], dispatch_bound: bool,
                         dispatch_note: str = "", r_min: float = ACTS_R_MIN) -> RuntimeJudgement:
    """``r[phase][metric]``: Pearson r of runtime with ``flops``, ``params`` and ``acts`` over
    the population, per phase (``inference``, ``train_step``). Holds when, in both phases,
    r(acts) ≥ ``r_min`` and exceeds both others; None when the timing was dispatch-bound
    (runtimes that follow kernel launches say nothing about the networks)."""
    _require("correlations", r, PHASES)
    holds, best, shown = True, True, []
    for phase in PHASES:
        p = r[phase]
        _require(f"{phase} correlations", p, ("acts", "flops", "params"))
        above = p["acts"] > p["flops"] and p["acts"] > p["params"]
        best &= above
        holds &= p["acts"] >= r_min and above
        shown.append(f"{phase}: r(acts)={p['acts']:.3f}, r(flops)={p['flops']:.3f}, "
                     f"r(params)={p['params']:.3f}")
    reason = "; ".join(shown) + f" (needs r(acts) ≥ {r_min:g} and above both others)"
    if dispatch_bound:
        return RuntimeJudgement(None, f"{reason}; but the timing was dispatch-bound: "
                                      f"{dispatch_note}", bool(best))
    return RuntimeJudgement(bool(holds), reason, bool(best))


# ---------------------------------------------------------- width scaling is fastest (timed)

@dataclass(frozen=True)
class WFastestJudgement:
    holds: bool | None
    reason: str


def w_fastest_verdict(groups: int, fewest_acts: int, fastest_inference: int,
                      fastest_train: int, dwr_most_acts: int,
                      dispatch_bound: bool) -> WFastestJudgement:
    """Counts over equal-flops groups of networks (one per strategy). Holds when w has the
    fewest activations and the lowest inference and train-step time in every group; None when
    the timing was dispatch-bound (runtimes that follow kernel launches cannot rank networks).
    ``dwr_most_acts`` is reported (the closed forms' secondary remark), not judged."""
    if groups < 1:
        raise ValueError("w_fastest_verdict: no equal-flops groups")
    counts = (fewest_acts, fastest_inference, fastest_train, dwr_most_acts)
    if any(not 0 <= c <= groups for c in counts):
        raise ValueError(f"w_fastest_verdict: counts {counts} outside 0..{groups}")
    n = groups
    holds: bool | None = fewest_acts == n and fastest_inference == n and fastest_train == n
    if dispatch_bound:
        holds = None
    return WFastestJudgement(holds, (
        f"w has the fewest acts in {fewest_acts}/{n} equal-flops groups and the lowest runtime "
        f"in {fastest_inference}/{n} (inference), {fastest_train}/{n} (train step); secondary: "
        f"dwr has the most acts among dr/wr/dwr in {dwr_most_acts}/{n} (the closed forms give "
        "dr a ∝ s > dwr s^(5/6))"))

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
                margin: float, judge_speed: bool, chance: float | None = None) -> DWrJudgement:
    """dWr's accuracy within ``margin`` of dwr's (one-sided 95% Welch over seeds); on GPUs also
    faster than dwr in inference and per epoch. dWr-vs-w and w-vs-dwr are reported alongside
    where ``acc`` and ``times`` have w (the verdict never reads it).

    True: holds; False: refuted (dWr clearly worse by more than the margin, or slower on a
    GPU); None: the seeds cannot tell either way, or (given ``chance``) dwr did not learn."""
    _require("accuracies", acc, ("dWr", "dwr"))
    _require("inference times", times, ("dWr", "dwr"))
    _require("epoch times", epoch, ("dWr", "dwr"))
    comparable = stats.within_margin(acc["dWr"], acc["dwr"], margin)
    over_w = stats.beats(acc["dWr"], acc["w"]) if "w" in acc else None
    inference, per_epoch = times["dWr"] / times["dwr"], epoch["dWr"] / epoch["dwr"]
    holds = comparable.decided
    if judge_speed and not (inference < 1 and per_epoch < 1):
        holds = False
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
                                    f"chance {chance:g}): nothing to compare"))
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

"""The trained scaling claims' verdict rules: pure functions of per-seed accuracies and times.

Each returns (holds, reason): True (holds), False (refuted) or None (the seeds cannot tell,
reported as INCONCLUSIVE); the tests feed them numbers that contradict the paper.
"""

from __future__ import annotations

from harness import stats


def dWr_verdict(acc: dict, times: dict, epoch: dict, margin: float, judge_speed: bool):
    """dWr's accuracy within ``margin`` of dwr's (one-sided, over seeds); on GPUs also faster
    than dwr in inference and per epoch. dWr-vs-w and w-vs-dwr are reported alongside.

    True: holds; False: refuted (dWr clearly worse by more than the margin, or slower on a
    GPU); None: the seeds cannot tell either way."""
    comparable = stats.within_margin(acc["dWr"], acc["dwr"], margin)
    over_w = stats.beats(acc["dWr"], acc["w"])
    faster = times["dWr"] < times["dwr"] and epoch["dWr"] < epoch["dwr"]
    holds = comparable.decided
    if judge_speed and not faster:
        holds = False
    return holds, (
        f"acc dWr−dwr: {comparable} (margin {margin}; "
        f"{ {True: 'within', False: 'clearly outside', None: 'undecided'}[comparable.decided]}); "
        f"dWr beats w: {over_w.holds} ({over_w}); "
        f"runtime dWr/dwr: inference {times['dWr'] / times['dwr']:.2f}, epoch "
        f"{epoch['dWr'] / epoch['dwr']:.2f}; w/dwr inference {times['w'] / times['dwr']:.2f}"
        + ("" if judge_speed else " (speed is GPU-scoped: reported, not judged, on the CPU)"))


def order_verdict(before: dict, after: dict):
    """The bases' order must be established (one-sided, over seeds) and hold after scaling.

    None (undecided) when the bases have no established order, or when after scaling neither
    the order nor its reversal is established; False only when it is clearly reversed."""
    (a, b) = sorted(before, key=lambda m: -stats.summarize(before[m]).mean)
    base_order = stats.beats(before[a], before[b])
    if not base_order.holds:
        return None, f"the bases' order is not established at this budget ({base_order})"
    scaled_order = stats.beats(after[a], after[b])
    holds = True if scaled_order.holds else (False if scaled_order.upper < 0 else None)
    return holds, f"bases: {a} > {b} ({base_order}); after scaling: {scaled_order}"

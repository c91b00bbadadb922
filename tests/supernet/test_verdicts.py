"""The NASViT verdict rules on fabricated runs tables, including ones where a claim must fail
and ones the seeds cannot decide."""

from dataclasses import dataclass

import pandas as pd
import pytest

from harness.supernet import verdicts as v


@dataclass(frozen=True)
class M:
    conflict_margin: float = 0.02
    projection_margin: float = 0.02
    learned_margin: float = 0.05
    chance: float = 0.1


def runs(hybrid_share=(0.6, 0.62, 0.61), cnn_share=(0.5, 0.51, 0.49),
         acc=None, learned=0.5):
    """A table: naive hybrid and CNN, projected hybrid, standalone hybrid subnets."""
    acc = acc or {}
    rows = []
    for i, seed in enumerate((0, 1, 2)):
        for net, method, share in ((v.HYBRID, v.NAIVE, hybrid_share[i]),
                                   (v.CNN, v.NAIVE, cnn_share[i]),
                                   (v.HYBRID, v.PROJECTED, hybrid_share[i])):
            for arch in (v.LARGEST, v.SMALLEST, v.MID):
                a = acc.get((net, method, arch), (learned,) * 3)[i]
                rows.append({"net": net, "method": method, "arch": arch, "seed": seed,
                             "acc": a, "tensor_share": share, "step_share": share})
        for arch in (v.SMALLEST, v.MID):
            a = acc.get((v.HYBRID, v.STANDALONE, arch), (learned,) * 3)[i]
            rows.append({"net": v.HYBRID, "method": v.STANDALONE, "arch": arch, "seed": seed,
                         "acc": a, "tensor_share": float("nan"), "step_share": float("nan")})
    return pd.DataFrame(rows)


def test_conflicts_more_holds_refutes_and_stays_undecided():
    assert v.judge_transformer_conflicts_more(runs(), M()).holds is True
    # more, but by less than the margin: refuted (upper bound below 0.02)
    close = runs(hybrid_share=(0.501, 0.502, 0.503), cnn_share=(0.5, 0.501, 0.502))
    assert v.judge_transformer_conflicts_more(close, M()).holds is False
    # the CNN conflicts more: refuted
    assert v.judge_transformer_conflicts_more(runs((0.4, 0.41, 0.42)), M()).holds is False
    # seeds spread too wide: undecided
    wide = runs(hybrid_share=(0.3, 0.9, 0.6))
    assert v.judge_transformer_conflicts_more(wide, M()).holds is None
    # nets at chance: uninformative
    at_chance = v.judge_transformer_conflicts_more(runs(learned=0.11), M())
    assert at_chance.holds is None and "did not learn" in at_chance.reason
    j = v.judge_transformer_conflicts_more(runs(), M())
    assert j.hybrid == (0.6, 0.62, 0.61) and j.cnn == (0.5, 0.51, 0.49)


def _acc(**cells):
    return {k: tuple(x) for k, x in cells.items()}


@pytest.mark.parametrize("proj, expected", [
    ((0.52, 0.53, 0.51), True),  # better
    ((0.50, 0.49, 0.505), True),  # equal, within the margin
    ((0.40, 0.41, 0.39), False),  # clearly worse
    ((0.2, 0.8, 0.5), None),  # too noisy
])
def test_projection_helps(proj, expected):
    acc = {(v.HYBRID, v.NAIVE, a): (0.5, 0.49, 0.51) for a in (v.SMALLEST, v.MID)}
    acc.update({(v.HYBRID, v.PROJECTED, a): proj for a in (v.SMALLEST, v.MID)})
    j = v.judge_projection_helps(runs(acc=acc), M())
    assert j.holds is expected
    assert j.naive["smallest"] == (0.5, 0.49, 0.51) and j.projected["mid"] == tuple(proj)


def test_projection_helps_fails_when_one_subnet_is_worse():
    acc = {(v.HYBRID, v.NAIVE, a): (0.5, 0.49, 0.51) for a in (v.SMALLEST, v.MID)}
    acc[(v.HYBRID, v.PROJECTED, v.SMALLEST)] = (0.55, 0.56, 0.54)
    acc[(v.HYBRID, v.PROJECTED, v.MID)] = (0.40, 0.41, 0.39)
    j = v.judge_projection_helps(runs(acc=acc), M())
    assert j.holds is False and j.better["smallest"] is True


@pytest.mark.parametrize("alone, expected", [
    ((0.6, 0.61, 0.59), True),
    ((0.40, 0.41, 0.39), False),
    ((0.2, 0.8, 0.5), None),
])
def test_naive_underperforms(alone, expected):
    acc = {(v.HYBRID, v.NAIVE, a): (0.5, 0.49, 0.51) for a in (v.SMALLEST, v.MID)}
    acc.update({(v.HYBRID, v.STANDALONE, a): alone for a in (v.SMALLEST, v.MID)})
    assert v.judge_naive_underperforms(runs(acc=acc), M()).holds is expected


def test_naive_underperforms_is_uninformative_when_alone_is_at_chance():
    acc = {(v.HYBRID, v.STANDALONE, a): (0.1, 0.1, 0.1) for a in (v.SMALLEST, v.MID)}
    acc.update({(v.HYBRID, v.NAIVE, a): (0.05, 0.05, 0.06) for a in (v.SMALLEST, v.MID)})
    j = v.judge_naive_underperforms(runs(acc=acc), M())
    assert j.holds is None and "did not learn" in j.reason

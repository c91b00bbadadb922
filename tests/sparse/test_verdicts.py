"""harness.sparse.verdicts: each rule fed fabricated grids, including ones where its claim must
fail or cannot be decided."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.data import DataSpec
from harness.sparse import verdicts as v
from harness.sparse.study import DENSE, RIGL, SET, STATIC, GridConfig
from harness.train import TrainConfig

CFG = GridConfig(model="vgg_tiny", data=DataSpec("synthetic"), resolution=16, sparsity=0.9,
                 batch_size=64, intervals=(64, 16, 4), ref_interval=16,
                 batch_sizes=(32, 64, 128), seeds=(0, 1, 2), train=TrainConfig())

# The paper's pattern in miniature: (method, batch, ΔT) -> per-seed (acc, R_s)
PAPER_LIKE = {
    (DENSE, 64, None): [(0.80, 1.0), (0.81, 1.0), (0.805, 1.0)],
    (STATIC, 64, None): [(0.70, 0.1), (0.71, 0.1), (0.705, 0.1)],
    (SET, 64, 64): [(0.75, 0.3), (0.76, 0.31), (0.755, 0.3)],
    (SET, 64, 16): [(0.80, 0.6), (0.805, 0.61), (0.80, 0.6)],
    (SET, 64, 4): [(0.76, 0.9), (0.765, 0.91), (0.76, 0.9)],
    (RIGL, 64, 16): [(0.79, 0.5), (0.80, 0.51), (0.795, 0.5)],
    (SET, 32, 16): [(0.81, 0.8), (0.815, 0.81), (0.81, 0.8)],
    (SET, 128, 16): [(0.77, 0.4), (0.775, 0.41), (0.77, 0.4)],
}


def runs(grid) -> pd.DataFrame:
    return pd.DataFrame([
        {"method": m, "batch_size": b, "interval": math.nan if dt is None else dt, "seed": s,
         "acc": acc, "rs": rs}
        for (m, b, dt), seeds in grid.items() for s, (acc, rs) in enumerate(seeds)])


def test_the_papers_pattern_reproduces_every_claim():
    r = runs(PAPER_LIKE)
    assert v.judge_reaches_dense(r, CFG).holds
    assert v.judge_static_below_dst(r, CFG).holds
    assert v.judge_accuracy_tracks_rs(r, CFG).holds
    assert v.judge_set_explores_more(r, CFG).holds
    assert v.judge_small_batch_more_exploration(r, CFG).holds


def test_dst_clearly_below_dense_is_not_reproduced():
    r = runs({**PAPER_LIKE, (SET, 64, 16): [(0.70, 0.6), (0.705, 0.6), (0.70, 0.6)]})
    j = v.judge_reaches_dense(r, CFG)
    assert j.holds is False and "clearly below dense" in j.reason and "detectable" in j.reason


def test_nothing_learned_is_never_a_pass():
    flat = {k: [(0.1, rs) for _, rs in seeds] for k, seeds in PAPER_LIKE.items()}
    assert v.judge_reaches_dense(runs(flat), CFG).holds is False


def test_static_as_good_as_dst_is_not_reproduced():
    r = runs({**PAPER_LIKE, (STATIC, 64, None): [(0.80, 0.1), (0.805, 0.1), (0.80, 0.1)]})
    assert v.judge_static_below_dst(r, CFG).holds is False


def test_accuracy_that_keeps_rising_or_a_rate_that_does_not_is_not_reproduced():
    rising = runs({**PAPER_LIKE, (SET, 64, 4): [(0.85, 0.9), (0.855, 0.91), (0.85, 0.9)]})
    assert v.judge_accuracy_tracks_rs(rising, CFG).holds is False
    flat_rate = runs({**PAPER_LIKE, (SET, 64, 4): [(0.76, 0.5), (0.765, 0.5), (0.76, 0.5)]})
    assert v.judge_accuracy_tracks_rs(flat_rate, CFG).holds is False
    noisy = runs({**PAPER_LIKE, (SET, 64, 4): [(0.70, 0.9), (0.85, 0.91), (0.79, 0.9)]})
    j = v.judge_accuracy_tracks_rs(noisy, CFG)
    assert j.holds is None and "detectable" in j.reason
    with pytest.raises(ValueError, match="at least 3 intervals"):
        v.judge_accuracy_tracks_rs(runs(PAPER_LIKE), GridConfig(
            **{**CFG.__dict__, "intervals": (64, 16)}))


def test_rigl_exploring_as_much_is_not_reproduced():
    r = runs({**PAPER_LIKE, (RIGL, 64, 16): [(0.79, 0.7), (0.80, 0.71), (0.795, 0.7)]})
    assert v.judge_set_explores_more(r, CFG).holds is False


def test_a_small_batch_that_does_worse_is_not_reproduced():
    r = runs({**PAPER_LIKE, (SET, 32, 16): [(0.70, 0.8), (0.705, 0.81), (0.70, 0.8)]})
    j = v.judge_small_batch_more_exploration(r, CFG)
    assert j.holds is False and j.smallest == 32 and j.largest == 128

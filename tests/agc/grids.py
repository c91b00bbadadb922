"""Shared AGC test grids: a tiny trainable grid config and fabricated runs tables (the shape of
``study.train_agc_cells``'s output) in which each claim holds or fails on purpose."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd

from harness.agc.study import GridConfig
from harness.agc.verdicts import AGC, BN, NF
from harness.data import DataSpec
from harness.train import TrainConfig

GRID = GridConfig(
    nf_model="nf_resnet_tiny", bn_model="bn_resnet_tiny",
    model_overrides=(("stem_width", 4), ("widths", (4, 8, 8))),
    data=DataSpec("synthetic", train_size=64, test_size=32, seed=2), resolution=8,
    batch_sizes=(8, 16), lambdas=(0.01, 0.1), seeds=(0, 1),
    train=TrainConfig(epochs=1, max_steps=2, warmup_epochs=0, check_every=1))


SMALL, LARGE = 64, 1024
D = None  # a diverged run


def fake_runs(grid: dict[tuple, list[float | None]], chance: float = 0.1) -> pd.DataFrame:
    """Rows like ``train_agc_cells``'s from {(method, batch, lam[, clip_head]): [acc per seed]}."""
    rows = []
    for key, accs in grid.items():
        method, b, lam, *head = key
        for seed, a in enumerate(accs):
            rows.append({"method": method, "batch_size": b,
                         "lam": math.nan if lam is None else lam, "clip_head": bool(head),
                         "seed": seed, "acc": chance if a is None else a, "diverged": a is None,
                         "lr": 0.1 * b / 256, "final_train_loss": math.nan})
    return pd.DataFrame(rows)


# What the paper reports, in miniature: NF collapses at large batch, AGC with a small λ
# rescues it near BN, large λ is best at small batch, clipping the head hurts.
PAPER_LIKE = {
    (NF, SMALL, None): [0.80, 0.81], (AGC, SMALL, 0.01): [0.79, 0.80],
    (AGC, SMALL, 0.16): [0.805, 0.815], (BN, SMALL, None): [0.80, 0.81],
    (NF, LARGE, None): [D, D], (AGC, LARGE, 0.01): [0.78, 0.785],
    (AGC, LARGE, 0.16): [0.60, 0.62], (BN, LARGE, None): [0.79, 0.795],
    (AGC, LARGE, 0.01, True): [0.70, 0.71],
}
CFG = dataclasses.replace(GRID, batch_sizes=(SMALL, LARGE), lambdas=(0.01, 0.16),
                          clearly_below=0.05, bn_margin=0.03, learned_margin=0.05)

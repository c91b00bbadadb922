"""Dynamic sparse training experiments: the invariant suite, the grid of runs, tables, plots.

The claims ``itop.*`` (claims/README.md section 3) are checked by ``claims/test_itop.py``
with the pieces here (the verdict rules are in ``harness.sparse.verdicts``):

* ``invariant_study``: the laws of the method (R_s, exact density, masked momentum, regrown
  weights at zero, ERK) checked while a real model trains a few steps, on the harness's
  ``DynamicSparse`` and on every ``KNOWN_BAD`` variant;
* ``GridConfig`` and ``train_sparse_cells``: dense, static, SET and RigL cells over update intervals and
  batch sizes, one training run per cell and seed, all through ``runs.jobs.run_jobs`` (cached, side
  by side on the CPU), the sparse method as an ``after_step`` hook whose R_s curve is stored
  with the run;
* ``cell_summary``, ``plot_accuracy_vs_rs``, ``plot_rs_curves``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from harness import models
from harness.data import DatasetSplits, DataSpec, synthetic_dataset
from harness.profiles import device_class
from harness.runs.executors import ExecutorSpec
from harness.runs.jobs import TrainJob, run_table
from harness.sparse import verdicts
from harness.sparse.known_bad import KNOWN_BAD
from harness.sparse.masks import DynamicSparse, SparseConfig, shaped_state
from harness.train import TrainConfig, TrainRecord, train

# ------------------------------------------------------------- the laws (itop.rate_definition)


@dataclass(frozen=True)
class InvariantConfig:
    """A real model trained a few steps under each sparse setting, its laws checked."""

    model: str
    model_overrides: tuple[tuple[str, Any], ...]
    resolution: int
    sparsities: tuple[float, ...]
    steps: int  # optimizer steps per run
    update_interval: int  # the frequent schedule; the rare one is 4x longer
    prune_fractions: tuple[float, float]  # a small and a large p0
    batch_size: int = 16
    seed: int = 0

    def dry_run(self) -> InvariantConfig:
        return dataclasses.replace(self, sparsities=self.sparsities[:1])


@dataclass
class InvariantReport:
    runs: int
    violations: list[str]
    rates: dict[str, float]  # final R_s per named setting of the harness's run, for the table
    bad_caught: dict[str, int]  # known-bad name -> its violations (0 = not caught)


def _suite(variant: type[DynamicSparse], cfg: InvariantConfig,
           data: DatasetSplits) -> tuple[list[str], dict[str, float], int]:
    """Train the model under several settings with ``variant`` and check every law."""
    out: list[str] = []
    rates: dict[str, float] = {}
    runs = 0
    for sparsity in cfg.sparsities:
        def run(sparsity: float = sparsity, **kw) -> DynamicSparse:
            return _probed_run(variant, SparseConfig(sparsity, stop_fraction=1.0, **kw), cfg,
                               data, out)

        label = f"S={sparsity:g}"
        runs += 5
        static = run(static=True)
        if abs(static.rate() - (1 - sparsity)) > _rounding(static):
            out.append(f"{label}: a static mask's R_s is {static.rate():.4f}, not 1 − S")
        p_small, p_large = cfg.prune_fractions
        frequent = run(update_interval=cfg.update_interval, prune_fraction=p_large)
        rare = run(update_interval=4 * cfg.update_interval, prune_fraction=p_large)
        small_p = run(update_interval=cfg.update_interval, prune_fraction=p_small)
        rigl = run(update_interval=cfg.update_interval, prune_fraction=p_large,
                   growth="gradient")
        if not frequent.rate() > rare.rate():
            out.append(f"{label}: R_s {frequent.rate():.4f} with ΔT={cfg.update_interval} is not "
                       f"above {rare.rate():.4f} with ΔT={4 * cfg.update_interval}")
        if not frequent.rate() > small_p.rate():
            out.append(f"{label}: R_s {frequent.rate():.4f} with p0={p_large} is not above "
                       f"{small_p.rate():.4f} with p0={p_small}")
        rates.update({f"{label} static": static.rate(), f"{label} SET ΔT": frequent.rate(),
                      f"{label} SET 4ΔT": rare.rate(), f"{label} SET small p0": small_p.rate(),
                      f"{label} RigL ΔT": rigl.rate()})
    shapes = [(64, 32, 3, 3), (128, 64, 3, 3), (10, 128), (4, 3, 3, 3), (512, 512)]
    for density in (0.02, 0.1, 0.5, 0.9):
        dens = variant(SparseConfig(1 - density)).densities_for(shapes)
        total = sum(math.prod(s) for s in shapes)
        got = sum(d * math.prod(s) for d, s in zip(dens, shapes, strict=True))
        if max(dens) > 1 + 1e-12:
            out.append(f"ERK at density {density}: a layer density of {max(dens):.3f} exceeds 1")
        if abs(got - density * total) > 1e-6 * total:
            out.append(f"ERK at density {density}: {got:.0f} weights, target "
                       f"{density * total:.0f}")
    return out, rates, runs


def _probed_run(variant: type[DynamicSparse], sparse: SparseConfig, cfg: InvariantConfig,
                data: DatasetSplits, out: list[str]) -> DynamicSparse:
    """Train a few steps with ``variant(sparse)``; a probe hook checks the laws every step."""
    hook = variant(sparse)
    probe = _LawProbe(hook, sparse.sparsity, out)
    per_epoch = len(data.train[0]) // cfg.batch_size
    recipe = TrainConfig(epochs=cfg.steps / per_epoch, max_steps=cfg.steps,
                         batch_size=cfg.batch_size, lr=0.05, warmup_epochs=0, seed=cfg.seed,
                         check_every=cfg.steps)
    train(functools.partial(models.build, cfg.model, **dict(cfg.model_overrides)),
          data.train, data.test, recipe, after_step=[hook, probe], progress=False)
    return hook


def _rounding(hook: DynamicSparse) -> float:
    """How far whole-weight rounding may move R_s or the density from the target."""
    return len(hook.masks) / sum(m.numel() for m in hook.masks)


class _LawProbe:
    """An ``after_step`` hook placed after the sparse one: checks its laws after every step."""

    def __init__(self, hook: DynamicSparse, sparsity: float, out: list[str]) -> None:
        self.hook, self.sparsity, self.out = hook, sparsity, out
        self.last_rate: float | None = None
        self.updates_seen = 0
        self.grown_before: list[torch.Tensor] = []

    def start(self, run) -> None:
        self.optimizer = run.optimizer

    def _fail(self, msg: str) -> None:
        if len(self.out) < 50 and msg not in self.out:
            self.out.append(msg)

    def __call__(self, state) -> None:
        h = self.hook
        rate = h.rate()
        tag = f"S={self.sparsity:g} {type(h).__name__} step {state.step}"
        if self.last_rate is None and abs(rate - (1 - self.sparsity)) > _rounding(h):
            self._fail(f"{tag}: R_s starts at {rate:.4f}, not 1 − S = {1 - self.sparsity:.4f}")
        if self.last_rate is not None and rate < self.last_rate - 1e-12:
            self._fail(f"{tag}: R_s fell from {self.last_rate:.4f} to {rate:.4f}")
        if rate > 1 + 1e-12:
            self._fail(f"{tag}: R_s = {rate:.4f} exceeds 1")
        self.last_rate = rate
        target = [round(d * m.numel()) for d, m in zip(
            h.densities_for([tuple(m.shape) for m in h.masks]), h.masks, strict=True)]
        for name, m, k, p in zip(h.names, h.masks, target, h._params, strict=True):
            if int(m.sum()) != max(1, min(m.numel(), k)):
                self._fail(f"{tag}: {name} holds {int(m.sum())} active weights, not {k}")
            if bool((p.detach()[~m] != 0).any()):
                self._fail(f"{tag}: {name} has non-zero masked weights after the step")
            # every per-weight state (momentum, Adam's moments), whichever optimizer trains
            if any(bool((s[~m] != 0).any()) for s in shaped_state(self.optimizer, p)):
                self._fail(f"{tag}: {name} keeps momentum (optimizer state) on masked weights")
        if h.updates > self.updates_seen:  # an update happened this step
            self.updates_seen = h.updates
            for name, grown, p in zip(h.names, h._grown, h._params, strict=True):
                if any(bool((s[grown] != 0).any()) for s in shaped_state(self.optimizer, p)):
                    self._fail(f"{tag}: {name}'s regrown weights start with momentum "
                               f"(optimizer state)")
                if bool((p.detach()[grown] != 0).any()):
                    self._fail(f"{tag}: {name}'s regrown weights do not start at zero")


def invariant_study(cfg: InvariantConfig,
                    variant: type[DynamicSparse] = DynamicSparse,
                    known_bad: dict[str, type[DynamicSparse]] | None = None) -> InvariantReport:
    """The laws on ``variant`` (the harness's by default), then on each known-bad variant."""
    known_bad = KNOWN_BAD if known_bad is None else known_bad
    data = synthetic_dataset(resolution=cfg.resolution, train_size=cfg.batch_size * 4,
                             test_size=16, seed=cfg.seed)
    violations, rates, runs = _suite(variant, cfg, data)
    caught = {name: len(_suite(bad, cfg, data)[0]) for name, bad in known_bad.items()}
    return InvariantReport(runs, violations, rates, caught)


# ---------------------------------------------------------------------------- the grid

DENSE, STATIC, SET, RIGL = "dense", "static", "SET", "RigL"  # the methods of the runs table


@dataclass(frozen=True)
class GridConfig:
    """Dense, static, SET and RigL at one sparsity, over update intervals and batch sizes.

    ``intervals`` are ΔT in steps at ``batch_size``; ``batch_sizes`` train SET at
    ``ref_interval`` for the same epochs (a smaller batch takes more steps, so more updates).
    Margins are fixed before any result was seen."""

    model: str
    data: DataSpec
    resolution: int
    sparsity: float
    batch_size: int  # the reference batch of every comparison but the batch-size one
    intervals: tuple[int, ...]  # SET's ΔT, rare to frequent
    ref_interval: int  # the ΔT of RigL, of the batch-size cells and of "DST" in the claims
    batch_sizes: tuple[int, ...]  # small to large; contains batch_size
    seeds: tuple[int, ...]
    train: TrainConfig  # epochs, lr, schedule...; batch_size and seed are set per cell
    distribution: str = "erk"
    prune_fraction: float = 0.5
    stop_fraction: float = 0.75
    model_overrides: tuple[tuple[str, Any], ...] = ()
    cpu_threads: int = 1
    # Verdict margins (``verdicts.py`` says what each means); not part of the cache keys.
    dense_margin: float = verdicts.DENSE_MARGIN
    clearly_below: float = verdicts.CLEARLY_BELOW
    learned_margin: float = verdicts.LEARNED_MARGIN

    def dry_run(self) -> GridConfig:
        """Every cell, a step or two each, on 64 generated 8 px images."""
        return dataclasses.replace(
            self, data=self.data.dry_run(), resolution=8, batch_size=8,
            batch_sizes=tuple(4 * (i + 1) for i in range(len(self.batch_sizes))),
            intervals=(3, 2, 1), ref_interval=1, seeds=self.seeds[:1],
            train=dataclasses.replace(self.train, max_steps=2, amp=None, channels_last=False,
                                      compile=False, eval_batch_size=32))

    @property
    def chance(self) -> float:
        return self.data.chance


@dataclass(frozen=True)
class SparseCell:
    """One training run of the grid."""

    method: str  # dense | static | SET | RigL
    batch_size: int
    seed: int
    interval: int | None = None  # ΔT (SET and RigL)

    def label(self) -> str:
        dt = f" ΔT={self.interval}" if self.interval else ""
        return f"{self.method}{dt} B={self.batch_size} seed {self.seed}"


def grid_cells(cfg: GridConfig) -> list[SparseCell]:
    """Every cell of the grid, each (method, batch, ΔT) once per seed."""
    b = cfg.batch_size
    cells = []
    for s in cfg.seeds:
        cells += [SparseCell(DENSE, b, s), SparseCell(STATIC, b, s)]
        cells += [SparseCell(SET, b, s, dt) for dt in cfg.intervals]
        cells += [SparseCell(RIGL, b, s, cfg.ref_interval)]
        cells += [SparseCell(SET, bb, s, cfg.ref_interval) for bb in cfg.batch_sizes if bb != b]
    return cells


def sparse_config(cfg: GridConfig, cell: SparseCell) -> SparseConfig | None:
    if cell.method == DENSE:
        return None
    return SparseConfig(cfg.sparsity, distribution=cfg.distribution,
                        growth="gradient" if cell.method == RIGL else "random",
                        update_interval=cell.interval or 1, prune_fraction=cfg.prune_fraction,
                        stop_fraction=cfg.stop_fraction, static=cell.method == STATIC)


def cell_job(cfg: GridConfig, cell: SparseCell, data: DatasetSplits, device: str) -> TrainJob:
    recipe = dataclasses.replace(cfg.train, batch_size=cell.batch_size, seed=cell.seed,
                                 cpu_threads=cfg.cpu_threads)
    sparse = sparse_config(cfg, cell)
    key = {"study": "sparse-grid", "model": cfg.model, "overrides": cfg.model_overrides,
           "data": cfg.data, "resolution": cfg.resolution, "train": recipe, "sparse": sparse,
           "device_class": device_class(device)}
    return TrainJob(key, functools.partial(models.build, cfg.model,
                                           **{**dict(cfg.model_overrides),
                                              "resolution": cfg.resolution}),
                    data.train, data.test, recipe, device,
                    after_step=[DynamicSparse(sparse)] if sparse else [],
                    desc=cell.label(), cost=recipe.epochs * len(data.train[0]) / cell.batch_size)


def train_sparse_cells(cfg: GridConfig, cells: Iterable[SparseCell], *, device: str,
              load: Callable[[], DatasetSplits], use_cache: bool = True,
              executor: ExecutorSpec | None = None) -> pd.DataFrame:
    """Run (or reuse) every cell through ``runs.jobs.run_jobs``; one row per cell, in order."""
    data = load()
    return run_table(cells, lambda c: cell_job(cfg, c, data, device),
                     lambda c, r: _row(cfg, c, r), executor=executor, use_cache=use_cache)


def _row(cfg: GridConfig, cell: SparseCell, rec: TrainRecord) -> dict[str, Any]:
    sparse = rec.extra.get("sparse", {})
    acc = rec.test_acc if math.isfinite(rec.test_acc) and not rec.diverged else cfg.chance
    return {"method": cell.method, "batch_size": cell.batch_size,
            "interval": math.nan if cell.interval is None else cell.interval,
            "seed": cell.seed, "acc": acc, "diverged": rec.diverged,
            "rs": sparse.get("rs", 1.0), "reliable": sparse.get("reliable", math.nan),
            "updates": sparse.get("updates", 0), "density": sparse.get("density", 1.0),
            "steps": rec.steps, "rs_curve": sparse.get("rs_curve", [])}


def cell_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread of accuracy and R_s per (method, batch, ΔT)."""
    g = runs.groupby(["method", "batch_size", "interval"], dropna=False, sort=False)
    return g.agg(acc_mean=("acc", "mean"), acc_std=("acc", "std"), rs_mean=("rs", "mean"),
                 rs_std=("rs", "std"), reliable=("reliable", "mean"),
                 updates=("updates", "mean"), seeds=("seed", "count")).reset_index()


def plot_accuracy_vs_rs(runs: pd.DataFrame, chance: float):
    """Accuracy against R_s, one point per run, one marker per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, grp in runs.groupby("method", sort=False):
        ax.scatter(grp.rs, grp.acc, label=method, alpha=0.8)
    ax.axhline(chance, color="grey", lw=0.8, ls=":", label="chance")
    # matplotlib leaves out a point with a non-finite coordinate without a word: say so
    finite = ((pd.to_numeric(runs.rs, errors="coerce").abs() < math.inf)
              & (pd.to_numeric(runs.acc, errors="coerce").abs() < math.inf))
    unplotted = runs[~finite]
    if len(unplotted):
        ax.text(0.01, 0.01, f"not drawn (NaN R_s or accuracy): {len(unplotted)} run(s) of "
                + ", ".join(sorted(set(unplotted.method.astype(str)))),
                transform=ax.transAxes, fontsize=6, va="bottom")
    ax.set_xlabel("ITOP rate R_s (weights ever active / weights)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_rs_curves(runs: pd.DataFrame):
    """R_s against training step, one line per sparse cell (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    first = runs[(runs.method != DENSE) & (runs.seed == runs.seed.min())]
    for row in first.itertuples():
        if row.rs_curve:
            steps, rates = zip(*row.rs_curve)
            dt = "" if math.isnan(row.interval) else f" ΔT={int(row.interval)}"
            ax.step(steps, rates, where="post", label=f"{row.method}{dt} B={row.batch_size}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("R_s")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:  # e.g. every sparse run diverged before R_s was first logged
        ax.text(0.5, 0.5, "no R_s curves: no sparse run logged one", transform=ax.transAxes,
                ha="center", va="center")
    fig.tight_layout()
    return fig

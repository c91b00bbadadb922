"""Supernet experiments: the projection-law suite, the grid of runs, tables and plots.

The claims ``nasvit.*`` (claims/README.md section 5) are checked by ``claims/test_nasvit.py``
with the pieces here (the verdict rules are in ``harness.supernet.verdicts``):

* ``rule_study``: the projection's laws on seeded random gradient pairs (strong conflicts,
  agreement, zero and orthogonal g₂ included) and on the per-tensor (g₁, g₂) pairs of a real
  supernet's sandwich steps, for the harness's rule and every ``KNOWN_BAD`` one;
* ``GridConfig`` and ``train_supernet_cells``: naive sandwich training of a CNN and a hybrid supernet,
  conflict-aware (projected) training of the hybrid, and the hybrid's smallest and mid-size
  subnets trained alone, one run per cell and seed, all through ``runs.jobs.run_jobs`` (cached,
  side by side on the CPU); the sandwich is the runs' ``step_fn``, its cosines stored with the
  run, its trained weights kept so that subnets are evaluated afterwards (extracted, BN
  statistics re-estimated on training images);
* ``plot_cosine``: cos(g₁, g₂) over training for both supernets.
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
from torch import Tensor

from harness import models
from harness.data import DatasetSplits, DataSpec, synthetic_dataset
from harness.models.supernet import MODEL_CFGS, Arch, build_subnet, extract, middle, sample
from harness.profiles import device_class
from harness.runs.executors import ExecutorSpec
from harness.runs.jobs import TrainJob, run_jobs, trained_weights
from harness.supernet import verdicts
from harness.supernet.known_bad import KNOWN_BAD
from harness.supernet.sandwich import (
    ProjectionRule,
    Sandwich,
    SandwichConfig,
    project_conflict_,
    recalibrate_bn,
    summarize_conflicts,
)
from harness.supernet.verdicts import (  # noqa: F401  (values: re-exported for the claims)
    CNN,
    HYBRID,
    LARGEST,
    MID,
    NAIVE,
    PROJECTED,
    SMALLEST,
    STANDALONE,
    values,
)
from harness.train import TrainConfig, TrainRecord, evaluate, train

# ----------------------------------------------------------- the laws (nasvit.projection_rule)


@dataclass(frozen=True)
class RuleConfig:
    """Random gradient pairs and a real supernet's sandwich gradients, each law checked."""

    model: str  # a registered supernet: its sandwich steps give the real pairs
    resolution: int
    real_steps: int  # sandwich steps whose per-tensor (g₁, g₂) pairs are checked
    random_pairs: int
    batch_size: int = 32
    seed: int = 0

    def dry_run(self) -> RuleConfig:
        return dataclasses.replace(self, real_steps=1, random_pairs=24, resolution=8,
                                   batch_size=8)


@dataclass
class RuleReport:
    pairs: int  # gradient pairs checked
    conflicts: int  # of which ⟨g₁, g₂⟩ < 0
    violations: list[str]
    bad_caught: dict[str, int]  # known-bad name -> its violations (0 = not caught)


# Relative tolerance of the float32 projection: ⟨g₁', g₂⟩ is zero up to rounding, ~1e-7 of
# ‖g₁‖‖g₂‖ per element summed; a wrong rule is off by |⟨g₁, g₂⟩|, orders of magnitude more.
ORTHOGONAL_TOL = 1e-4


def law_violations(rule: ProjectionRule, pairs: Iterable[tuple[str, Tensor, Tensor]]
                   ) -> tuple[list[str], int, int]:
    """(violations, pairs, conflicts) of ``rule`` on each (name, g₁, g₂): g₂ left intact;
    no conflict → g₁ unchanged, so the update is exactly g₁ + g₂; conflict → the projected g₁
    is orthogonal to g₂ and the update has a non-negative inner product with g₂."""
    out: list[str] = []
    n = conflicts = 0
    for name, g1, g2 in pairs:
        n += 1
        a, b = g1.clone(), g2.clone()
        rule(a, b)
        update = (a + b).double().flatten()
        g1d, g2d = g1.double().flatten(), g2.double().flatten()
        dot = float(g1d @ g2d)
        scale = float(g1d.norm() * g2d.norm())
        if not torch.equal(b, g2):
            out.append(f"{name}: g₂ was changed")
        if dot >= 0:
            if not torch.equal(a + b, g1 + g2):
                out.append(f"{name}: no conflict (⟨g₁,g₂⟩={dot:.3g}) but the update is not "
                           f"g₁ + g₂")
            continue
        conflicts += 1
        residual = float(a.double().flatten() @ g2d)
        # float32 holds g₁' only to its grid: at least the smallest subnormal step per element,
        # whence up to Σ|g₂ᵢ|·2⁻¹⁴⁹ of residual (only felt for gradients near 1e-38).
        if abs(residual) > ORTHOGONAL_TOL * scale + float(g2d.abs().sum()) * 2.0**-149:
            out.append(f"{name}: projected g₁ not orthogonal to g₂ (⟨g₁',g₂⟩={residual:.3g}, "
                       f"‖g₁‖‖g₂‖={scale:.3g})")
        inner = float(update @ g2d)
        if inner < -ORTHOGONAL_TOL * scale:
            out.append(f"{name}: ⟨update, g₂⟩={inner:.3g} < 0 after projection")
    return out, n, conflicts


def random_pairs(count: int, seed: int) -> list[tuple[str, Tensor, Tensor]]:
    """Seeded float32 pairs of assorted shapes: independent draws, strong conflicts
    (g₂ ≈ −c·g₁), agreement (g₂ ≈ c·g₁), g₂ = 0, and exactly orthogonal pairs."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        shape = [(7,), (3, 5), (4, 3, 3, 3), (64,), (16, 8)][(i // 5) % 5]
        g1 = torch.randn(shape, generator=g) * 10.0 ** int(torch.randint(-3, 3, (), generator=g))
        noise = torch.randn(shape, generator=g)
        kind = i % 5
        if kind == 0:
            g2 = noise
        elif kind == 1:
            g2 = -0.7 * g1 + 0.1 * noise * g1.abs().mean()
        elif kind == 2:
            g2 = 0.5 * g1 + noise * g1.abs().mean()
        elif kind == 3:
            g2 = torch.zeros(shape)
        else:
            g2 = torch.zeros(shape)
            flat = g2.view(-1)
            flat[0] = 1.0  # g₁ with its first entry zeroed: exactly orthogonal
            g1 = g1.clone()
            g1.view(-1)[0] = 0.0
        out.append((f"random {i} {tuple(shape)}", g1.float(), g2.float()))
    return out


class _Capture:
    """A projection rule that keeps copies of every pair it is given, then projects."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, Tensor, Tensor]] = []

    def __call__(self, g1: Tensor, g2: Tensor) -> Tensor:
        self.pairs.append((f"real pair {len(self.pairs)} {tuple(g1.shape)}", g1.clone(),
                           g2.clone()))
        return project_conflict_(g1, g2)


def real_pairs(cfg: RuleConfig) -> list[tuple[str, Tensor, Tensor]]:
    """The per-tensor (g₁, g₂) pairs of ``cfg.real_steps`` sandwich steps of a real supernet."""
    data = synthetic_dataset(resolution=cfg.resolution, train_size=cfg.batch_size * 4,
                             test_size=8, seed=cfg.seed, difficulty="medium")
    capture = _Capture()
    per_epoch = len(data.train[0]) // cfg.batch_size
    recipe = TrainConfig(epochs=cfg.real_steps / per_epoch, max_steps=cfg.real_steps,
                         batch_size=cfg.batch_size, lr=0.05, warmup_epochs=0, seed=cfg.seed,
                         check_every=cfg.real_steps)
    train(functools.partial(models.build, cfg.model, resolution=cfg.resolution), data.train,
          data.test, recipe, step_fn=Sandwich(SandwichConfig(project=True), rule=capture),
          progress=False)
    return capture.pairs


def rule_study(cfg: RuleConfig, rule: ProjectionRule = project_conflict_,
               known_bad: dict[str, ProjectionRule] | None = None) -> RuleReport:
    """The laws on ``rule`` (the harness's by default), then on each known-bad rule."""
    known_bad = KNOWN_BAD if known_bad is None else known_bad
    pairs = random_pairs(cfg.random_pairs, cfg.seed) + real_pairs(cfg)
    violations, n, conflicts = law_violations(rule, pairs)
    caught = {name: len(law_violations(bad, pairs)[0]) for name, bad in known_bad.items()}
    return RuleReport(n, conflicts, violations, caught)


# ---------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class GridConfig:
    """Naive sandwich training of both supernets, projected training of the hybrid, and the
    hybrid's smallest and mid-size subnets trained alone with the same recipe (same epochs,
    batch and so optimizer steps as a supernet run). Margins fixed before any result was
    seen; not part of the cells' cache keys."""

    cnn: str  # registered supernets
    hybrid: str
    data: DataSpec
    resolution: int
    seeds: tuple[int, ...]
    train: TrainConfig  # batch_size and seed set per cell
    n_random: int = 2
    log_every: int = 5
    calib_batches: int = 8  # BN re-estimation of an evaluated subnet, in training batches
    cpu_threads: int = 1
    # Verdict margins (``verdicts.py`` says what each means).
    conflict_margin: float = verdicts.CONFLICT_MARGIN
    projection_margin: float = verdicts.PROJECTION_MARGIN
    learned_margin: float = verdicts.LEARNED_MARGIN

    def dry_run(self) -> GridConfig:
        """Every cell, two steps each, on 64 generated 8 px images."""
        return dataclasses.replace(
            self, data=self.data.dry_run(), resolution=8, seeds=self.seeds[:1], log_every=1,
            calib_batches=1,
            train=dataclasses.replace(self.train, batch_size=8, max_steps=2, amp=None,
                                      channels_last=False, compile=False, eval_batch_size=32))

    @property
    def chance(self) -> float:
        return self.data.chance


@dataclass(frozen=True)
class SupernetCell:
    net: str  # cnn | hybrid
    method: str  # naive | projected | standalone
    seed: int
    arch: str | None = None  # standalone: smallest | mid

    def label(self) -> str:
        return f"{self.net} {self.method}{' ' + self.arch if self.arch else ''} seed {self.seed}"


def grid_cells(cfg: GridConfig) -> list[SupernetCell]:
    cells = []
    for s in cfg.seeds:
        cells += [SupernetCell(HYBRID, NAIVE, s), SupernetCell(HYBRID, PROJECTED, s),
                  SupernetCell(CNN, NAIVE, s)]
        cells += [SupernetCell(HYBRID, STANDALONE, s, SMALLEST),
                  SupernetCell(HYBRID, STANDALONE, s, MID)]
    return cells


def named_arch(cfg: GridConfig, net: str, which: str) -> Arch:
    space = dataclasses.replace(MODEL_CFGS[_model(cfg, net)],
                                resolution=cfg.resolution)
    return middle(space) if which == MID else sample(space, which)


def _model(cfg: GridConfig, net: str) -> str:
    return {CNN: cfg.cnn, HYBRID: cfg.hybrid}[net]


def cell_job(cfg: GridConfig, cell: SupernetCell, data: DatasetSplits, device: str) -> TrainJob:
    recipe = dataclasses.replace(cfg.train, seed=cell.seed, cpu_threads=cfg.cpu_threads)
    name = _model(cfg, cell.net)
    key = {"study": "supernet-grid", "model": name, "method": cell.method, "data": cfg.data,
           "resolution": cfg.resolution, "train": recipe, "device_class": device_class(device)}
    steps = recipe.total_steps(len(data.train[0]))
    if cell.method == STANDALONE:
        arch = named_arch(cfg, cell.net, cell.arch)
        key["arch"] = arch
        return TrainJob(key, functools.partial(build_subnet, name, arch,
                                               resolution=cfg.resolution),
                        data.train, data.test, recipe, device, desc=cell.label(), cost=steps)
    sandwich = SandwichConfig(n_random=cfg.n_random, project=cell.method == PROJECTED,
                              log_every=cfg.log_every)
    key["sandwich"] = sandwich
    return TrainJob(key, functools.partial(models.build, name, resolution=cfg.resolution),
                    data.train, data.test, recipe, device, desc=cell.label(),
                    cost=steps * (3 + cfg.n_random), keep_weights=True,
                    step_fn=Sandwich(sandwich))


def evaluate_subnet(cfg: GridConfig, net: str, weights: dict[str, Tensor], which: str,
                    data: DatasetSplits, device: str) -> float:
    """Test accuracy of subnet ``which`` inherited from trained supernet ``weights``: extracted,
    its BN statistics re-estimated on the first ``calib_batches`` training batches."""
    supernet = models.build(_model(cfg, net), resolution=cfg.resolution)
    supernet.load_state_dict(weights)
    sub = extract(supernet, named_arch(cfg, net, which)).to(device)
    images = calibration_images(data.train[0], cfg.train.batch_size * cfg.calib_batches, device)
    recalibrate_bn(sub, images, cfg.train.batch_size, cfg.calib_batches)
    acc, _ = evaluate(sub, data.test, device, cfg.train)
    return acc


@dataclass
class _DeviceCopy:
    source: Any  # weakref.ref to the images copied
    n: int
    device: str
    copy: Tensor


_CALIBRATION: list[_DeviceCopy] = []  # one slot: the copy the last evaluations shared


def calibration_images(images: Tensor, n: int, device: str) -> Tensor:
    """The first ``n`` of ``images`` (all that ``recalibrate_bn`` reads) on ``device``, copied
    once and reused while the same images, count and device are asked for: a grid's subnet
    evaluations (3 per sandwich run) share one copy instead of moving the training set each
    time. One slot, held for as long as ``images`` lives. The values are those of
    ``images[:n].to(device)``; on the CPU that is a view, as before."""
    import weakref

    slot = _CALIBRATION[0] if _CALIBRATION else None
    if slot is not None and slot.source() is images and slot.n == n and slot.device == device:
        return slot.copy
    copy = _to_device(images[:n], device)
    _CALIBRATION[:] = [_DeviceCopy(weakref.ref(images), n, device, copy)]
    return copy


def _to_device(t: Tensor, device: str) -> Tensor:
    return t.to(device)


def train_supernet_cells(cfg: GridConfig, cells: Iterable[SupernetCell], *, device: str,
              load: Callable[[], DatasetSplits], use_cache: bool = True,
              executor: ExecutorSpec | None = None) -> pd.DataFrame:
    """Run (or reuse) every cell through ``runs.jobs.run_jobs``, then evaluate the subnets of each
    sandwich run. One row per (run, evaluated subnet): net, method, seed, arch, acc (a
    diverged run at chance), and the run's conflict summary (sandwich runs)."""
    data = load()
    cells = list(cells)
    records = run_jobs([cell_job(cfg, c, data, device) for c in cells], executor=executor,
                       use_cache=use_cache)
    rows: list[dict[str, Any]] = []
    for cell, rec in zip(cells, records, strict=True):
        rows += _rows(cfg, cell, rec, data, device)
    return pd.DataFrame(rows)


def _rows(cfg: GridConfig, cell: SupernetCell, rec: TrainRecord, data: DatasetSplits,
          device: str) -> list[dict[str, Any]]:
    base = {"net": cell.net, "method": cell.method, "seed": cell.seed, "diverged": rec.diverged,
            "steps": rec.steps}
    ok = not rec.diverged and math.isfinite(rec.test_acc)
    if cell.method == STANDALONE:
        return [{**base, "arch": cell.arch, "acc": rec.test_acc if ok else cfg.chance,
                 "tensor_share": math.nan, "step_share": math.nan, "mean_cos": math.nan,
                 "cos_steps": [], "cos": []}]
    conflict = rec.extra["conflict"]
    summary = summarize_conflicts(conflict)
    weights = trained_weights(rec) if ok else None
    out = []
    for which in (LARGEST, SMALLEST, MID):
        acc = evaluate_subnet(cfg, cell.net, weights, which, data, device) if ok else cfg.chance
        out.append({**base, "arch": which, "acc": acc, "tensor_share": summary.tensor_share,
                    "step_share": summary.step_share, "mean_cos": summary.mean_cos,
                    "cos_steps": conflict["steps"], "cos": conflict["cos"]})
    return out


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    g = runs.groupby(["net", "method", "arch"], sort=False)
    return g.agg(acc_mean=("acc", "mean"), acc_std=("acc", "std"),
                 tensor_share=("tensor_share", "mean"), step_share=("step_share", "mean"),
                 mean_cos=("mean_cos", "mean"), seeds=("seed", "count")).reset_index()


def plot_cosine(runs: pd.DataFrame):
    """cos(g₁, g₂) (all tensors) over training, naive sandwich, one line per supernet and
    seed; the dotted line is zero (below it the gradients conflict)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {CNN: "tab:blue", HYBRID: "tab:red"}
    naive = runs[(runs.method == NAIVE) & (runs.arch == LARGEST)]
    for row in naive.itertuples():
        cos = [math.nan if c is None else c for c in row.cos]
        ax.plot(row.cos_steps, cos, color=colours[row.net], alpha=0.7, lw=1,
                label=f"{row.net} (seed {row.seed})")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cos(g₁ supernet, g₂ subnets)")
    if len(naive):
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no naive sandwich runs", transform=ax.transAxes, ha="center",
                va="center")
    fig.tight_layout()
    return fig


def subnet_evaluation_cost(cfg: GridConfig):
    """The GPU time of every subnet evaluation the grid's rows need (``harness.costs``): per
    supernet run and subnet, BN re-estimation on ``calib_batches`` training batches and the
    test set, priced at the supernet's own (largest) forward."""
    from harness import costs
    runs = [c for c in grid_cells(cfg) if c.method != STANDALONE]
    seconds = 0.0
    for net in {c.net for c in runs}:
        macs, ops = costs.forward_work(functools.partial(
            models.build, _model(cfg, net), resolution=cfg.resolution), cfg.resolution)
        images = (cfg.data.test_size or 10_000) + cfg.calib_batches * cfg.train.batch_size
        count = 3 * sum(c.net == net for c in runs)  # largest, smallest, mid
        seconds += costs.evaluate_phase("", macs, images, ops, cfg.train.batch_size,
                                        passes=count).seconds
    return costs.Phase("evaluate", f"{3 * len(runs)} subnets extracted, BN re-estimated and "
                       "evaluated", seconds)

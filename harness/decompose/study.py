"""Decomposition experiments on trained networks: per-layer damage, selective against
decompose-all, pruning before decomposing. The claims ``decomp.*`` and ``deploy.*``
(claims/README.md section 4) are checked by ``claims/test_decomp.py`` and
``claims/test_deploy.py`` with these pieces; the verdict rules are in
``harness.decompose.verdicts``.

The networks train once per seed through ``runs.jobs.run_jobs`` with ``keep_weights``, so the
cache holds their weights too; nothing here fine-tunes (results are "not fine-tuned").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from harness import models
from harness.data import DatasetSplits, DataSpec
from harness.decompose import verdicts
from harness.decompose.tucker import (
    DecomposeSettings,
    decomposable,
    decompose_model,
    pointwise,
)
from harness.profiles import device_class
from harness.runs.executors import ExecutorSpec
from harness.runs.jobs import TrainJob, run_jobs, trained_weights
from harness.train import TrainConfig, evaluate


@dataclass(frozen=True)
class DecompStudyConfig:
    model: str
    model_overrides: tuple[tuple[str, Any], ...]
    data: DataSpec
    resolution: int
    train: TrainConfig
    seeds: tuple[int, ...]
    threshold: float  # the random-tensor error under which a layer is decomposed
    rank_rule: str = "vbmf"
    energies: tuple[float, ...] = (0.5, 0.7, 0.9)  # energy ranks for the damage points
    cpu_threads: int = 1
    # Verdict margins (``verdicts.py`` says what each means).
    damage_rho: float = verdicts.DAMAGE_RHO
    selective_margin: float = verdicts.SELECTIVE_MARGIN
    all_drop_min: float = verdicts.ALL_DROP_MIN
    min_removed: float = verdicts.MIN_REMOVED
    pruning_gain: float = verdicts.PRUNING_GAIN
    learned_margin: float = verdicts.LEARNED_MARGIN
    max_layers: int | None = None  # study only the first decomposable convs (dry runs)

    def dry_run(self) -> DecompStudyConfig:
        """One seed, two steps, 8 px; the study on the first two convs (decomposing a full
        ResNet's 512-channel convs on the CPU would take minutes)."""
        return dataclasses.replace(
            self, data=self.data.dry_run(), resolution=8, seeds=self.seeds[:1],
            energies=self.energies[:2], max_layers=2,
            train=dataclasses.replace(self.train, max_steps=2, batch_size=8, amp=None,
                                      channels_last=False, compile=False))

    @property
    def chance(self) -> float:
        return self.data.chance


def _build(cfg: DecompStudyConfig) -> nn.Module:
    return models.build(cfg.model, **{**dict(cfg.model_overrides), "resolution": cfg.resolution})


def trained_models(cfg: DecompStudyConfig, data: DatasetSplits, *, device: str,
                   use_cache: bool = True,
                   executor: ExecutorSpec | None = None) -> dict[int, nn.Module]:
    """The network trained once per seed (weights cached with the run), in eval mode."""
    out = {}
    for seed, rec in zip(cfg.seeds, run_jobs(base_jobs(cfg, data, device), executor=executor,
                                             use_cache=use_cache), strict=True):
        model = _build(cfg)
        model.load_state_dict(trained_weights(rec))
        out[seed] = model.to(device).eval()
    return out


def base_jobs(cfg: DecompStudyConfig, data: DatasetSplits, device: str) -> list[TrainJob]:
    """One training run of the network per seed, its weights kept with the record."""
    jobs = []
    for seed in cfg.seeds:
        recipe = dataclasses.replace(cfg.train, seed=seed, cpu_threads=cfg.cpu_threads)
        key = {"study": "decompose-base", "model": cfg.model, "overrides": cfg.model_overrides,
               "data": cfg.data, "resolution": cfg.resolution, "train": recipe,
               "device_class": device_class(device)}
        jobs.append(TrainJob(key, functools.partial(_build, cfg), data.train, data.test, recipe,
                             device, desc=f"{cfg.model} seed {seed}", keep_weights=True))
    return jobs


def accuracy(model: nn.Module, data: DatasetSplits, cfg: DecompStudyConfig, device: str) -> float:
    return evaluate(model, data.test, device, cfg.train)[0]


def decomposable_layers(model: nn.Module, limit: int | None = None) -> list[str]:
    """The convs a model walk decomposes (k×k, not grouped), in order; the first ``limit``."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
             and decomposable(m) is None and pointwise(m) is None]
    return names[:limit] if limit is not None else names


def studied_layers(model: nn.Module, cfg: DecompStudyConfig):
    """``decompose_model``'s ``only``: every conv (None), or the first ``cfg.max_layers``."""
    if cfg.max_layers is None:
        return None
    return set(decomposable_layers(model, cfg.max_layers)).__contains__


def damage_table(model: nn.Module, data: DatasetSplits, cfg: DecompStudyConfig,
                 device: str) -> pd.DataFrame:
    """One row per (decomposable conv, energy rank): that layer alone decomposed, its
    random-tensor error and the accuracy it costs the network."""
    base = accuracy(model, data, cfg, device)
    names = decomposable_layers(model, cfg.max_layers)
    rows = []
    for name in names:
        for keep in cfg.energies:
            settings = DecomposeSettings(threshold=cfg.threshold, rank_rule="energy", keep=keep)
            new, report = decompose_model(model, settings, cfg.resolution,
                                          only=lambda n, name=name: n == name, force=True)
            row = report.set_index("layer").loc[name]
            rows.append(dict(layer=name, keep=keep, error=row.error,
                             acc_drop=base - accuracy(new.to(device), data, cfg, device),
                             params_removed=row.params_before - row.params_after))
    return pd.DataFrame(rows)


def compare_strategies(model: nn.Module, data: DatasetSplits, cfg: DecompStudyConfig,
                       device: str) -> pd.DataFrame:
    """Original, decompose-all, selective (threshold) and prune + selective: accuracy, its drop
    and the share of conv parameters removed."""
    settings = DecomposeSettings(threshold=cfg.threshold, rank_rule=cfg.rank_rule)
    base = accuracy(model, data, cfg, device)
    conv_params = sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d)
                      for p in m.parameters())
    studied = studied_layers(model, cfg)
    rows = [dict(strategy="original", acc=base, acc_drop=0.0, removed_share=0.0, layers=0)]
    memo: dict = {}  # the three strategies decompose the same unpruned layers: once each
    for strategy, kw in (("all", dict(force=True)), ("selective", {}),
                         ("prune+selective", dict(prune=True))):
        new, report = decompose_model(model, settings, cfg.resolution, only=studied, memo=memo,
                                      **kw)
        acc = accuracy(new.to(device), data, cfg, device)
        removed = int(report.params_before.sum() - report.params_after.sum())
        rows.append(dict(strategy=strategy, acc=acc, acc_drop=base - acc,
                         removed_share=removed / conv_params,
                         layers=int(report.decomposed.sum())))
    return pd.DataFrame(rows)


def decomposition_tables(models_by_seed: dict[int, nn.Module], data: DatasetSplits,
                         cfg: DecompStudyConfig, device: str,
                         progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(damage, strategies) over every seed's network, each row tagged with its seed."""
    from harness.progress import progress_bar

    damage, strategies = [], []
    with progress_bar(len(models_by_seed), "decomposing trained networks", progress,
                      unit="net") as bar:
        for seed, model in models_by_seed.items():
            damage.append(damage_table(model, data, cfg, device).assign(seed=seed))
            strategies.append(compare_strategies(model, data, cfg, device).assign(seed=seed))
            bar.update(1)
    return pd.concat(damage, ignore_index=True), pd.concat(strategies, ignore_index=True)


# ------------------------------------------------------------------------------ deployment


@dataclass(frozen=True)
class DeployConfig:
    """The deployment timings: ratios measured in one run with ``harness.timing``."""

    batch: int  # inference batch of the trained network
    sparsities: tuple[float, ...]
    channels: tuple[int, ...]  # depthwise grid
    sizes: tuple[int, ...]
    grid_batch: int
    rounds: int = 3  # interleaved pairs per ratio
    min_run_time: float = 0.2
    cpu_threads: int = 1
    amp: str | None = None  # the precision the GPU profile times in ("bf16"...; CUDA only)
    channels_last: bool = False  # NHWC models and inputs (CUDA only)
    # Verdict margins (``verdicts.py`` says what each means).
    time_unchanged: float = verdicts.TIME_UNCHANGED
    size_unchanged: float = verdicts.SIZE_UNCHANGED
    gzip_shrinks: float = verdicts.GZIP_SHRINKS
    flops_far_fewer: float = verdicts.FLOPS_FAR_FEWER
    speedup_real: float = verdicts.SPEEDUP_REAL
    much_smaller: float = verdicts.MUCH_SMALLER

    def dry_run(self) -> DeployConfig:
        return dataclasses.replace(self, batch=2, grid_batch=2, channels=self.channels[:2],
                                   sizes=self.sizes[:1], sparsities=self.sparsities[-1:],
                                   rounds=1, min_run_time=0.01)

    def setup(self, device: str):
        """How the deployment timings run on ``device``: in ``amp`` (the copy cast once, as
        deployed) and ``channels_last`` on CUDA; fp32 NCHW on the CPU, whatever is set."""
        from harness.timing import TimingSetup
        from harness.train import autocast_dtype

        return TimingSetup(device=device, amp_dtype=autocast_dtype(self.amp, device),
                           channels_last=self.channels_last and device == "cuda",
                           min_run_time=self.min_run_time, cpu_threads=self.cpu_threads)


def _finish_scatter(ax, frame: pd.DataFrame, x: str, y: str, **legend) -> None:
    """The legend, and a note for what a scatter could not draw: rows with a non-finite
    coordinate (matplotlib drops them without a word), or no rows at all."""
    finite = (pd.to_numeric(frame[x], errors="coerce").abs() < math.inf) \
        & (pd.to_numeric(frame[y], errors="coerce").abs() < math.inf)
    if not finite.any():
        ax.text(0.5, 0.5, "no rows to draw" if frame.empty else "no finite points",
                transform=ax.transAxes, ha="center", va="center")
    elif not finite.all():
        ax.text(0.01, 0.01, f"not drawn: {int((~finite).sum())} row(s) with a NaN {x} or {y}",
                transform=ax.transAxes, fontsize=6, va="bottom")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**legend)


def plot_damage(damage: pd.DataFrame):
    """Single-layer accuracy drop against the layer's random-tensor error, a colour per rank
    level, a marker per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    markers = "osD^v"
    for (keep, seed), grp in damage.groupby(["keep", "seed"]):
        ax.scatter(grp.error, grp.acc_drop, marker=markers[int(seed) % len(markers)],
                   color=plt.cm.viridis(float(keep)), label=f"keep {keep:g}, seed {seed}")
    ax.set_xlabel("random-tensor layer error ‖y−ỹ‖/‖y‖")
    ax.set_ylabel("accuracy drop, that layer alone decomposed")
    _finish_scatter(ax, damage, "error", "acc_drop", fontsize=6, ncol=2)
    ax.set_title("Does the layer error rank the damage?")
    fig.tight_layout()
    return fig


def plot_strategies(strategies: pd.DataFrame):
    """Accuracy against the share of conv parameters removed, per strategy and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for strategy, grp in strategies.groupby("strategy", sort=False):
        ax.scatter(grp.removed_share, grp.acc, label=strategy)
    ax.set_xlabel("share of conv parameters removed")
    ax.set_ylabel("test accuracy (not fine-tuned)")
    _finish_scatter(ax, strategies, "removed_share", "acc")
    ax.set_title("Decompose-all vs selective vs prune + selective")
    fig.tight_layout()
    return fig


def plot_depthwise(grid: pd.DataFrame):
    """Heat map of the depthwise-separable block's time over the standard conv's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = grid.pivot(index="channels", columns="size", values="time_ratio")
    fig, ax = plt.subplots(figsize=(5, 4))
    im = ax.imshow(table.values, cmap="coolwarm", vmin=0, vmax=2, origin="lower")
    ax.set_xticks(range(len(table.columns)), [str(c) for c in table.columns])
    ax.set_yticks(range(len(table.index)), [str(c) for c in table.index])
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            ax.text(j, i, f"{table.values[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xlabel("map size (px)")
    ax.set_ylabel("channels")
    ax.set_title("depthwise-separable time / standard time (<1: faster)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def decompose_all(model: nn.Module, cfg: DecompStudyConfig) -> nn.Module:
    """Every studied conv decomposed with the study's rank rule, whatever its error: the
    largest flops saving the rule gives (``deploy.decomposed_speedup``)."""
    studied = studied_layers(model, cfg)
    settings = DecomposeSettings(threshold=cfg.threshold, rank_rule=cfg.rank_rule)
    return decompose_model(model, settings, cfg.resolution, only=studied, force=True)[0]


# ------------------------------------------------------------------ what the study costs

HOOI_SWEEPS = 10  # partial_tucker's sweeps before its 1e-8 tolerance stops it (assumed)
PRUNE_SEARCH_ATTEMPTS = 9  # largest_ratio: its upper end and 8 bisections (ratio 0 is shared)


def decomposition_cost(cfg: DecompStudyConfig) -> dict[str, Any]:
    """The full study's non-training phases (``harness.costs``), keyed: the Tucker-2
    decompositions of every seed's network (damage points, the three strategies sharing the
    unpruned layer, the pruning search) and the test-set evaluations they are judged by."""
    from harness import costs

    with torch.device("meta"):
        model = _build(cfg)
    convs = dict(model.named_modules())
    layers = decomposable_layers(model, cfg.max_layers)
    per_layer = len(cfg.energies) + 1 + PRUNE_SEARCH_ATTEMPTS
    flops, vbmf = 0.0, 0.0
    for name in layers:
        t, s, k, _ = convs[name].weight.shape
        flops += per_layer * costs.tucker2_flops(t, s, k, HOOI_SWEEPS)
        # VBMF ranks (numpy, singular values only: about half a full SVD) of both unfoldings
        # for every attempt of the study's rank rule: the shared one and the pruning search
        if cfg.rank_rule == "vbmf":
            vbmf += (1 + PRUNE_SEARCH_ATTEMPTS) * 0.5 * (
                costs.svd_flops(t, s * k * k) + costs.svd_flops(s, t * k * k))
    seeds = len(cfg.seeds)
    evaluations = seeds * (len(layers) * len(cfg.energies) + 3 + 2)  # + originals, baseline
    macs, ops = costs.forward_work(functools.partial(_build, cfg), cfg.resolution)
    test = cfg.data.test_size or 10_000
    return {
        "decomp.tucker": costs.decompose_phase(
            f"{seeds} seeds × {len(layers)} convs × {per_layer} Tucker-2 (fp64, on the device)",
            seeds * flops),
        "decomp.vbmf": costs.host_phase(
            f"{seeds} seeds × {len(layers)} convs: VBMF ranks of {1 + PRUNE_SEARCH_ATTEMPTS} "
            f"weights each (numpy, host)", seeds * vbmf),
        "decomp.evaluations": costs.evaluate_phase(
            f"{evaluations} test-set evaluations of decomposed networks", macs, test, ops,
            cfg.train.eval_batch_size, passes=evaluations),
    }


def deploy_cost(dep: DeployConfig, cfg: DecompStudyConfig) -> dict[str, Any]:
    """The deployment timings' GPU time (``harness.costs``), keyed per claim: interleaved
    ratio pairs of the trained network (pruned, decomposed, fp16/bf16) and the depthwise grid."""
    from harness import costs

    with torch.device("meta"):
        model = _build(cfg)
    macs, ops = costs.forward_work(functools.partial(_build, cfg), cfg.resolution)
    def timed(macs_per_image: float, batch: int, kernels: float, again: bool) -> float:
        return costs.network_timing_seconds(macs_per_image, batch, kernels, dep.min_run_time,
                                            phases=("inference",), autotune=not again)

    net = timed(macs, dep.batch, ops, again=True)
    grid = 0.0
    for c in dep.channels:
        for size in dep.sizes:  # the 3×3 conv and the separable pair, ``rounds`` times each
            for macs_cell, kernels in ((9 * c * c * size * size, 1),
                                       ((9 * c + c * c) * size * size, 2)):
                grid += timed(macs_cell, dep.grid_batch, kernels, again=False)
                grid += (dep.rounds - 1) * timed(macs_cell, dep.grid_batch, kernels, again=True)
                # the dispatch-bound check (``deploy.depthwise_doubling``): t(B) and t(2B)
                grid += timed(macs_cell, dep.grid_batch, kernels, again=True)
                grid += timed(macs_cell, 2 * dep.grid_batch, kernels, again=False)
    pairs = 2 * dep.rounds  # each ratio: ``rounds`` interleaved pairs
    convs = dict(model.named_modules())
    tucker = sum(costs.tucker2_flops(*convs[n].weight.shape[:3], HOOI_SWEEPS)
                 for n in decomposable_layers(model, cfg.max_layers))
    return {
        "deploy.decompose_all": costs.decompose_phase("every conv of one network decomposed",
                                                      tucker),
        "deploy.pruning": costs.Phase("timing", f"{len(dep.sparsities)} pruned vs dense, "
                                      f"{dep.rounds} pairs", len(dep.sparsities) * pairs * net),
        "deploy.precision": costs.Phase("timing", "fp32 vs fp16 and bf16", 4 * net),
        "deploy.decomposed": costs.Phase("timing", f"decomposed vs original, {dep.rounds} pairs",
                                         pairs * net),
        "deploy.depthwise": costs.Phase("timing", f"{len(dep.channels) * len(dep.sizes)} "
                                        f"depthwise cells, {dep.rounds} pairs and t(2B)/t(B)",
                                        grid),
    }

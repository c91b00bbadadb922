"""Decomposition experiments on trained networks: per-layer damage, selective against
decompose-all, pruning before decomposing. The claims ``decomp.*`` (claims/README.md section 4)
are checked by ``claims/test_decompose.py`` with these pieces; the verdict rules are in
``harness.decompose.verdicts``.

The networks train once per seed through ``train.run_jobs`` with ``keep_weights``, so the
cache holds their weights too; nothing here fine-tunes (results are "not fine-tuned").
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch.nn as nn

from harness import models
from harness.data import DatasetSplits, DataSpec
from harness.decompose.tucker import DecomposeSettings, decomposable, decompose_model
from harness.profiles import device_class
from harness.train import TrainConfig, TrainJob, evaluate, run_jobs, trained_weights


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
    # Verdict margins (accuracy fractions, share of conv parameters), fixed a priori.
    selective_margin: float = 0.02  # selective stays within this of the original
    all_drop_min: float = 0.05  # decompose-all "costs much": at least this much accuracy
    min_removed: float = 0.10  # selective still removes this share of conv parameters
    learned_margin: float = 0.05

    def dry_run(self) -> DecompStudyConfig:
        return dataclasses.replace(
            self, data=self.data.dry_run(), resolution=8, seeds=self.seeds[:1],
            energies=self.energies[:2],
            train=dataclasses.replace(self.train, max_steps=2, batch_size=8, amp=None,
                                      channels_last=False, compile=False))

    @property
    def chance(self) -> float:
        n = {"cifar10": 10, "cifar100": 100}.get(self.data.name, self.data.num_classes)
        return 1.0 / n


def _build(cfg: DecompStudyConfig) -> nn.Module:
    return models.build(cfg.model, **{**dict(cfg.model_overrides), "resolution": cfg.resolution})


def trained_models(cfg: DecompStudyConfig, data: DatasetSplits, *, device: str,
                   use_cache: bool = True, workers: int = 1) -> dict[int, nn.Module]:
    """The network trained once per seed (weights cached with the run), in eval mode."""
    jobs = []
    for seed in cfg.seeds:
        recipe = dataclasses.replace(cfg.train, seed=seed, cpu_threads=cfg.cpu_threads)
        key = {"study": "decompose-base", "model": cfg.model, "overrides": cfg.model_overrides,
               "data": cfg.data, "resolution": cfg.resolution, "train": recipe,
               "device_class": device_class(device)}
        jobs.append(TrainJob(key, functools.partial(_build, cfg), data.train, data.test, recipe,
                             device, desc=f"{cfg.model} seed {seed}", keep_weights=True))
    out = {}
    for seed, rec in zip(cfg.seeds, run_jobs(jobs, workers=workers, use_cache=use_cache),
                         strict=True):
        model = _build(cfg)
        model.load_state_dict(trained_weights(rec))
        out[seed] = model.to(device).eval()
    return out


def accuracy(model: nn.Module, data: DatasetSplits, cfg: DecompStudyConfig, device: str) -> float:
    return evaluate(model, data.test, device, cfg.train)[0]


def damage_table(model: nn.Module, data: DatasetSplits, cfg: DecompStudyConfig,
                 device: str) -> pd.DataFrame:
    """One row per (decomposable conv, energy rank): that layer alone decomposed, its
    random-tensor error and the accuracy it costs the network."""
    base = accuracy(model, data, cfg, device)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
             and decomposable(m) is None]
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
    rows = [dict(strategy="original", acc=base, acc_drop=0.0, removed_share=0.0)]
    for strategy, kw in (("all", dict(force=True)), ("selective", {}),
                         ("prune+selective", dict(prune=True))):
        new, report = decompose_model(model, settings, cfg.resolution, **kw)
        acc = accuracy(new.to(device), data, cfg, device)
        removed = int(report.params_before.sum() - report.params_after.sum())
        rows.append(dict(strategy=strategy, acc=acc, acc_drop=base - acc,
                         removed_share=removed / conv_params,
                         layers=int(report.decomposed.sum())))
    return pd.DataFrame(rows)

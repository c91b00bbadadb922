"""Populations of scaled networks: their complexity, their runtime, and the laws they follow.

The scaling claims look at many networks at once (bases × strategies × scale factors). This
module builds that population, measures each member (complexity on the meta device, runtime
with ``harness.timing``), and summarises it (correlations, equal-flops groups, law checks).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from dataclasses import dataclass

import pandas as pd
import torch

from harness import complexity, scaling, stats, timing

# ------------------------------------------------------------------ runtime population


@dataclass(frozen=True)
class PopulationConfig:
    bases: tuple[str, ...]  # registered model names with an AnyNet/EffNet config
    strategies: tuple[str, ...]
    scales: tuple[float, ...]
    batch_size: int
    min_run_time: float  # seconds of timing per network and phase
    cpu_threads: int = 1
    amp: bool = False  # bf16 autocast (CUDA only)
    channels_last: bool = False  # CUDA only
    input_resolution: int | None = None  # dry run: time on tiny inputs instead of each r

    def dry_run(self) -> PopulationConfig:
        """Every network of the population, timed once at batch 2 on 32 px inputs."""
        return dataclasses.replace(self, batch_size=2, min_run_time=0.0, input_resolution=32,
                                   amp=False, channels_last=False)


def population_configs(cfg: PopulationConfig) -> list[tuple[str, str, float, scaling.Config]]:
    """(base, strategy, s, config) for the base networks and every scaled one."""
    members = []
    for base in cfg.bases:
        base_cfg = scaling.config_of(base)
        members.append((base, "base", 1.0, base_cfg))
        for strategy in cfg.strategies:
            for s in cfg.scales:
                members.append((base, strategy, s, scaling.scale(base_cfg, s, strategy)))
    return members


@functools.lru_cache(maxsize=4)
def runtime_population(cfg: PopulationConfig, device: str) -> pd.DataFrame:
    """One row per network: flops, params, acts, inference and train-step seconds.

    Cached per (config, device), so the claims that share a population time it once.
    """
    from harness.reporting import progress_bar

    rows = []
    members = population_configs(cfg)
    bar = progress_bar(len(members), "timing population")
    amp = torch.bfloat16 if (cfg.amp and device == "cuda") else None
    for base, strategy, s, net_cfg in members:
        cx = complexity.measure_config(net_cfg)
        torch.manual_seed(0)
        model = scaling.build_config(net_cfg)
        res = cfg.input_resolution or net_cfg.resolution
        common = dict(device=device, cpu_threads=cfg.cpu_threads, min_run_time=cfg.min_run_time,
                      amp_dtype=amp, channels_last=cfg.channels_last and device == "cuda")
        inf = timing.time_inference(model, cfg.batch_size, res, **common)
        step = timing.time_train_step(model, cfg.batch_size, res,
                                      num_classes=net_cfg.num_classes, **common)
        rows.append(dict(base=base, strategy=strategy, s=s, resolution=net_cfg.resolution,
                         flops=cx.flops, params=cx.params, acts=cx.acts,
                         inference_s=inf.median, inference_iqr=inf.iqr,
                         train_step_s=step.median, train_step_iqr=step.iqr))
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        bar.update()
    bar.close()
    return pd.DataFrame(rows)


def correlation_table(pop: pd.DataFrame) -> pd.DataFrame:
    """Pearson r (95% CI) of runtime against flops, params and acts, per phase."""
    rows = []
    for phase, col in (("inference", "inference_s"), ("train_step", "train_step_s")):
        for metric in ("flops", "params", "acts"):
            c = stats.pearson(pop[metric], pop[col])
            rows.append(dict(phase=phase, metric=metric, r=c.r, ci_low=c.ci_low,
                             ci_high=c.ci_high, n=c.n))
    return pd.DataFrame(rows)


def plot_runtime_vs_complexity(pop: pd.DataFrame, table: pd.DataFrame):
    """Runtime against each complexity metric with a least-squares line, as the paper's Fig. 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for i, (phase, col) in enumerate((("inference", "inference_s"), ("train_step", "train_step_s"))):
        for j, metric in enumerate(("flops", "params", "acts")):
            ax = axes[i, j]
            for strategy, g in pop.groupby("strategy"):
                ax.scatter(g[metric], g[col] * 1e3, s=14, label=strategy)
            fit = np.polyfit(pop[metric], pop[col] * 1e3, 1)
            xs = np.linspace(pop[metric].min(), pop[metric].max(), 50)
            ax.plot(xs, np.polyval(fit, xs), "k--", lw=1)
            r = table[(table.phase == phase) & (table.metric == metric)].r.item()
            ax.set_title(f"{phase}: r = {r:.3f}")
            ax.set_xlabel(metric)
            ax.set_ylabel("ms per batch")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def equal_flops_groups(pop: pd.DataFrame) -> list[pd.DataFrame]:
    """Networks from the same base scaled by the same s: equal flops up to rounding."""
    scaled = pop[pop.strategy != "base"]
    return [g for _, g in scaled.groupby(["base", "s"])]


def dwr_most_acts_among_r_compounds(group: pd.DataFrame) -> bool:
    compounds = group[group.strategy.isin(["dr", "wr", "dwr"])]
    return compounds.loc[compounds.acts.idxmax(), "strategy"] == "dwr"


# ------------------------------------------------------------------------ the laws


@dataclass(frozen=True)
class LawCheckConfig:
    bases: tuple[str, ...]
    scales: tuple[float, ...]  # a grid over every strategy at these s
    random_examples: int  # plus this many random (base, s, α) draws of fast compound scaling
    seed: int = 0

    def dry_run(self) -> LawCheckConfig:
        return dataclasses.replace(self, random_examples=min(self.random_examples, 3))


@dataclass(frozen=True)
class LawReport:
    cells: int
    violations: list[str]
    worst_exponent_error: dict[str, float]  # |measured − predicted exponent|, by quantity
    worked_example: complexity.Complexity
    efficientnet_gap: float


def complexity_law_report(cfg: LawCheckConfig) -> LawReport:
    """Check the closed forms on a grid and on random fast-compound draws; all counts exact."""
    rng = random.Random(cfg.seed)
    cells = [(b, st, s, None) for b in cfg.bases for st in scaling.STRATEGIES for s in cfg.scales]
    cells += [(rng.choice(cfg.bases), "fast", math.exp(rng.uniform(math.log(1.5), math.log(64))),
               rng.uniform(0, 1)) for _ in range(cfg.random_examples)]
    violations: list[str] = []
    worst = {"flops": 0.0, "params": 0.0, "acts": 0.0}
    base_cx = {b: complexity.measure_config(scaling.config_of(b)) for b in cfg.bases}
    for base, strategy, s, alpha in cells:
        base_cfg = scaling.config_of(base)
        scaled_cfg = scaling.scale(base_cfg, s, strategy, alpha)
        violations += scaling.check_complexity_laws(base_cfg, scaled_cfg, s, strategy, alpha)
        measured = complexity.measure_config(scaled_cfg)
        predicted = scaling.complexity_exponents(strategy, alpha)
        for q, e in zip(("flops", "params", "acts"), predicted):
            got = math.log(getattr(measured, q) / getattr(base_cx[base], q)) / math.log(s)
            worst[q] = max(worst[q], abs(got - e))
    worked = complexity.measure_config(scaling.scale(scaling.config_of("regnety_4gf"), 4, "dWr"))
    d, w, r = scaling.scaling_factors("dwr", 2.0)
    gap = max(abs(d - 1.2), abs(w - 1.1), abs(r - 1.15))
    return LawReport(len(cells), violations, worst, worked, gap)

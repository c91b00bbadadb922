"""Studies of scaled networks: their complexity, runtime and accuracy, and the laws they follow.

The scaling claims look at many networks at once (bases × strategies × scale factors). This
module builds those populations, measures each member (complexity on the meta device, runtime
with ``harness.timing``, accuracy with ``harness.train``), and summarises them (correlations,
equal-flops groups, law checks).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from dataclasses import dataclass

import pandas as pd
import torch

from harness import memory, models, scaling, stats, timing
from harness.complexity import Complexity
from harness.data import DataSpec
from harness.runs.executors import ExecutorSpec
from harness.runs.jobs import TrainJob, run_jobs
from harness.train import TrainConfig, TrainRecord, autocast_dtype

# ------------------------------------------------------------------ runtime population


@dataclass(frozen=True)
class PopulationConfig:
    bases: tuple[str, ...]  # registered model names with an AnyNet/EffNet config
    strategies: tuple[str, ...]
    scales: tuple[float, ...]
    batch_size: int
    min_run_time: float  # seconds of timing per network and phase
    cpu_threads: int = 1
    amp: str | None = None  # "bf16" | "fp16" | None, as TrainConfig.amp; CUDA only
    channels_last: bool = False  # CUDA only
    input_resolution: int | None = None  # dry run: time on tiny inputs instead of each r

    def dry_run(self) -> PopulationConfig:
        """Every network of the population, timed once at batch 2 on 32 px inputs."""
        return dataclasses.replace(self, batch_size=2, min_run_time=0.0, input_resolution=32,
                                   amp=None, channels_last=False)


def population_configs(cfg: PopulationConfig) -> list[tuple[str, str, float, models.Config]]:
    """(base, strategy, s, config) for the base networks and every scaled one."""
    members = []
    for base in cfg.bases:
        base_cfg = models.config_of(base)
        members.append((base, "base", 1.0, base_cfg))
        for strategy in cfg.strategies:
            for s in cfg.scales:
                members.append((base, strategy, s, scaling.scale(base_cfg, s, strategy)))
    return members


@functools.lru_cache(maxsize=4)
def runtime_population(cfg: PopulationConfig, device: str) -> pd.DataFrame:
    """One row per network: flops, params, acts, inference and train-step seconds, and the
    train step's memory plan (``predicted_peak_gib``, ``train_step_microbatches``).

    Every member's step is planned before any is timed (``population_plans``): on CUDA one
    that would not fit the device is timed in micro-batches with the same per-image work
    (a warning says which); on the CPU nothing is planned (k = 1, peak NaN: the tiny smoke
    nets are far from any limit, and the meta forwards would add seconds to the smoke run).
    Cached per (config, device), so the claims that share a population time it once.
    """
    import warnings

    from harness.progress import progress_bar

    rows = []
    members = population_configs(cfg)
    plans = population_plans(cfg, device)
    for (base, strategy, s, _), plan in zip(members, plans, strict=True):
        if plan.microbatches > 1 or plan.doubling_microbatches > 1:
            warnings.warn(f"{base} {strategy} s={s:g}: {plan.step.describe()} (planned; the "
                          f"t(2B) check in {plan.doubling_microbatches})", stacklevel=2)
    bar = progress_bar(len(members), "timing population")
    setup = timing.TimingSetup(device=device, amp_dtype=autocast_dtype(cfg.amp, device),
                               channels_last=cfg.channels_last and device == "cuda",
                               cpu_threads=cfg.cpu_threads, min_run_time=cfg.min_run_time)
    for (base, strategy, s, net_cfg), plan in zip(members, plans, strict=True):
        cx = models.measure_config(net_cfg)
        times = _time_member(net_cfg, cfg.input_resolution or net_cfg.resolution, cfg.batch_size,
                             setup, doubling=strategy == "base",
                             microbatches=plan.microbatches,
                             doubling_microbatches=plan.doubling_microbatches)
        rows.append(dict(base=base, strategy=strategy, s=s, resolution=net_cfg.resolution,
                         flops=cx.flops, params=cx.params, acts=cx.acts, **times,
                         predicted_peak_gib=plan.peak_gib,
                         train_step_microbatches=plan.microbatches))
        if device == "cuda":
            torch.cuda.empty_cache()
        bar.update()
    bar.close()
    return pd.DataFrame(rows)


def _time_member(net_cfg: models.Config, res: int, batch: int, setup: timing.TimingSetup,
                 doubling: bool, microbatches: int = 1,
                 doubling_microbatches: int = 1) -> dict[str, float]:
    """Inference and train-step seconds (fastest block; and IQRs) of one network; with ``doubling``, also
    t(2B)/t(B) per phase. The bases are each family's smallest members, the likeliest to be
    dispatch-bound, so they carry the check. The train step at ``batch`` runs in
    ``microbatches`` passes, at 2 × ``batch`` in ``doubling_microbatches`` (``memory``)."""
    torch.manual_seed(0)
    model = models.build_config(net_cfg)

    def infer(b: int) -> timing.Timing:
        return timing.time_inference(model, b, res, setup)

    def train_step(b: int) -> timing.Timing:
        k = microbatches if b == batch else doubling_microbatches
        return timing.time_train_step(model, b, res, net_cfg.num_classes, setup, microbatches=k)

    inf, step = infer(batch), train_step(batch)
    # The fastest block: load on a shared CPU moves it least (``timing.Timing``).
    out = dict(inference_s=inf.best, inference_iqr=inf.iqr, train_step_s=step.best,
               train_step_iqr=step.iqr)
    if doubling:
        out.update(inference_doubling=timing.batch_doubling_ratio(infer, batch),
                   train_step_doubling=timing.batch_doubling_ratio(train_step, batch))
    return out


# ------------------------------------------------------------------ memory of the population


@dataclass(frozen=True)
class MemberPlan:
    """A member's train step as planned: at the population's batch (``step``, with its
    micro-batches) and how many micro-batches the t(2B) check's step needs."""

    step: memory.MemoryEstimate | None  # None: not planned (CPU timing)
    doubling_microbatches: int = 1

    @property
    def microbatches(self) -> int:
        return self.step.microbatches if self.step is not None else 1

    @property
    def peak_gib(self) -> float:
        return self.step.total / memory.GIB if self.step is not None else math.nan


@functools.lru_cache(maxsize=512)
def _member_step(net_cfg: models.Config, res: int, amp: str | None,
                 channels_last: bool) -> memory.MemoryEstimate:
    """One image's train step of the population's timing (SGD with momentum, as
    ``timing.time_train_step``), measured on meta once per member and precision."""
    return memory.train_step_peak(functools.partial(models.build_config, net_cfg), 1, res,
                                  amp=amp, optimizer="sgd", channels_last=channels_last)


def plan_member(net_cfg: models.Config, res: int, batch: int, amp: str | None,
                channels_last: bool, budget: int, doubling: bool = False) -> MemberPlan:
    """The member's step at ``batch`` in the fewest micro-batches that fit ``budget`` (and at
    2 × ``batch`` when it carries the doubling check)."""
    one = _member_step(net_cfg, res, amp, channels_last)
    step = one.at_batch(batch).planned(budget)
    k2 = one.at_batch(2 * batch).planned(budget).microbatches if doubling else 1
    return MemberPlan(step, k2)


def population_plans(cfg: PopulationConfig, device: str,
                     budget: int | None = None) -> list[MemberPlan]:
    """Every member's plan, in ``population_configs`` order, as ``runtime_population`` times
    it on ``device``: against ``memory.device_budget(device)`` (or ``budget``) in the
    precision and layout of the timing. Not planned on the CPU (see ``runtime_population``)."""
    members = population_configs(cfg)
    if device != "cuda":
        return [MemberPlan(None) for _ in members]
    budget = memory.device_budget(device) if budget is None else budget
    return [plan_member(net_cfg, cfg.input_resolution or net_cfg.resolution, cfg.batch_size,
                        cfg.amp, cfg.channels_last, budget, doubling=strategy == "base")
            for _, strategy, _, net_cfg in members]


def population_peaks(cfg: PopulationConfig, budget: int = memory.PLANNING_BUDGET_BYTES
                     ) -> pd.DataFrame:
    """The population's train steps as planned for the GPU (``cfg``'s batch, ``amp`` and
    layout; an 80 GB H100 unless ``budget``), nothing timed: one row per member with its
    predicted peak at the configured batch in one pass and as planned, and the micro-batches
    chosen (also for the bases' t(2B) step)."""
    rows = []
    for base, strategy, s, net_cfg in population_configs(cfg):
        res = cfg.input_resolution or net_cfg.resolution
        plan = plan_member(net_cfg, res, cfg.batch_size, cfg.amp, cfg.channels_last, budget,
                           doubling=strategy == "base")
        whole = plan.step.with_microbatches(1)
        rows.append(dict(member=f"{base} {strategy} s={s:g}", base=base, strategy=strategy,
                         s=s, resolution=res, per_image_mib=whole.per_image / 2 ** 20,
                         activations_gib=whole.activations / memory.GIB,
                         unsplit_peak_gib=whole.total / memory.GIB,
                         predicted_peak_gib=plan.peak_gib,
                         train_step_microbatches=plan.step.microbatches,
                         doubling_microbatches=plan.doubling_microbatches))
    return pd.DataFrame(rows)


DISPATCH_BOUND_BELOW = timing.DISPATCH_BOUND_BELOW  # t(2B)/t(B) under this: dispatch-bound


def batch_doubling(pop: pd.DataFrame) -> float:
    """The smallest t(2B)/t(B) over the population's bases and both phases (2: time follows
    the work; near 1: dispatch-bound, and runtime says little about the network)."""
    cols = [c for c in ("inference_doubling", "train_step_doubling") if c in pop]
    return float(pop[cols].min().min())


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
            # The line through the finite points only: a NaN or infinite time would make the
            # least-squares fit NaN (or fail to converge, with some LAPACKs); named instead.
            x, y = pop[metric].astype(float), pop[col].astype(float) * 1e3
            finite = np.isfinite(x) & np.isfinite(y)
            if finite.sum() >= 2:
                fit = np.polyfit(x[finite], y[finite], 1)
                xs = np.linspace(x[finite].min(), x[finite].max(), 50)
                ax.plot(xs, np.polyval(fit, xs), "k--", lw=1)
            if not finite.all():
                ax.text(0.01, 0.99, f"not drawn: {int((~finite).sum())} network(s) with a "
                        "non-finite time", transform=ax.transAxes, fontsize=6, va="top")
            r = table[(table.phase == phase) & (table.metric == metric)].r.item()
            ax.set_title(f"{phase}: r = {r:.3f}")
            ax.set_xlabel(metric)
            ax.set_ylabel("ms per batch")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def at_equal_flops(pop: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Each strategy's ``columns`` interpolated to exactly ``s`` × the base's flops.

    Rounding (widths to multiples of 8, depths to integers) leaves networks scaled by the same
    nominal s with flops a few percent apart; comparing them raw would reward whichever rounded
    down. So per base and strategy, log(value) is interpolated linearly in log(flops) through the
    base and the scaled networks, and read off at the nominal flops. One row per
    (base, s, strategy).
    """
    import numpy as np

    rows = []
    for base, by_base in pop.groupby("base"):
        root = by_base[by_base.strategy == "base"].iloc[0]
        for strategy, g in by_base[by_base.strategy != "base"].groupby("strategy"):
            pts = pd.concat([root.to_frame().T, g]).astype({"flops": float}).sort_values("flops")
            for s in sorted(g.s.unique()):
                target = np.log(root.flops * s)
                row = dict(base=base, s=s, strategy=strategy)
                for col in columns:
                    row[col] = float(np.exp(np.interp(target, np.log(pts.flops.astype(float)),
                                                      np.log(pts[col].astype(float)))))
                rows.append(row)
    return pd.DataFrame(rows)


def equal_flops_groups(pop: pd.DataFrame) -> list[pd.DataFrame]:
    """Per (base, s): every strategy's acts and runtimes at exactly s × the base's flops."""
    table = at_equal_flops(pop, ("acts", "params", "inference_s", "train_step_s"))
    return [g.reset_index(drop=True) for _, g in table.groupby(["base", "s"])]


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
class LawStudy:
    cells: int
    violations: list[str]
    # max over cells of measured/closed-form − 1, per quantity: how much the fixed parts
    # (stem, first blocks, head) and rounding bend a whole network away from the closed forms
    max_closed_form_gap: dict[str, float]
    worked_example: Complexity
    efficientnet_gap: float


def law_study(cfg: LawCheckConfig) -> LawStudy:
    """Check the laws (``scaling.complexity_law_report``) on a grid of every strategy and on
    random fast-compound draws of (base, s, α); every count is exact, so this is deterministic."""
    rng = random.Random(cfg.seed)
    cells = [(b, st, s, None) for b in cfg.bases for st in scaling.STRATEGIES for s in cfg.scales]
    cells += [(rng.choice(cfg.bases), "fast", math.exp(rng.uniform(math.log(1.5), math.log(64))),
               rng.uniform(0, 1)) for _ in range(cfg.random_examples)]
    violations: list[str] = []
    gap = {"flops": 0.0, "params": 0.0, "acts": 0.0}
    for base, strategy, s, alpha in cells:
        base_cfg = models.config_of(base)
        report = scaling.complexity_law_report(
            base_cfg, scaling.scale(base_cfg, s, strategy, alpha), s, strategy, alpha)
        violations += [f"{base} {strategy} s={s:.3g}: {v}" for v in report.violations]
        for q, got, law in zip(gap, report.measured, report.closed_form):
            gap[q] = max(gap[q], abs(got / law - 1))
    worked = models.measure_config(scaling.scale(models.config_of("regnety_4gf"), 4, "dWr"))
    d, w, r = scaling.scaling_factors("dwr", 2.0)
    eff_gap = max(abs(d - 1.2), abs(w - 1.1), abs(r - 1.15))
    return LawStudy(len(cells), violations, gap, worked, eff_gap)


# ------------------------------------------------------------------ trained networks


@dataclass(frozen=True)
class ScaledTrainingConfig:
    """Train base networks and their scaled versions with one recipe, over several seeds."""

    bases: tuple[models.Config, ...]  # bases[0] is scaled by every strategy; others by dWr
    s: float  # flops multiplier
    strategies: tuple[str, ...]  # applied to bases[0]
    data: DataSpec
    train: TrainConfig
    seeds: tuple[int, ...]
    accuracy_margin: float  # "comparable": dWr may trail dwr by at most this (fraction)
    timing_batch: int  # batch size of the inference timing
    timing_min_run_time: float = 0.3

    def dry_run(self) -> ScaledTrainingConfig:
        return dataclasses.replace(
            self, data=self.data.dry_run(), seeds=self.seeds[:1], timing_batch=2,
            timing_min_run_time=0.0,
            train=dataclasses.replace(self.train, max_steps=1, batch_size=8, amp=None,
                                      channels_last=False, compile=False))


@functools.cache
def scaled_config(base: models.Config, strategy: str, s: float) -> models.Config:
    """``base`` scaled by ``strategy`` to the flops nearest ``s`` times its own, so strategies
    are compared at equal budgets (rounding alone leaves small nets far apart)."""
    return base if strategy == "base" else scaling.scale_to_flops(base, s, strategy)


def flops_ratio(base: models.Config, net: models.Config) -> float:
    return models.measure_config(net).flops / models.measure_config(base).flops


def train_scaled(cfg: ScaledTrainingConfig, nets: dict[str, models.Config], *, device: str,
                 load_data, use_cache: bool, executor: ExecutorSpec | None = None,
                 progress: bool | None = None) -> dict[tuple[str, int], TrainRecord]:
    """Train every network in ``nets`` once per seed with the config's recipe.

    Records come back keyed by (name, seed); finished cells are read from the cache, and the
    rest train through ``executor`` (``harness.runs.executors``: serial, processes or Slurm)."""
    jobs = scaled_jobs(cfg, nets, device=device, load_data=load_data)
    records = run_jobs(list(jobs.values()), executor=executor, use_cache=use_cache,
                       progress=progress)
    return dict(zip(jobs, records))


def scaled_jobs(cfg: ScaledTrainingConfig, nets: dict[str, models.Config], *, device: str,
                load_data) -> dict[tuple[str, int], TrainJob]:
    """One training run per network in ``nets`` and seed, keyed by (name, seed)."""
    from harness.profiles import device_class

    jobs = {}
    for name, net in nets.items():
        data = load_data(cfg.data, net.resolution)
        flops = models.measure_config(net).flops
        for seed in cfg.seeds:
            recipe = dataclasses.replace(cfg.train, seed=seed)
            key = {"study": "scaled-training", "model": net, "train": recipe, "data": cfg.data,
                   "device": device_class(device)}
            jobs[(name, seed)] = TrainJob(key, functools.partial(models.build_config, net),
                                          data.train, data.test, recipe, device,
                                          desc=f"{name} seed {seed}",
                                          cost=flops)
    return jobs


def accuracy_table(records: dict[tuple[str, str, int], TrainRecord]) -> pd.DataFrame:
    """One row per (model, strategy, seed); a diverged run's accuracy is kept as NaN."""
    return pd.DataFrame([
        dict(model=m, strategy=st, seed=seed, test_acc=r.test_acc, diverged=r.diverged,
             seconds_per_epoch=r.seconds_per_epoch, images_per_second=r.images_per_second,
             from_cache=r.from_cache)
        for (m, st, seed), r in records.items()
    ])


def inference_times(nets: dict[str, models.Config], batch: int, device: str,
                    min_run_time: float, amp: str | None = None,
                    channels_last: bool = False) -> dict[str, float]:
    """Seconds per batch (fastest block) for each network, measured back to back in one run, in the
    precision and layout the networks train in (``amp``: CUDA only; ``channels_last``: any
    device, as in training)."""
    setup = _inference_setup(device, min_run_time, amp, channels_last)
    out = {}
    for name, net in nets.items():
        torch.manual_seed(0)
        out[name] = timing.time_inference(models.build_config(net), batch, net.resolution,
                                          setup).best
    return out


def _inference_setup(device: str, min_run_time: float, amp: str | None,
                     channels_last: bool) -> timing.TimingSetup:
    return timing.TimingSetup(device=device, amp_dtype=autocast_dtype(amp, device),
                              channels_last=channels_last, min_run_time=min_run_time)


def timing_doubling(nets: dict[str, models.Config], batch: int, train_batch: int, device: str,
                    min_run_time: float, amp: str | None = None,
                    channels_last: bool = False) -> pd.DataFrame:
    """Per network, t(2B)/t(B) (``timing.batch_doubling_ratio``) of what the runtime ratios
    of ``scaling.dWr_matches_dwr_faster`` compare: inference at ``batch`` (as
    ``inference_times``) and a training step at ``train_batch`` (the epoch times' batch), in
    the same precision and layout. One row per network: ``inference``, ``train_step``, the
    smaller of the two (``doubling``) and whether it was dispatch-bound
    (``timing.dispatch_bound``). Measured after ``inference_times``, so it leaves the medians
    there as they were."""
    setup = _inference_setup(device, min_run_time, amp, channels_last)
    rows = []
    for name, net in nets.items():
        torch.manual_seed(0)
        model = models.build_config(net)
        inference = timing.batch_doubling_ratio(
            lambda b, m=model, r=net.resolution: timing.time_inference(m, b, r, setup), batch)
        step = timing.batch_doubling_ratio(
            lambda b, m=model, n=net: timing.time_train_step(m, b, n.resolution, n.num_classes,
                                                             setup), train_batch)
        doubling = min(inference, step)
        rows.append(dict(network=name, inference=inference, train_step=step, doubling=doubling,
                         dispatch_bound=timing.dispatch_bound(doubling)))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ what the timings cost


@functools.lru_cache(maxsize=1024)
def _forward_ops(net_cfg: models.Config, res: int) -> float:
    """Kernels of one eval forward of the member (counted on meta; the same members are priced
    by every claim that times the population)."""
    from harness import costs

    return costs.forward_ops_of(functools.partial(models.build_config, net_cfg), res)


def population_cost(cfg: PopulationConfig):
    """The GPU time of timing ``cfg``'s population (``harness.costs``): each member in both
    phases at its own resolution (a micro-batched train step launches its kernels k times);
    the bases also at 2B for the batch-doubling check. Its peak memory is the largest planned
    step's (``population_peaks``)."""
    from harness import costs

    plans = population_peaks(cfg)
    seconds = 0.0
    for (_, strategy, _, net_cfg), k in zip(population_configs(cfg),
                                           plans.train_step_microbatches):
        res = cfg.input_resolution or net_cfg.resolution
        macs = models.measure_config(net_cfg).flops * (res / net_cfg.resolution) ** 2
        ops = _forward_ops(net_cfg, res)
        seconds += costs.network_timing_seconds(macs, cfg.batch_size, ops, cfg.min_run_time,
                                                phases=("inference",))
        seconds += costs.network_timing_seconds(macs, cfg.batch_size, k * ops, cfg.min_run_time,
                                                phases=("train_step",))
        if strategy == "base":  # t(B) again and t(2B), both phases
            seconds += costs.network_timing_seconds(macs, cfg.batch_size, ops, cfg.min_run_time)
            seconds += costs.network_timing_seconds(macs, 2 * cfg.batch_size, ops,
                                                    cfg.min_run_time)
    split = int((plans.train_step_microbatches > 1).sum())
    return costs.Phase("timing", f"population of {len(plans)} networks at B={cfg.batch_size}, "
                       f"{cfg.min_run_time:g} s per measurement ({split} train steps in "
                       f"micro-batches)", seconds,
                       peak_bytes=float(plans.predicted_peak_gib.max()) * 2**30)


def inference_timing_cost(cfg: ScaledTrainingConfig, nets: dict[str, models.Config],
                          doubled: tuple[str, ...] = ("dWr", "dwr")):
    """The GPU time of ``inference_times`` over ``nets`` at B, then of ``timing_doubling`` on
    the ``doubled`` ones: inference at B and 2B, a training step at the recipe's batch and
    twice it."""
    from harness import costs

    seconds = 0.0
    for name, net in nets.items():
        macs = models.measure_config(net).flops
        ops = costs.forward_ops_of(functools.partial(models.build_config, net), net.resolution)
        seconds += costs.network_timing_seconds(macs, cfg.timing_batch, ops,
                                                cfg.timing_min_run_time, phases=("inference",))
        if name not in doubled:
            continue
        for factor in (1, 2):
            seconds += costs.network_timing_seconds(
                macs, factor * cfg.timing_batch, ops, cfg.timing_min_run_time,
                phases=("inference",), autotune=factor == 2)
            seconds += costs.network_timing_seconds(
                macs, factor * cfg.train.batch_size, ops, cfg.timing_min_run_time,
                phases=("train_step",))
    return costs.Phase("timing", f"inference of {len(nets)} trained networks at "
                       f"B={cfg.timing_batch}; t(2B)/t(B) of {', '.join(doubled)}", seconds)

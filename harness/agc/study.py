"""Adaptive gradient clipping experiments: the training hook, the rule suite, the grid, tables.

The claims ``agc.*`` (claims/README.md section 2; Brock et al., "High-Performance Large-Scale
Image Recognition Without Normalization", ICML 2021) are checked by ``claims/test_agc.py`` with
the pieces here, in this order (the verdict rules are in ``harness.agc.verdicts``):

* ``AGCHook``: ``harness.agc.clip_grads_`` as a picklable ``before_step`` hook of the training
  loop, classifier excluded unless asked;
* ``rule_study``: the property suite of ``agc.rule`` on seeded random cases and on a real
  NF-ResNet, run on the harness's AGC and on the ``KNOWN_BAD`` implementations;
* ``GridConfig`` and ``train_agc_cells``: the batch size x method x lambda grid, one training run per
  cell, all through ``runs.jobs.run_jobs`` (cached, side by side on the CPU), AGC as an
  ``AGCHook``;
* ``grid_summary``, ``benefit_table`` (from ``verdicts.best_lambdas`` and ``accuracies``): the
  tables the verdicts are read from
  (a diverged run counts as chance accuracy in every mean);
* ``time_bn_vs_nf`` and ``plot_grid``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from harness import models, timing
from harness.agc.known_bad import KNOWN_BAD
from harness.agc.rule import (
    DEFAULT_EPS,
    check_agc_invariants,
    check_model_agc,
    classifier_of,
    clip_grads_,
    parameters_to_clip,
    random_agc_case,
    unitwise_norm,
)
from harness.agc.verdicts import AGC, BN, NF, accuracies, best_lambdas
from harness.data import DatasetSplits, DataSpec
from harness.profiles import device_class
from harness.runs.executors import ExecutorSpec
from harness.runs.jobs import TrainJob, run_table
from harness.stats import mean
from harness.train import StepHook, StepState, TrainConfig, TrainRecord, autocast_dtype

# ----------------------------------------------------------------------- the training hook


@dataclass
class AGCHook:
    """Unit-wise AGC (``clip_grads_``) as a ``before_step`` hook of ``train.train``; the loop
    unscales AMP gradients before its hooks run.

    The final classifier stays unclipped, as the paper prescribes, unless ``clip_head`` (the
    ablation of ``agc.skip_final_layer``). Picklable: it binds to the model of its first step,
    so a job can carry it to another process before the model exists, and refuses another."""

    clipping: float
    eps: float = DEFAULT_EPS
    clip_head: bool = False
    _model: nn.Module | None = field(default=None, init=False, repr=False, compare=False)
    _params: list[nn.Parameter] = field(default_factory=list, init=False, repr=False,
                                        compare=False)

    def __call__(self, state: StepState) -> None:
        if state.model is not self._model:
            if self._model is not None:
                raise ValueError("AGCHook is bound to another model")
            self._model = state.model
            self._params = parameters_to_clip(
                state.model, () if self.clip_head else [classifier_of(state.model)])
        clip_grads_(self._params, self.clipping, self.eps)



# ------------------------------------------------------------------- the rule (agc.rule)


@dataclass(frozen=True)
class RuleConfig:
    """Inputs of the ``agc.rule`` suite: seeded random cases plus one real NF model."""

    case_seeds: tuple[int, ...]
    dtypes: tuple[str, ...]  # "float32", "float64"
    lambdas: tuple[float, ...]
    model: str  # a registered NF model; its classifier must come back untouched
    model_batch: int
    model_resolution: int

    def dry_run(self) -> RuleConfig:
        return dataclasses.replace(self, case_seeds=self.case_seeds[:1], lambdas=self.lambdas[:1],
                                   model_batch=2, model_resolution=8)


@dataclass
class RuleReport:
    cases: int  # (case, dtype, lambda) combinations plus model checks, per implementation
    violations: list[str]  # of the implementation under test
    units_clipped: int  # in the model checks: shows the suite is not vacuous
    units_checked: int
    bad_caught: dict[str, int]  # known-bad name -> number of its violations (0 = not caught)


def _model_with_grads(cfg: RuleConfig, device: str, seed: int = 0) -> nn.Module:
    """The NF model with SkipInit gains at 1 (at 0 the branches get no gradient) and grads."""
    torch.manual_seed(seed)
    model = models.build(cfg.model, resolution=cfg.model_resolution).to(device)
    for name, p in model.named_parameters():
        if name.endswith("skip_gain"):
            nn.init.ones_(p)
    x = torch.randn(cfg.model_batch, 3, cfg.model_resolution, cfg.model_resolution,
                    device=device)
    y = torch.arange(cfg.model_batch, device=device) % model.fc.out_features
    nn.functional.cross_entropy(model(x), y).backward()
    return model


HookFactory = Callable[[float, float], StepHook]  # (clipping, eps) -> hook, as ``AGCHook``


def _hook_step(hook_factory: HookFactory) -> Callable[[nn.Module, float, float], None]:
    """``check_model_agc``'s clip step: a fresh hook from ``hook_factory``, one step."""

    def step(model: nn.Module, clipping: float, eps: float) -> None:
        hook = hook_factory(clipping, eps)
        hook(StepState(model, None, 0, torch.zeros(())))  # type: ignore[arg-type]

    return step


def rule_study(
    cfg: RuleConfig,
    device: str = "cpu",
    clip_fn: Callable[..., None] = clip_grads_,
    hook_factory: HookFactory = AGCHook,
    known_bad: dict[str, Callable[..., None]] | None = None,
) -> RuleReport:
    """Run the property suite on ``clip_fn`` (seeded random cases) and on ``hook_factory`` (a
    real NF model, classifier excluded), then on each known-bad implementation."""
    known_bad = KNOWN_BAD if known_bad is None else known_bad
    cases = []
    for seed in cfg.case_seeds:
        for dtype in cfg.dtypes:
            w, g = random_agc_case(seed, dtype=getattr(torch, dtype))
            cases += [([t.to(device) for t in w], [t.to(device) for t in g], lam)
                      for lam in cfg.lambdas]

    def suite(fn: Callable[..., None], step: Callable[..., None]) -> list[str]:
        out = [v for w, g, lam in cases for v in check_agc_invariants(fn, w, g, lam)]
        for lam in cfg.lambdas:
            out += check_model_agc(step, _model_with_grads(cfg, device), lam)
        return out

    violations = suite(clip_fn, _hook_step(hook_factory))
    model = _model_with_grads(cfg, device)
    clipped = checked = 0
    for lam in cfg.lambdas:
        for p in parameters_to_clip(model, [classifier_of(model)]):
            ratio = unitwise_norm(p.grad) / unitwise_norm(p.detach()).clamp_min(DEFAULT_EPS)
            clipped += int((ratio > lam).sum())
            checked += ratio.numel()
    bad_caught = {}
    for name, bad in known_bad.items():
        def bad_step(m: nn.Module, lam: float, eps: float, bad=bad) -> None:
            bad(parameters_to_clip(m, [classifier_of(m)]), lam, eps)

        bad_caught[name] = len(suite(bad, bad_step))
    return RuleReport(len(cases) + len(cfg.lambdas), violations, clipped, checked, bad_caught)


# ------------------------------------------------------------------------------ the grid


@dataclass(frozen=True)
class GridConfig:
    """The batch size x method x lambda study of the grid claims (``agc.*`` but ``agc.rule``).

    The learning rate scales linearly, ``lr = base_lr * B / base_batch`` (NFNets: 0.1 * B /
    256). Every batch size trains ``train.epochs``, but never fewer than ``min_steps``
    optimizer steps: a large batch gets more epochs (``epochs_at``) rather than too few steps
    to tell instability from under-training; its warm-up keeps the recipe's share of
    training. Methods: NF without AGC, NF with AGC at each lambda, and the BatchNorm twin.
    Margins are fixed in the claim configs before any result was seen.
    """

    nf_model: str  # registered NF-ResNet and its BN twin
    bn_model: str
    data: DataSpec
    resolution: int
    batch_sizes: tuple[int, ...]  # small to large
    lambdas: tuple[float, ...]
    seeds: tuple[int, ...]
    train: TrainConfig  # epochs, schedule, AMP...; batch_size, lr and seed are set per cell
    base_lr: float = 0.1
    base_batch: int = 256
    min_steps: int = 0  # every cell takes at least this many optimizer steps (see epochs_at)
    cpu_threads: int = 1  # fixed, so CPU runs are bit-reproducible and comparable
    eps: float = DEFAULT_EPS
    model_overrides: tuple[tuple[str, Any], ...] = ()  # (field, value) pairs for both twins
    # BN only at the largest batch: the verdicts and the baseline read BN there alone, its
    # smaller-batch cells only draw the plot's BN line (False: BN at every batch).
    bn_largest_batch_only: bool = False
    # Verdict margins in accuracy (fractions), fixed before any result was seen; they do not
    # change a run, so they are not part of the cells' cache keys.
    clearly_below: float = 0.05  # NF without AGC "ends clearly below" BN by at least this
    bn_margin: float = 0.03  # NF+AGC is "close to" BN: not worse by more than this
    learned_margin: float = 0.05  # a comparison says something only above chance + this

    def lr(self, batch_size: int) -> float:
        return self.base_lr * batch_size / self.base_batch

    def epochs_at(self, batch_size: int) -> float:
        """``train.epochs``, or as many as ``min_steps`` full batches of ``batch_size`` take."""
        steps_per_epoch = max(1, self.data.train_count // batch_size)  # the loop drops the last
        return max(self.train.epochs, self.min_steps / steps_per_epoch)

    def dry_run(self) -> GridConfig:
        """Every cell, one step each, on 64 generated 8 px images (batches 2, 4, 6, ...)."""
        return dataclasses.replace(
            self, data=self.data.dry_run(), resolution=8, min_steps=0,
            batch_sizes=tuple(2 * (i + 1) for i in range(len(self.batch_sizes))),
            train=dataclasses.replace(self.train, max_steps=1, amp=None, channels_last=False,
                                      compile=False, eval_batch_size=32))

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def chance(self) -> float:
        return self.data.chance


@dataclass(frozen=True)
class AGCCell:
    """One training run of the study."""

    method: str  # NF | NF+AGC | BN
    batch_size: int
    seed: int
    lam: float | None = None  # AGC's clipping threshold (NF+AGC only)
    clip_head: bool = False  # AGC also clips the classifier (the ablation)

    def label(self) -> str:
        extra = f" lam={self.lam:g}" if self.lam is not None else ""
        return f"{self.method}{extra}{' +head' if self.clip_head else ''} B={self.batch_size} " \
               f"s={self.seed}"


def grid_cells(cfg: GridConfig) -> list[AGCCell]:
    """NF, NF+AGC at every lambda and BN, at every batch size and seed (BN at the largest
    batch only with ``cfg.bn_largest_batch_only``)."""
    cells = []
    for b in cfg.batch_sizes:
        for s in cfg.seeds:
            cells.append(AGCCell(NF, b, s))
            cells += [AGCCell(AGC, b, s, lam) for lam in cfg.lambdas]
            if b == max(cfg.batch_sizes) or not cfg.bn_largest_batch_only:
                cells.append(AGCCell(BN, b, s))
    return cells


def skip_final_cells(cfg: GridConfig, lam: float) -> list[AGCCell]:
    """AGC that also clips the classifier, at the largest batch, at ``lam``, every seed."""
    return [AGCCell(AGC, cfg.batch_sizes[-1], s, lam, clip_head=True) for s in cfg.seeds]


def tiny_batch_cells(cfg: GridConfig) -> list[AGCCell]:
    """NF (no AGC) and BN at every batch size of ``cfg`` (the tiny one and its reference)."""
    return [AGCCell(m, b, s) for b in cfg.batch_sizes for s in cfg.seeds for m in (NF, BN)]


def cell_config(cfg: GridConfig, cell: AGCCell) -> TrainConfig:
    recipe = dataclasses.replace(cfg.train, batch_size=cell.batch_size,
                                 lr=cfg.lr(cell.batch_size), seed=cell.seed,
                                 cpu_threads=cfg.cpu_threads)
    epochs = cfg.epochs_at(cell.batch_size)
    if epochs == cfg.train.epochs:
        return recipe
    stretch = epochs / cfg.train.epochs  # the warm-up keeps its share of training
    return dataclasses.replace(recipe, epochs=epochs,
                               warmup_epochs=cfg.train.warmup_epochs * stretch)


def _model_overrides(cfg: GridConfig) -> dict[str, Any]:
    return {**dict(cfg.model_overrides), "num_classes": cfg.num_classes,
            "resolution": cfg.resolution}


def cell_key(cfg: GridConfig, cell: AGCCell, device: str) -> dict[str, Any]:
    """Everything that determines a cell's run: model config, training config, data, method,
    lambda, eps, clip-head flag, seed, device class and (on the CPU) the thread count."""
    name = cfg.bn_model if cell.method == BN else cfg.nf_model
    with torch.device("meta"):  # the resolved architecture config, without allocating it
        model_cfg = getattr(models.build(name, **_model_overrides(cfg)), "cfg", None)
    return {
        "study": "agc-grid",
        "model": name,
        "model_config": model_cfg if model_cfg is not None else _model_overrides(cfg),
        "train": cell_config(cfg, cell),
        "data": cfg.data,
        "resolution": cfg.resolution,
        "method": cell.method,
        "lam": cell.lam,
        "eps": cfg.eps if cell.method == AGC else None,
        "clip_head": cell.clip_head,
        "seed": cell.seed,
        "device_class": device_class(device),
        "cpu_threads": cfg.cpu_threads if device == "cpu" else None,
    }


def cell_job(cfg: GridConfig, cell: AGCCell, data: DatasetSplits, device: str) -> TrainJob:
    """One cell as a training job: the model built after seeding, AGC as a hook if asked."""
    name = cfg.bn_model if cell.method == BN else cfg.nf_model
    hooks = [AGCHook(cell.lam, cfg.eps, cell.clip_head)] if cell.method == AGC else []
    recipe = cell_config(cfg, cell)
    return TrainJob(cell_key(cfg, cell, device),
                    functools.partial(models.build, name, **_model_overrides(cfg)),
                    data.train, data.test, recipe, device, before_step=hooks,
                    desc=cell.label(), cost=recipe.epochs * len(data.train[0]))


def train_agc_cells(
    cfg: GridConfig,
    cells: Iterable[AGCCell],
    *,
    device: str,
    load: Callable[[], DatasetSplits],
    use_cache: bool = True,
    executor: ExecutorSpec | None = None,
) -> pd.DataFrame:
    """Run (or reuse) every cell through ``runs.jobs.run_jobs``; one row per cell, in order."""
    data = load()
    return run_table(cells, lambda c: cell_job(cfg, c, data, device),
                     lambda c, r: _row(cfg, c, r), executor=executor, use_cache=use_cache)


def _row(cfg: GridConfig, cell: AGCCell, rec: TrainRecord) -> dict[str, Any]:
    failed = rec.diverged or not math.isfinite(rec.test_acc)
    return {
        "method": cell.method,
        "batch_size": cell.batch_size,
        "lam": cell.lam if cell.lam is not None else math.nan,
        "clip_head": cell.clip_head,
        "seed": cell.seed,
        "lr": cfg.lr(cell.batch_size),
        "test_acc": rec.test_acc,
        "diverged": failed,
        # A diverged run counts as chance in every mean and comparison.
        "acc": cfg.chance if failed else rec.test_acc,
        "final_train_loss": rec.loss_curve[-1][1] if rec.loss_curve else math.nan,
        "steps": rec.steps,
        "train_seconds": rec.train_seconds,
        "from_cache": rec.from_cache,
    }


# ------------------------------------------------------------------------------ tables


def grid_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of accuracy (diverged = chance) over seeds, per method, batch, lambda."""
    keys = ["method", "batch_size", "lam", "clip_head"]
    g = runs.groupby(keys, dropna=False, sort=False)
    out = g.agg(acc_mean=("acc", "mean"), acc_std=("acc", "std"), seeds=("seed", "count"),
                diverged=("diverged", "sum"), lr=("lr", "first"),
                final_train_loss=("final_train_loss", "mean")).reset_index()
    return out.sort_values(["batch_size", "method", "lam", "clip_head"]).reset_index(drop=True)


def benefit_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per batch size: best lambda, mean accuracy of NF, NF+AGC(best lambda), BN, and AGC's
    benefit = acc(NF+AGC best) - acc(NF)."""
    rows = []
    for b, lam in best_lambdas(runs).items():
        nf, agc, bn = (accuracies(runs, NF, b), accuracies(runs, AGC, b, lam),
                       accuracies(runs, BN, b))
        rows.append({"batch_size": b, "best_lam": lam, "nf": mean(nf), "agc_best": mean(agc),
                     "bn": mean(bn), "benefit": mean(agc) - mean(nf)})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class BNCostConfig:
    """``agc.bn_costs``: BN vs NF step time, and accuracy at a tiny batch against a reference
    batch (``accuracy.batch_sizes = (tiny, reference)``, same epochs, lr scaled linearly)."""

    accuracy: GridConfig  # NF and BN cells only; its lambdas are unused
    timing: StepTimingConfig
    degrade_margin: float  # accuracy drop that counts as "degrades", fixed a priori
    # How far time(BN)/time(NF) must sit from 1 to say which step is faster: the spread the
    # ratio shows between machines and runs of this profile (``verdicts.step_time_decision``).
    speed_margin: float

    def dry_run(self) -> BNCostConfig:
        return dataclasses.replace(self, accuracy=self.accuracy.dry_run(),
                                   timing=self.timing.dry_run())


# ------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class StepTimingConfig:
    """BN vs NF training-step time: same shape, interleaved rounds, one process."""

    nf_model: str
    bn_model: str
    batch_size: int
    resolution: int
    rounds: int  # NF, BN, NF, BN, ...: each round gives one ratio; the median is reported
    min_run_time: float  # seconds per measurement
    cpu_threads: int = 1
    amp: str | None = None  # "bf16" | "fp16" | None, as TrainConfig.amp; CUDA only
    channels_last: bool = False  # CUDA only
    compile: bool = False  # also time both twins under torch.compile (CUDA only)
    model_overrides: tuple[tuple[str, Any], ...] = ()

    def dry_run(self) -> StepTimingConfig:
        return dataclasses.replace(self, batch_size=2, resolution=8, rounds=1, min_run_time=0.0,
                                   amp=None, channels_last=False, compile=False)


def time_bn_vs_nf(cfg: StepTimingConfig, device: str) -> pd.DataFrame:
    """One row per round: NF and BN seconds per training step and their ratio BN/NF, eager,
    and with ``compiled_`` columns when the pair is also timed compiled."""
    built = {}
    for name in (cfg.nf_model, cfg.bn_model):
        torch.manual_seed(0)
        built[name] = models.build(name, **{**dict(cfg.model_overrides),
                                            "resolution": cfg.resolution})
    eager = timing.TimingSetup(device=device, amp_dtype=autocast_dtype(cfg.amp, device),
                               channels_last=cfg.channels_last and device == "cuda",
                               cpu_threads=cfg.cpu_threads, min_run_time=cfg.min_run_time)
    # Compiled too where asked (CUDA): eager NF pays for its extra unfused ops (weight
    # standardisation, gains) in kernel launches, which compilation fuses away as deployed.
    setups = {"": eager}
    if cfg.compile and device == "cuda":
        setups["compiled_"] = dataclasses.replace(eager, compile=True, warmup=3)
    num_classes = built[cfg.nf_model].fc.out_features
    rows = []
    for r in range(cfg.rounds):
        row: dict[str, float] = {"round": r}
        for tag, setup in setups.items():
            nf, bn = (timing.time_train_step(built[name], cfg.batch_size, cfg.resolution,
                                             num_classes, setup).median
                      for name in (cfg.nf_model, cfg.bn_model))
            row.update({f"{tag}nf_step_s": nf, f"{tag}bn_step_s": bn,
                        f"{tag}bn_over_nf": bn / nf})
        rows.append(row)
    return pd.DataFrame(rows)


def step_timing_cost(cfg: StepTimingConfig) -> dict[str, Any]:
    """The GPU time of ``time_bn_vs_nf`` (``harness.costs``): both twins' steps each round,
    eager and, where asked, compiled (plus compiling both twins)."""
    from harness import costs

    seconds, setups = 0.0, 1 + int(cfg.compile)
    for name in (cfg.nf_model, cfg.bn_model):
        macs, ops = costs.forward_work(functools.partial(
            models.build, name, **{**dict(cfg.model_overrides), "resolution": cfg.resolution}),
            cfg.resolution)
        for i in range(cfg.rounds):
            seconds += setups * costs.network_timing_seconds(
                macs, cfg.batch_size, ops, cfg.min_run_time, phases=("train_step",),
                autotune=i == 0)
    out = {"agc.step_timing": costs.Phase("timing", f"BN vs NF steps, {cfg.rounds} rounds × "
                                          f"{setups} setups", seconds)}
    if cfg.compile:
        out["agc.compile"] = costs.compile_phase("NF and BN twins compiled", 2)
    return out


# --------------------------------------------------------------------------------- plot


def plot_grid(runs: pd.DataFrame, chance: float):
    """Accuracy vs batch size, one line per method (NF+AGC at the best lambda per batch, and
    each lambda faintly), mean over seeds with min-max bars; diverged runs count as chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    best = best_lambdas(runs)
    # Every batch that has runs, not only those with NF+AGC runs: a batch without AGC runs
    # still shows its NF and BN points (and says that AGC has none there).
    batches = sorted(int(b) for b in runs.batch_size.unique())
    not_drawn: list[str] = []

    def line(values: list[list[float]], label: str, **kw) -> None:
        """Mean and seed range per batch, at the batches that have runs with finite
        accuracies; the others are named in a note under the plot."""
        at = []
        for b, v in zip(batches, values, strict=True):
            if not v:
                not_drawn.append(f"{label} at B={b}: no runs")
            elif not all(math.isfinite(x) for x in v):
                not_drawn.append(f"{label} at B={b}: NaN accuracy")
            else:
                at.append((b, v))
        if not at:
            return
        means = [mean(v) for _, v in at]
        # clipped at zero: three seeds at exactly chance give a mean a rounding step above
        # their minimum, and matplotlib refuses a negative error bar
        lo = [max(0.0, m - min(v)) for m, (_, v) in zip(means, at, strict=True)]
        hi = [max(0.0, max(v) - m) for m, (_, v) in zip(means, at, strict=True)]
        ax.errorbar([b for b, _ in at], means, yerr=[lo, hi], capsize=3, marker="o",
                    label=label, **kw)

    for lam in sorted(runs[runs.method == AGC].lam.dropna().unique()):
        ax.plot(batches, [mean(accuracies(runs, AGC, b, lam)) for b in batches],
                lw=0.8, alpha=0.35, ls="--", label=f"NF+AGC λ={lam:g}")
    line([accuracies(runs, NF, b) for b in batches], "NF, no AGC", color="tab:red")
    line([accuracies(runs, AGC, b, best[b]) if b in best else [] for b in batches],
         "NF+AGC, best λ", color="tab:green")
    line([accuracies(runs, BN, b) for b in batches], "BN", color="tab:blue")
    ax.axhline(chance, color="grey", lw=0.8, ls=":", label="chance (= diverged)")
    for b in batches:
        at_best = mean(accuracies(runs, AGC, b, best[b])) if b in best else math.nan
        if math.isfinite(at_best):
            ax.annotate(f"λ*={best[b]:g}", (b, at_best), textcoords="offset points",
                        xytext=(4, 6), fontsize=7, color="tab:green")
    if not_drawn:
        ax.text(0.01, 0.01, "not drawn: " + "; ".join(not_drawn), transform=ax.transAxes,
                fontsize=6, va="bottom", wrap=True)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.set_xlabel("batch size (lr scaled linearly)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    ax.set_title("AGC at large batch")
    fig.tight_layout()
    return fig

"""Fast and Accurate Model Scaling (Dollár, Singh, Girshick, CVPR 2021; claims/README.md §1).

Scaling a network's flops by s through depth d, width w and resolution r changes its params and
activations differently (per conv: f = d·w²·r², p = d·w², a = d·w·r²). The paper's claims:
the closed forms hold; runtime on GPUs follows activations, not flops; at equal flops width
scaling is fastest. Implementations: ``harness.scaling``, ``harness.complexity``,
``harness.timing``; the population logic is in ``harness.scaling.study``,
the verdict rules in ``harness.scaling.verdicts``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics

import pytest

from harness import bands, models, scaling, stats
from harness.bands import Measured
from harness.claim import ACCURACY, CORRELATION, EXACT, RATIO, SHARE, Claim, Tolerance
from harness.costs import placeholder_data
from harness.data import DataSpec
from harness.odds import resample_lists, verdict_odds
from harness.scaling.study import (
    DISPATCH_BOUND_BELOW,
    LawCheckConfig,
    PopulationConfig,
    ScaledTrainingConfig,
    accuracy_table,
    batch_doubling,
    correlation_table,
    dwr_most_acts_among_r_compounds,
    equal_flops_groups,
    flops_ratio,
    inference_times,
    inference_timing_cost,
    law_study,
    plot_runtime_vs_complexity,
    population_cost,
    runtime_population,
    scaled_config,
    scaled_jobs,
    timing_doubling,
    train_scaled,
)
from harness.scaling.verdicts import (
    acts_predict_verdict,
    complexity_laws_verdict,
    dWr_verdict,
    order_verdict,
    w_fastest_verdict,
)
from harness.train import TrainConfig

# ------------------------------------------------------------------- the complexity laws

COMPLEXITY_LAWS = Claim(
    id="scaling.complexity_laws",
    statement="Scaling flops by s gives f ∝ s, p ∝ s^(e_d+e_w), a ∝ s^(e_d+e_w/2+e_r); fast "
              "compound scaling with α gives p ∝ s^((1+α)/2) and a ∝ s^((2−α)/2), up to rounding.",
    source="Dollár et al. 2021, §3 (Table 1) and §4; pycls scaler rounding",
    scope="any",
    paper={"dWr (α=0.8)": "p ∝ s^0.9, a ∝ s^0.6",
           "RegNetY-4GF ×4 dWr": "15.61 GF, 68.1M params, 26.5M acts"},
)

LAW_CONFIGS = {
    "smoke": LawCheckConfig(
        bases=("anynet_tiny_x", "anynet_tiny_y", "effnet_tiny"), scales=(2.0, 4.0, 16.0),
        random_examples=60),
    "full": LawCheckConfig(
        bases=("regnetx_200mf", "regnety_200mf", "regnety_4gf", "efficientnet_b0"),
        scales=(2.0, 4.0, 16.0), random_examples=200),
}


@pytest.mark.claim(COMPLEXITY_LAWS)
def test_complexity_laws(evidence, profile):
    cfg = profile.pick(LAW_CONFIGS)
    evidence.record_config(cfg)
    report = law_study(cfg)
    evidence.metric("cells_checked", report.cells, EXACT)
    evidence.metric("law_violations", len(report.violations), EXACT, key=True)
    for quantity, gap in report.max_closed_form_gap.items():
        evidence.metric(f"max_closed_form_gap_{quantity}", gap, Tolerance(
            why="ratios of exact integer counts of deterministic configs; 1e-9 covers float "
                "rounding only", abs=1e-9, domain=(0, math.inf)))
    ex = report.worked_example
    evidence.metric("worked_example_gflops", ex.flops / 1e9, EXACT, paper="15.61", key=True)
    evidence.metric("worked_example_mparams", ex.params / 1e6, EXACT, paper="68.1")
    evidence.metric("worked_example_macts", ex.acts / 1e6, EXACT, paper="26.5")
    evidence.metric("efficientnet_remark_max_gap", report.efficientnet_gap, EXACT,
                    paper="1.2/1.1/1.15 vs 1.26/1.12/1.12")
    for v in report.violations[:5]:
        evidence.note(v)
    judged = complexity_laws_verdict(report.cells, report.violations, ex.flops, ex.params,
                                     ex.acts, report.efficientnet_gap)
    evidence.decide(judged.holds, judged.reason)


# ------------------------------------------------------- runtime follows activations

ACTS_PREDICT_RUNTIME = Claim(
    id="scaling.acts_predict_runtime",
    statement="Across networks scaled by every strategy from several bases, runtime correlates "
              "almost perfectly with activations and much less with flops or params.",
    source="Dollár et al. 2021, Fig. 1 and §5 (8 V100s, PyTorch)",
    scope="gpu",
    paper={"r(time, flops)": "≈0.81 (secondary source)", "r(time, acts)": "near 1 (unverified)",
           "r(time, params)": "lowest (unverified)"},
)

POPULATION = {
    "smoke": PopulationConfig(
        bases=("anynet_tiny_x", "anynet_tiny_y", "effnet_tiny"),
        strategies=scaling.STRATEGIES, scales=(2.0, 4.0, 8.0),
        batch_size=8, min_run_time=0.15, cpu_threads=1),
    "full": PopulationConfig(
        bases=("regnetx_200mf", "regnety_200mf", "efficientnet_b0"),
        strategies=scaling.STRATEGIES, scales=(2.0, 4.0, 8.0),
        # B=256: large enough for the 200MF bases to keep an H100 busy; the t(2B)/t(B) check
        # below says whether it was (a dispatch-bound population is flagged, not trusted).
        batch_size=256, min_run_time=0.5, amp="bf16", channels_last=True),
}

DOUBLING_WHY = ("smallest t(2B)/t(B) over the bases, both phases: 2 when the device's work "
                "sets the time, towards 1 when kernel launches do")


def record_batch_doubling(evidence, pop, device: str) -> bool:
    """Record the population's batch-doubling check; True when it was dispatch-bound."""
    return bands.record_min_doubling(evidence, batch_doubling(pop), DOUBLING_WHY, device,
                                      "on the CPU the time always follows the work, and load "
                                      "moves it")

# Run-to-run spread of each CPU-timed r over 7 smoke runs (session 2's reference, the 3
# kernel-path runs with a training job beside them, two regenerations, one clean-clone CI run):
# the kernel-path runs alone under-state how far load moves small-net timings.
R_RUNS = {
    "r_inference_flops": (0.494, 0.681, 0.624, 0.694, 0.781, 0.811, 0.630),
    "r_inference_params": (0.361, 0.435, 0.503, 0.447, 0.645, 0.659, 0.402),
    "r_inference_acts": (0.750, 0.816, 0.794, 0.862, 0.837, 0.809, 0.873),
    "r_train_step_flops": (0.623, 0.533, 0.781, 0.641, 0.673, 0.712, 0.546),
    "r_train_step_params": (0.447, 0.475, 0.484, 0.548, 0.558, 0.549, 0.410),
    "r_train_step_acts": (0.823, 0.746, 0.862, 0.791, 0.851, 0.860, 0.811),
}


def r_tol(name: str, device: str) -> Measured:
    if device == "cuda":  # unmeasured so far: no GPU has run this yet
        return Measured(what="Pearson r of GPU-timed runtimes", domain=CORRELATION, floor=0.05)
    runs = R_RUNS.get(name, ())
    floor = 3 * math.sqrt(2) * statistics.stdev(runs) if len(runs) > 1 else 0.3
    return Measured(
        what=f"Pearson r of CPU-timed runtimes (1 thread). Floor 3·√2·σ over 7 smoke runs "
             f"({', '.join(f'{r:.3f}' for r in runs)}) = {floor:.3f}: load on the shared "
             f"2-core CPU reshapes small-net timings",
        domain=CORRELATION, floor=floor)


DISPATCH_NOTE = (f"t(2B)/t(B) < {DISPATCH_BOUND_BELOW} for some base, so runtime followed "
                 "kernel launches, not the network: raise the batch")

BEST_TOL = Tolerance(
    why="1 when r(acts) exceeds r(flops) and r(params) in both phases (GPU timing)",
    domain=(0, 1))
CPU_BEST = ("on the 2-core CPU it was 1 in 8 of 9 runs (5 earlier runs, 3 kernel paths, the "
            "regeneration), then 0 in a clean-clone CI run: inference r(acts) 0.809 vs r(flops) "
            "0.811, a near tie; an exact gate on a CPU timing is not portable")


def _population_cost(evidence, profile) -> None:
    """On a dry run, the full population's timing cost (one phase, shared by both claims)."""
    evidence.full_size_phases(lambda: {
        "scaling.population": population_cost(profile.unshrunk(POPULATION))})


@pytest.mark.claim(ACTS_PREDICT_RUNTIME)
def test_acts_predict_runtime(evidence, profile):
    cfg = profile.pick(POPULATION)
    evidence.record_config(cfg)
    _population_cost(evidence, profile)
    pop = runtime_population(cfg, profile.device)
    evidence.table("population.csv", pop)
    for r in pop[pop.train_step_microbatches > 1].itertuples():
        evidence.note(f"{r.base} {r.strategy} ×{r.s:g}: its training step would not fit the "
                      f"device's memory in one pass; timed as {r.train_step_microbatches} "
                      f"micro-batches, the same per-image work (planned peak "
                      f"{r.predicted_peak_gib:.1f} GiB)")
    table = correlation_table(pop)
    evidence.table("correlations.csv", table)
    evidence.figure("runtime_vs_complexity.png", plot_runtime_vs_complexity(pop, table))
    evidence.metric("networks", len(pop), EXACT)
    for row in table.itertuples():
        name = f"r_{row.phase}_{row.metric}"
        evidence.metric(name, row.r, r_tol(name, profile.device),
                        key=row.phase == "inference",
                        paper={"flops": "≈0.81", "acts": "≈1"}.get(row.metric))
    r = {phase: dict(zip(rows.metric, rows.r)) for phase, rows in table.groupby("phase")}
    judged = acts_predict_verdict(r, record_batch_doubling(evidence, pop, profile.device),
                                  DISPATCH_NOTE)
    if profile.device == "cuda":
        evidence.metric("acts_is_best_predictor", int(judged.acts_best), BEST_TOL, key=True)
    else:
        evidence.observe("acts_is_best_predictor", int(judged.acts_best), CPU_BEST)
    evidence.decide(judged.holds, judged.reason)


# ---------------------------------------------------------- width scaling is fastest

W_FASTEST = Claim(
    id="scaling.w_fastest",
    statement="At equal flops, w scaling produces the fewest activations and the shortest "
              "runtime.",
    source="Dollár et al. 2021, §4 (Table 1) and Fig. 4",
    scope="gpu",
    paper={"a(w)": "∝ s^0.5 (fewest)", "a(dwr)": "∝ s^(5/6)"},
)


@pytest.mark.claim(W_FASTEST)
def test_w_fastest(evidence, profile):
    cfg = profile.pick(POPULATION)
    evidence.record_config(cfg)
    _population_cost(evidence, profile)
    pop = runtime_population(cfg, profile.device)
    groups = equal_flops_groups(pop)
    fewest_acts = sum(g.loc[g.acts.idxmin(), "strategy"] == "w" for g in groups)
    fastest = sum(g.loc[g.inference_s.idxmin(), "strategy"] == "w" for g in groups)
    fastest_train = sum(g.loc[g.train_step_s.idxmin(), "strategy"] == "w" for g in groups)
    dwr_most = sum(dwr_most_acts_among_r_compounds(g) for g in groups)
    n = len(groups)
    evidence.metric("groups", n, EXACT)
    evidence.metric("w_fewest_acts_share", fewest_acts / n, EXACT, key=True)
    # (exact: counted from complexity, not timed)
    time_tol = Measured(what="share of equal-flops groups where w is fastest (GPU timing)",
                        domain=SHARE, floor=1 / 9)
    for name, share in (("w_fastest_inference_share", fastest / n),
                        ("w_fastest_train_share", fastest_train / n)):
        if profile.device == "cuda":
            evidence.metric(name, share, time_tol, key=True)
        else:
            evidence.observe(name, share, "GPU-scoped timing; on the 2-core CPU these shares "
                                          "moved over 0.11-0.56 across 3 kernel-path runs with "
                                          "load beside them: a band would cover [0, 1]")
    evidence.metric("dwr_most_acts_share", dwr_most / n, EXACT)
    bound = record_batch_doubling(evidence, pop, profile.device)
    if bound:
        evidence.note(f"the timing was dispatch-bound: {DISPATCH_NOTE}")
    judged = w_fastest_verdict(n, fewest_acts, fastest, fastest_train, dwr_most, bound)
    evidence.decide(judged.holds, judged.reason)


# ------------------------------------------------- dWr matches dwr's accuracy, faster

DWR_MATCHES_DWR_FASTER = Claim(
    id="scaling.dWr_matches_dwr_faster",
    statement="dWr-scaled models (α = 0.8) reach accuracy comparable to dwr-scaled ones (the "
              "most accurate) with clearly lower runtime; w and dWr both beat dwr on runtime, "
              "and dWr is more accurate than w.",
    source="Dollár et al. 2021, §6 (Figs. 6-8, Table 3): EfficientNet-B0, RegNetY/Z-500MF "
           "scaled to 4GF/16GF on ImageNet",
    scope="any",  # accuracy: any device; the speed half is judged on GPUs only (below)
    paper={"acc(dWr) vs acc(dwr)": "comparable", "runtime(dWr)": "clearly below dwr"},
    trained=True,
)

# Smoke base: a narrow RegNetY-like net at 16 px with four blocks in its last stage, so that
# at s = 4 the three strategies are three distinct flops-matched networks: dWr's depth step
# (×4^0.1 = 1.15) turns 4 blocks into 5, which a base of depth ≤ 2 rounds away (w and dWr were
# one network there). Its resolution step (×1.07) still rounds to 16 px, so at this scale dWr
# differs from w in depth and width only; dwr renders at 20 px. Zero-initialised final BNs let
# the deeper stage train from the identity within the smoke budget.
SMALL_BASE = models.config_of("anynet_tiny_y", stem_type="cifar", depths=(1, 2, 4),
                               widths=(16, 32, 64), group_widths=(8, 8, 8), resolution=16,
                               zero_init_final_bn=True)
OTHER_SMALL_BASE = models.config_of("effnet_tiny", resolution=16)
CIFAR_BASE = models.config_of("anynet_tiny_y", stem_type="cifar", depths=(1, 2, 4),
                               widths=(32, 64, 128), group_widths=(16, 16, 16), resolution=32)
CIFAR_OTHER_BASE = models.config_of("effnet_tiny", resolution=32)

TRAINED = {
    # Smoke: 3 seeds of 4000 generated images ("medium": learnable at 16 px, docs/data.md),
    # 6 epochs; 15 runs side by side on the 2 cores. Seed σ of a net's accuracy measured over 5
    # seeds of this design: 0.02-0.05, so the Welch bound on dWr − dwr with 3 seeds each
    # detects about ±0.07 (the reason states the design's own figure).
    # Only the strategies the verdict reads are trained here (w, 3 runs and ~35 s of the budget
    # on 2 cores, was context: "dWr beats w"); the full profile trains w too.
    "smoke": ScaledTrainingConfig(
        bases=(SMALL_BASE, OTHER_SMALL_BASE), s=4.0, strategies=("dwr", "dWr"),
        data=DataSpec("synthetic", train_size=4000, test_size=1000, difficulty="medium"),
        # NHWC: 14-30% faster steps on the CPU than NCHW for these nets (same math).
        train=TrainConfig(epochs=6, batch_size=64, lr=0.1, warmup_epochs=1, channels_last=True),
        seeds=(0, 1, 2), accuracy_margin=0.03, timing_batch=32),
    # Full: CIFAR-10, 3 seeds; recipe as the paper's (SGD 0.9, warm-up, label smoothing 0.1,
    # mixed precision), shortened to 15 epochs so 15 runs fit in ~5 GPU minutes.
    "full": ScaledTrainingConfig(
        bases=(CIFAR_BASE, CIFAR_OTHER_BASE), s=4.0, strategies=("w", "dwr", "dWr"),
        data=DataSpec("cifar10"),
        train=TrainConfig(epochs=15, batch_size=512, lr=0.8, warmup_epochs=2, augment=True,
                          amp="bf16", channels_last=True),
        seeds=(0, 1, 2), accuracy_margin=0.01, timing_batch=256),
}

ACC_TOL = Measured(
    what="mean test accuracy over seeds (a diverged run counts as chance). A run is "
         "bit-identical on one machine, but another CPU's kernels move it like a new seed",
    domain=ACCURACY, floor=0.01, pool="acc_")
RATIO_TOL = Measured(
    what="ratio of medians timed in one run (GPU); floor 10% relative for clocks and load",
    domain=RATIO, floor_rel=0.1)
CPU_TIMING = (
    "speed is GPU-scoped; on the 2-core CPU these ratios swing with load and kernel path: 3 "
    "kernel-path runs and a regeneration of this design (NHWC) gave dWr/dwr inference "
    "0.69-0.82, epoch 0.58-0.84 (NCHW before: inference 0.62-0.74, w/dwr 0.58-0.71, epoch "
    "0.47-0.70), more than any band that still excludes a real change; the benchmarks gate "
    "speed")


FLOPS_TOL = Tolerance(
    why="flops of a scaled config over its base's: deterministic arithmetic on the rounded "
        "widths, depths and resolution; 1e-9 relative only absorbs float formatting",
    rel=1e-9, domain=RATIO)


def _record_budgets(evidence, nets: dict, base_name: str = "base0") -> dict:
    """Each scaled net's flops over its base's (scaled_config matches them to s as closely as
    rounding allows), and a note where rounding makes two strategies the same network.
    Returns the ratios by (model, strategy)."""
    base = nets[(base_name, "base")]
    ratios = {(m, st): flops_ratio(nets[(m, "base")], net)
              for (m, st), net in nets.items() if st != "base"}
    for (m, st), ratio in ratios.items():
        evidence.metric(f"flops_ratio_{m}_{st}", ratio, FLOPS_TOL)
    scaled = {st: net for (m, st), net in nets.items() if m == base_name and st != "base"}
    for a, b in itertools.combinations(scaled, 2):
        if scaled[a] == scaled[b]:
            evidence.note(f"at this scale {a} and {b} round to the same network "
                          f"(depths {scaled[a].depths}, widths {scaled[a].widths}, "
                          f"{scaled[a].resolution} px; base {base.resolution} px): "
                          f"the depth/resolution steps are below one rounding step")
    return ratios


def _train_cells(cfg, cells, profile, load_data, executor, evidence):
    full = profile.unshrunk(TRAINED)  # a dry run prints what the full-size runs would cost
    evidence.full_size_jobs(lambda: list(scaled_jobs(
        full, {f"{m}/{st}": scaled_config(full.bases[int(m.removeprefix("base"))], st, full.s)
               for (m, st) in cells}, device="cpu", load_data=placeholder_data).values()),
        cells_per_gpu=1)
    # The dWr claim reads these runs' epoch times: one run per GPU, never sharing it.
    records = train_scaled(cfg, {f"{m}/{st}": net for (m, st), net in cells.items()},
                           device=profile.device, load_data=load_data, use_cache=profile.use_cache,
                           executor=dataclasses.replace(executor, cells_per_gpu=1))
    return {(*name.split("/"), seed): rec for (name, seed), rec in records.items()}


@pytest.mark.claim(DWR_MATCHES_DWR_FASTER)
def test_dWr_matches_dwr_faster(evidence, profile, load_data, executor):
    cfg = profile.pick(TRAINED)
    evidence.record_config(cfg, cfg.seeds)
    base = cfg.bases[0]
    nets = {("base0", st): scaled_config(base, st, cfg.s) for st in ("base", *cfg.strategies)}
    budgets = _record_budgets(evidence, nets)
    full = profile.unshrunk(TRAINED)
    evidence.full_size_phases(lambda: {"scaling.dWr_inference": inference_timing_cost(
        full, {st: scaled_config(full.bases[0], st, full.s) for st in ("base", *full.strategies)})})
    table = accuracy_table(_train_cells(cfg, nets, profile, load_data, executor, evidence))
    evidence.table("accuracy.csv", table)
    chance = cfg.data.chance  # a diverged run counts as chance
    acc = {st: table[table.strategy == st].sort_values("seed").test_acc.fillna(chance).tolist()
           for st in ("base", *cfg.strategies)}
    evidence.baseline(acc["base"], chance, "the unscaled base")
    for st, values in acc.items():
        evidence.metric(f"acc_{st}", stats.summarize(values).mean, ACC_TOL,
                        key=st in ("dWr", "dwr"), samples=values)
    times = inference_times({st: n for (_, st), n in nets.items()}, cfg.timing_batch,
                            profile.device, cfg.timing_min_run_time, cfg.train.amp,
                            cfg.train.channels_last)
    epoch = table.groupby("strategy").seconds_per_epoch.median()
    ratios = {"inference_ratio_dWr_over_dwr": times["dWr"] / times["dwr"],
              "epoch_time_ratio_dWr_over_dwr": epoch["dWr"] / epoch["dwr"]}
    if "w" in times:
        ratios["inference_ratio_w_over_dwr"] = times["w"] / times["dwr"]
    for name, ratio in ratios.items():
        if profile.device == "cuda":
            evidence.metric(name, ratio, RATIO_TOL, key=name.startswith("inference_ratio_dWr"))
        else:
            evidence.observe(name, ratio, CPU_TIMING)
    bound = _record_timing_doubling(evidence, cfg, nets, profile.device)

    def judge(accuracies):
        return dWr_verdict(accuracies, times, epoch.to_dict(), cfg.accuracy_margin,
                           judge_speed=profile.device == "cuda", chance=chance,
                           dispatch_bound=bound, dispatch_note=TIMING_DOUBLING_NOTE)

    j = judge(acc)
    flops = ", ".join(f"{st} {budgets[('base0', st)]:.2f}x" for st in cfg.strategies)
    # Redraws of the seeds move the accuracies; the timings are one measurement.
    odds = verdict_odds(lambda idx: judge(resample_lists(acc, idx)).holds, len(acc["dwr"]))
    evidence.decide(j.holds, f"{j.reason}; flops over the base (target {cfg.s:g}x): {flops}", odds)


TIMING_DOUBLING_WHY = ("smallest t(2B)/t(B) of dWr and dwr, inference at the timing batch and a "
                       "training step at the training batch: 2 when the device's work sets the "
                       "time, towards 1 when kernel launches do")
TIMING_DOUBLING_NOTE = (f"t(2B)/t(B) < {DISPATCH_BOUND_BELOW}: the runtimes followed kernel "
                        "launches, not the networks; raise timing_batch / the batch size")


def _record_timing_doubling(evidence, cfg, nets, device: str) -> str:
    """The dispatch-bound rule on the timings the verdict compares (dWr and dwr). On CUDA the
    smallest t(2B)/t(B) is guarded and a dispatch-bound network named (returned: the speed
    half is then not judged); on the CPU it is only reported (returns '')."""
    doubling = timing_doubling({st: nets[("base0", st)] for st in ("dWr", "dwr")},
                               cfg.timing_batch, cfg.train.batch_size, device,
                               cfg.timing_min_run_time, cfg.train.amp, cfg.train.channels_last)
    evidence.table("batch_doubling.csv", doubling)
    bands.record_min_doubling(evidence, float(doubling.doubling.min()), TIMING_DOUBLING_WHY,
                               device, "on the CPU only reported, as the runtime ratios are")
    if device != "cuda":
        return ""
    flagged = [f"{r.network} (inference {r.inference:.2f}, train step {r.train_step:.2f})"
               for r in doubling[doubling.dispatch_bound].itertuples()]
    if flagged:
        evidence.note(f"dispatch-bound timing, speed not judged: {'; '.join(flagged)}")
    return ", ".join(flagged)


# ---------------------------------------------------- scaling keeps the accuracy order

ORDER_PRESERVED = Claim(
    id="scaling.order_preserved",
    statement="Scaling keeps the base models' accuracy order.",
    source="Dollár et al. 2021, §6 (Fig. 8: RegNetZ > RegNetY > EfficientNet at every flops)",
    scope="any",
    paper={"order": "preserved from 500MF to 16GF"},
    trained=True,
)


@pytest.mark.claim(ORDER_PRESERVED)
def test_order_preserved(evidence, profile, load_data, executor):
    cfg = profile.pick(TRAINED)
    evidence.record_config(cfg, cfg.seeds)
    nets = {(f"base{i}", st): scaled_config(b, st, cfg.s)
            for i, b in enumerate(cfg.bases[:2]) for st in ("base", "dWr")}
    _record_budgets(evidence, nets)
    table = accuracy_table(_train_cells(cfg, nets, profile, load_data, executor, evidence))
    evidence.table("accuracy.csv", table)

    def acc(model, st):
        rows = table[(table.model == model) & (table.strategy == st)].sort_values("seed")
        return rows.test_acc.fillna(cfg.data.chance).tolist()  # diverged: chance

    evidence.baseline(acc("base0", "base"), cfg.data.chance, "the first base")
    for model in ("base0", "base1"):
        for st in ("base", "dWr"):
            evidence.metric(f"acc_{model}_{st}", stats.summarize(acc(model, st)).mean, ACC_TOL,
                            key=True, samples=acc(model, st))
    before = {m: acc(m, "base") for m in ("base0", "base1")}
    after = {m: acc(m, "dWr") for m in ("base0", "base1")}
    j = order_verdict(before, after)
    evidence.decide(j.holds, j.reason, verdict_odds(
        lambda idx: order_verdict(resample_lists(before, idx), resample_lists(after, idx)).holds,
        len(before["base0"])))

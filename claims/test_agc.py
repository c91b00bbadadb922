"""Adaptive Gradient Clipping (Brock, De, Smith, Simonyan, ICML 2021, "NFNets"; claims/README.md §2).

AGC clips each unit's gradient to lam * ||W_i||*. The paper's claims: the rule itself; with
AGC a normalizer-free ResNet trains stably at large batch (lr scaled linearly) where it
otherwise breaks, and gets close to BatchNorm; the benefit and the best lam shrink as the
batch gets smaller; the final classifier should not be clipped; BatchNorm costs step time and
fails at tiny batches. The rule: ``harness/agc/rule.py``; the verdict rules and their margins:
``harness/agc/verdicts.py``; the grid: ``harness/agc/study.py``. All grid claims share one grid
of cached training runs.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from harness.agc.study import (
    BNCostConfig,
    GridConfig,
    RuleConfig,
    StepTimingConfig,
    benefit_table,
    cell_job,
    grid_cells,
    grid_summary,
    plot_grid,
    rule_study,
    skip_final_cells,
    step_timing_cost,
    time_bn_vs_nf,
    tiny_batch_cells,
    train_agc_cells,
)
from harness.agc.verdicts import (
    BN,
    accuracies,
    best_lambda_at,
    judge_bn_costs,
    judge_lambda_shrinks,
    judge_skip_final_layer,
    judge_small_batch_benefit,
    judge_stabilizes_large_batch,
)
from harness.bands import Measured, mean_accuracy
from harness.claim import DIFFERENCE, RATIO, Claim
from harness.costs import placeholder_jobs
from harness.data import DataSpec
from harness.odds import judge_odds
from harness.train import TrainConfig

SOURCE = "Brock et al. 2021, §3 (eq. 3), §4.1 and Fig. 2 (NF-ResNet-50/200, ImageNet)"

# ------------------------------------------------------------------------------ the rule

RULE = Claim(
    id="agc.rule",
    statement="After AGC every unit's ||G_i||/||W_i||* is ≤ λ; units under λ are untouched; "
              "clipped units keep their direction; the classifier is never clipped. The known-bad "
              "implementations (inverted trigger, dim-0 linear norm, no ε floor) fail this.",
    source="Brock et al. 2021, §3 eq. 3; claims/README.md §2",
    scope="any",
    paper={"ε": "1e-3", "λ at B=4096": "0.01"},
)

RULE_CONFIGS = {
    "smoke": RuleConfig(case_seeds=tuple(range(12)), dtypes=("float32", "float64"),
                        lambdas=(0.01, 0.16), model="nf_resnet_tiny", model_batch=8,
                        model_resolution=16),
    "full": RuleConfig(case_seeds=tuple(range(50)), dtypes=("float32", "float64"),
                       lambdas=(0.01, 0.04, 0.16), model="nf_resnet18_cifar", model_batch=16,
                       model_resolution=32),
}


@pytest.mark.claim(RULE)
def test_rule(evidence, profile):
    cfg = profile.pick(RULE_CONFIGS)
    evidence.record_config(cfg, seeds=cfg.case_seeds)
    report = rule_study(cfg, profile.device)
    holds, laws = evidence.laws("cases_checked", report.cases, report.violations,
                                report.bad_caught)
    evidence.metric("model_units_clipped", report.units_clipped, Measured(
        what="units of the NF model over λ before clipping (shows the check is not vacuous); "
             "floor 5%: other CPUs may round a few units near λ differently",
        domain=(0, report.units_checked), floor_rel=0.05))
    evidence.decide(holds, f"{report.cases} cases, harness AGC: {laws}; model check clipped "
                           f"{report.units_clipped}/{report.units_checked} units")


# ------------------------------------------------------------------------------ the grid
#
# Margins come from the paper's statement, fixed before the grid was run: "far below" is ≥5
# accuracy points, "close to BN" is within 3 points on the smoke task (2 on CIFAR-10 with 3
# seeds). Condition (iii), a comparison only counts when the reference learned the task (≥5
# points above chance), guards against verdicts drawn from nets at chance. Each comparison is a
# one-sided 95% Welch bound over seeds: established, refuted, or undecided (INCONCLUSIVE).

SMOKE_GRID = GridConfig(
    # Half-width tiny twins (8-16-32 channels, 20K params) on 8192 generated 16 px images of
    # the learnable "medium" level, 8 epochs at every batch (2048 steps at B=32, 512 at
    # B=128). Sizing runs (3 seeds; see the closing note of the references issue): at the
    # paper's base lr 0.1 × B/256 nothing is learned in this budget (BN 0.16-0.26, NF ≈ 0.13);
    # the instability needs the paper's large-batch lr itself, so the base lr is 1.6 at
    # B=256, i.e. lr 0.2 at B=32 and 0.8 at B=128 (the paper's B=4096 lr is 1.6), reached at
    # a batch cheap enough for 512 steps. NF without AGC then collapses at B=128 (loss back to
    # ~2.3 after a spike), AGC keeps it training, BN learns at both batches (0.77-0.80).
    nf_model="nf_resnet_tiny", bn_model="bn_resnet_tiny",
    model_overrides=(("stem_width", 8), ("widths", (8, 16, 32))),
    data=DataSpec("synthetic", train_size=8192, test_size=1024, difficulty="medium"),
    resolution=16,
    batch_sizes=(32, 128),
    lambdas=(0.04, 0.16),
    seeds=(0, 1, 2),
    base_lr=1.6, base_batch=256,
    # Warm-up is 1/18 of training: 5 of 90 epochs, as the linear-scaling recipe (Goyal et al.).
    train=TrainConfig(epochs=8, warmup_epochs=8 * 5 / 90, check_every=4),
    # BN at B=32 (3 runs, 27 s of the smoke budget on 2 cores) fed only the plot.
    bn_largest_batch_only=True,
    clearly_below=0.05, bn_margin=0.03, learned_margin=0.05,
)

FULL_GRID = GridConfig(
    # CIFAR-10 with half-width ResNet-18 twins (32-64-128-256 channels, a quarter of the
    # flops). Sizing rule (GridConfig.epochs_at): 4 epochs at every batch, but never fewer than
    # 200 optimizer steps, so B=4096 trains 16.7 epochs (200 steps of 12 per epoch) instead of
    # the 48 steps 4 epochs would give: the largest batch must show instability, not
    # under-training. lr is 0.1 × B/256 as in the paper; the warm-up is 5/90 of each cell's
    # training (the recipe's 5 of 90 epochs). Time model (no GPU measured yet): 24.9 epochs
    # per (method, seed) over
    # the three batches, 5 methods × 3 seeds plus 3 ablation cells ≈ 21M images; at ~40k img/s
    # (half-width ResNet-18, 32 px, bf16, channels_last, one H100) ≈ 9 min.
    nf_model="nf_resnet18_cifar", bn_model="bn_resnet18_cifar",
    model_overrides=(("stem_width", 32), ("widths", (32, 64, 128, 256))),
    data=DataSpec("cifar10"),
    resolution=32,
    batch_sizes=(256, 1024, 4096),
    lambdas=(0.01, 0.04, 0.16),
    seeds=(0, 1, 2),
    min_steps=200,
    train=TrainConfig(epochs=4, warmup_epochs=4 * 5 / 90, augment=True, amp="bf16",
                      channels_last=True, check_every=10),
    clearly_below=0.05, bn_margin=0.02, learned_margin=0.05,
)

GRID_CONFIGS = {"smoke": SMOKE_GRID, "full": FULL_GRID}


def grid_runs(cfg: GridConfig, cells, profile, load_data, executor):
    """The runs of ``cells``: cached on disk (not for dry runs), side by side on the CPU."""
    return train_agc_cells(cfg, cells, device=profile.device,
                     load=lambda: load_data(cfg.data, cfg.resolution),
                     use_cache=profile.use_cache, executor=executor)


# Bands come from measured noise (harness.bands): every metric under three CPU kernel paths,
# with its per-seed samples; the rule and the values per path are in each justification.


# The seed spread is each metric's own (3 seeds under 3 paths: 6 degrees of freedom): the
# cells differ too much to pool (NF at the largest batch spans 0.08-0.49, BN 0.75-0.81).
def _benefit_tol(what: str) -> Measured:
    return Measured(what=f"{what}: mean over seeds of a per-seed difference of accuracies",
                    domain=DIFFERENCE, floor=0.01)


def _lambda_tol(cfg: GridConfig) -> Measured:
    return Measured(what="the best λ of the grid (argmax of mean accuracy over seeds)",
                    domain=(min(cfg.lambdas), max(cfg.lambdas)))


def _count_tol(cfg: GridConfig) -> Measured:
    return Measured(what="seeds that diverged", domain=(0, len(cfg.seeds)))


def _grid(evidence, profile, load_data, executor) -> tuple[GridConfig, pd.DataFrame]:
    """The batch × method × λ grid the four grid claims share (trained once, then cached),
    with its baseline: the BN twin at the largest batch must have learned the task."""
    cfg = profile.pick(GRID_CONFIGS)
    evidence.record_config(cfg, seeds=cfg.seeds)
    full = profile.unshrunk(GRID_CONFIGS)  # a dry run prints what the full grid would cost
    evidence.full_size_jobs(lambda: placeholder_jobs(full, grid_cells(full), cell_job))
    runs = grid_runs(cfg, grid_cells(cfg), profile, load_data, executor)
    b = max(cfg.batch_sizes)  # BN runs there in every design (bn_largest_batch_only)
    evidence.baseline(accuracies(runs, BN, b), cfg.chance, f"the BN twin at B={b}")
    return cfg, runs


STABILIZES = Claim(
    id="agc.stabilizes_large_batch",
    statement="At large batch with lr scaled linearly, an NF-ResNet without AGC becomes unstable "
              "(diverges or ends far below), while with AGC it trains stably and comes close to, "
              "or beats, a BatchNorm ResNet trained the same way.",
    source=SOURCE,
    scope="any",
    paper={"NF-ResNet-50, B=4096": "no AGC unstable; AGC (λ=0.01) matches BN"},
    trained=True,
    boundary={"INCONCLUSIVE": (
        "smoke: NF+AGC trails BN at B=128 by 0.063-0.075 on every measured kernel path, about "
        "twice the 0.03 margin, but 3 seeds make the 95% bound's width hang on one seed: "
        "±0.016 on native (not within: NOT_REPRODUCED on every seed redraw) and ±0.061 under "
        "ATen's default kernels (undecided on every redraw). More seeds at the largest batch "
        "are the better fix; this change could not buy them within the smoke budget")},
)


@pytest.mark.claim(STABILIZES)
def test_stabilizes_large_batch(evidence, profile, load_data, executor):
    cfg, runs = _grid(evidence, profile, load_data, executor)
    summary = grid_summary(runs)
    print(summary.to_string(index=False))
    evidence.table("grid_runs.csv", runs)
    evidence.table("grid_summary.csv", summary)
    evidence.figure("accuracy_vs_batch.png", plot_grid(runs, cfg.chance))
    j = judge_stabilizes_large_batch(runs, cfg)
    evidence.metric("nf_acc_largest_batch", j.nf.mean, mean_accuracy("NF, no AGC"), key=True,
                    samples=j.nf.seeds)
    evidence.metric("agc_acc_largest_batch", j.agc.mean, mean_accuracy("NF+AGC, best λ"), key=True,
                    paper="≈ BN", samples=j.agc.seeds)
    evidence.metric("bn_acc_largest_batch", j.bn.mean, mean_accuracy("BN"), key=True,
                    samples=j.bn.seeds)
    evidence.metric("nf_diverged_largest_batch", j.nf_diverged, _count_tol(cfg))
    evidence.metric("agc_diverged_largest_batch", j.agc_diverged, _count_tol(cfg))
    evidence.metric("best_lambda_largest_batch", j.best_lambda, _lambda_tol(cfg), paper="0.01")
    evidence.decide(j.holds, j.reason,
                    judge_odds(judge_stabilizes_large_batch, runs, cfg))


SMALL_BATCH_BENEFIT = Claim(
    id="agc.small_batch_benefit_small",
    statement="AGC's benefit shrinks as the batch gets smaller.",
    source=SOURCE,
    scope="any",
    paper={"NF-ResNet-50": "AGC helps most at B=4096, little at B=256"},
    trained=True,
)


@pytest.mark.claim(SMALL_BATCH_BENEFIT)
def test_small_batch_benefit_small(evidence, profile, load_data, executor):
    cfg, runs = _grid(evidence, profile, load_data, executor)
    evidence.table("benefit.csv", benefit_table(runs))
    j = judge_small_batch_benefit(runs)
    for name, benefit in (("benefit_smallest_batch", j.benefit_smallest_batch),
                          ("benefit_largest_batch", j.benefit_largest_batch)):
        evidence.metric(name, benefit.mean, _benefit_tol("acc(AGC best λ) − acc(NF)"), key=True,
                        samples=benefit.seeds)
    evidence.decide(j.holds, j.reason, judge_odds(judge_small_batch_benefit, runs))


LAMBDA_SHRINKS = Claim(
    id="agc.lambda_shrinks_with_batch",
    statement="The best clipping threshold λ is smaller at larger batch.",
    source=SOURCE,
    scope="any",
    paper={"best λ": "0.01 at B=4096; up to 0.08-0.16 at small batch"},
    trained=True,
)


@pytest.mark.claim(LAMBDA_SHRINKS)
def test_lambda_shrinks_with_batch(evidence, profile, load_data, executor):
    cfg, runs = _grid(evidence, profile, load_data, executor)
    evidence.table("best_lambda.csv", benefit_table(runs))
    j = judge_lambda_shrinks(runs, cfg)
    evidence.metric("best_lambda_smallest_batch", j.best_lambda_smallest_batch,
                    _lambda_tol(cfg), key=True, paper="0.08-0.16")
    evidence.metric("best_lambda_largest_batch", j.best_lambda_largest_batch,
                    _lambda_tol(cfg), key=True, paper="0.01")
    for name, acc in (("agc_best_acc_smallest_batch", j.agc_best_smallest_batch),
                      ("agc_best_acc_largest_batch", j.agc_best_largest_batch)):
        evidence.metric(name, acc.mean, mean_accuracy("NF+AGC, best λ"), samples=acc.seeds)
    evidence.decide(j.holds, j.reason,
                    judge_odds(judge_lambda_shrinks, runs, cfg))


SKIP_FINAL = Claim(
    id="agc.skip_final_layer",
    statement="Clipping the final linear layer does worse than leaving it unclipped.",
    source="Brock et al. 2021, §4.1 (AGC ablations)",
    scope="any",
    paper={"clip classifier": "worse"},
    trained=True,
)


@pytest.mark.claim(SKIP_FINAL)
def test_skip_final_layer(evidence, profile, load_data, executor):
    cfg, runs = _grid(evidence, profile, load_data, executor)
    lam = best_lambda_at(runs, cfg.batch_sizes[-1])
    full = profile.unshrunk(GRID_CONFIGS)  # λ is only known after the grid; it costs the same
    evidence.full_size_jobs(lambda: placeholder_jobs(full, skip_final_cells(full, lam), cell_job))
    extra = grid_runs(cfg, skip_final_cells(cfg, lam), profile, load_data, executor)
    both = pd.concat([runs, extra], ignore_index=True)
    evidence.table("skip_final.csv", grid_summary(both[both.batch_size == cfg.batch_sizes[-1]]))
    j = judge_skip_final_layer(both)
    evidence.metric("acc_classifier_skipped", j.skipped.mean, mean_accuracy("AGC, head skipped"),
                    key=True, samples=j.skipped.seeds)
    evidence.metric("acc_classifier_clipped", j.clipped.mean, mean_accuracy("AGC, head clipped"),
                    key=True, samples=j.clipped.seeds)
    evidence.decide(j.holds, j.reason, judge_odds(judge_skip_final_layer, both))


# ------------------------------------------------------------------------ BatchNorm's costs

BN_COSTS = Claim(
    id="agc.bn_costs",
    statement="BatchNorm costs time per step (an NF network runs faster than the same network "
              "with BN) and degrades at very small batch, where the NF network does not.",
    source="Brock et al. 2021, §1 (BatchNorm's drawbacks)",
    scope="any",
    paper={"step time": "NF faster than BN", "tiny batch": "BN degrades, NF does not"},
    trained=True,
)

BN_COST_CONFIGS = {
    "smoke": BNCostConfig(
        # B=4 against B=32 (the grid's smallest batch), 4 epochs of 4096 images: 4096 vs 512
        # steps at lr 0.025 vs 0.2. NF at B=32 is undertrained at 512 steps (it starts slowly),
        # so "NF holds up at B=4" compares with a weak reference: read its numbers.
        accuracy=dataclasses.replace(
            SMOKE_GRID, data=DataSpec("synthetic", 4096, 1024, difficulty="medium"),
            batch_sizes=(4, 32), lambdas=(),
            train=TrainConfig(epochs=4, warmup_epochs=4 * 5 / 90, check_every=4)),
        timing=StepTimingConfig("nf_resnet_tiny", "bn_resnet_tiny", batch_size=64,
                                resolution=16, rounds=7, min_run_time=0.25,
                                model_overrides=SMOKE_GRID.model_overrides),
        degrade_margin=0.03,
        # On 2-core CPUs the ratio sits near 1 and moves with the machine and the run: medians
        # 0.82-0.99 over nine smoke runs here (3 kernel paths; rounds within a run 0.87-1.05),
        # above 1 on the CI machine, where the earlier rule (> 1) flipped the verdict. Within
        # ±25% of 1 the CPU cannot tell which step is faster; it shows a cost of that size.
        speed_margin=0.25,
    ),
    "full": BNCostConfig(
        # B=8 against B=128 on a 4000-image subset: 500 steps/epoch at B=8 (~1 min in all).
        accuracy=dataclasses.replace(FULL_GRID, data=DataSpec("cifar10", 4000, 10000),
                                     batch_sizes=(8, 128), lambdas=(),
                                     train=dataclasses.replace(FULL_GRID.train, epochs=3,
                                                               warmup_epochs=3 * 5 / 90)),
        # Eager and compiled: eager NF pays launch costs for its unfused weight
        # standardisation; the verdict uses the compiled pair, as deployed.
        timing=StepTimingConfig("nf_resnet18_cifar", "bn_resnet18_cifar", batch_size=256,
                                resolution=32, rounds=5, min_run_time=1.0, amp="bf16",
                                channels_last=True, compile=True),
        degrade_margin=0.02,
        # A GPU step timed compiled over 5 rounds of ≥1 s is steadier than the CPU's (not yet
        # measured on a GPU); BN costing under 5% of a step is not the drawback the paper names.
        speed_margin=0.05,
    ),
}

RATIO_TOL = Measured(what="ratio of two step times, interleaved in one process (median of "
                          "rounds). Floor 25% for load: three earlier smoke runs on the shared "
                          "2-core CPU gave 0.952, 0.986, 0.949", domain=RATIO, floor_rel=0.25)


@pytest.mark.claim(BN_COSTS)
def test_bn_costs(evidence, profile, load_data, executor):
    cfg = profile.pick(BN_COST_CONFIGS)
    evidence.record_config(cfg, seeds=cfg.accuracy.seeds)
    times = time_bn_vs_nf(cfg.timing, profile.device)
    evidence.table("step_times.csv", times)
    eager = float(times.bn_over_nf.median())
    compiled = float(times.compiled_bn_over_nf.median()) if "compiled_bn_over_nf" in times \
        else None
    ratio = eager if compiled is None else compiled  # the verdict reads the deployed pair
    full = profile.unshrunk(BN_COST_CONFIGS).accuracy
    evidence.full_size_jobs(lambda: placeholder_jobs(full, tiny_batch_cells(full), cell_job))
    evidence.full_size_phases(lambda: step_timing_cost(profile.unshrunk(BN_COST_CONFIGS).timing))
    tiny = grid_runs(cfg.accuracy, tiny_batch_cells(cfg.accuracy), profile, load_data, executor)
    evidence.table("tiny_batch.csv", grid_summary(tiny))
    j = judge_bn_costs(ratio, tiny, cfg.degrade_margin, cfg.speed_margin)
    evidence.baseline(j.bn_ref.seeds, cfg.accuracy.chance, f"the BN twin at B={j.reference_batch}")
    evidence.metric("bn_over_nf_step_time", eager, RATIO_TOL, key=compiled is None,
                    paper="> 1")
    if compiled is not None:
        evidence.metric("bn_over_nf_step_time_compiled", compiled, RATIO_TOL, key=True,
                        paper="> 1")
    for name, acc in (("bn_acc_tiny", j.bn_tiny), ("bn_acc_ref", j.bn_ref),
                      ("nf_acc_tiny", j.nf_tiny), ("nf_acc_ref", j.nf_ref)):
        evidence.metric(name, acc.mean, mean_accuracy(name), key=name.endswith("tiny"),
                        samples=acc.seeds)
    # The step-time ratio is one measurement; the redraws are of the accuracy seeds.
    evidence.decide(j.holds, j.reason, judge_odds(
        lambda t: judge_bn_costs(ratio, t, cfg.degrade_margin, cfg.speed_margin), tiny))

"""Adaptive Gradient Clipping (Brock, De, Smith, Simonyan, ICML 2021, "NFNets"; seed 002).

AGC clips each unit's gradient to lam * ||W_i||*. The paper's claims: the rule itself; with
AGC a normalizer-free ResNet trains stably at large batch (lr scaled linearly) where it
otherwise breaks, and gets close to BatchNorm; the benefit and the best lam shrink as the
batch gets smaller; the final classifier should not be clipped; BatchNorm costs step time and
fails at tiny batches. Implementations: ``harness.agc`` (the rule), ``harness.agc_study`` (the
hook, the grid, the verdict rules). All grid claims share one grid of cached training runs.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from harness.agc_study import (
    BNCostConfig,
    GridConfig,
    RuleConfig,
    StepTimingConfig,
    benefit_table,
    best_lambdas,
    grid_cells,
    grid_summary,
    judge_bn_costs,
    judge_lambda_shrinks,
    judge_skip_final_layer,
    judge_small_batch_benefit,
    judge_stabilizes_large_batch,
    plot_grid,
    rule_study,
    run_cells,
    skip_final_cells,
    time_bn_vs_nf,
    tiny_batch_cells,
)
from harness.claim import EXACT, Claim, Tolerance
from harness.data import DataSpec
from harness.train import TrainConfig

SOURCE = "Brock et al. 2021, §3 (eq. 3), §4.1 and Fig. 2 (NF-ResNet-50/200, ImageNet)"

# ------------------------------------------------------------------------------ the rule

RULE = Claim(
    id="agc.rule",
    statement="After AGC every unit's ||G_i||/||W_i||* is ≤ λ; units under λ are untouched; "
              "clipped units keep their direction; the classifier is never clipped. The known-bad "
              "implementations (inverted trigger, dim-0 linear norm, no ε floor) fail this.",
    source="Brock et al. 2021, §3 eq. 3; CLAIMS.md §2",
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
    caught = sum(n > 0 for n in report.bad_caught.values())
    evidence.metric("cases_checked", report.cases, EXACT)
    evidence.metric("violations", len(report.violations), EXACT, key=True)
    evidence.metric("known_bad_caught", caught, EXACT, key=True)
    for name, n in report.bad_caught.items():
        evidence.metric(f"caught_{name}", int(n > 0), EXACT)
    evidence.metric("model_units_clipped", report.units_clipped, Tolerance(
        why="units of the NF model over λ before clipping (shows the check is not vacuous); "
            "deterministic on CPU, the band allows other BLAS/CPUs to round a few units near λ "
            "differently", rel=0.05))
    evidence.decide(
        not report.violations and caught == len(report.bad_caught),
        f"{report.cases} cases, harness AGC: {len(report.violations)} violations; known-bad "
        f"caught {caught}/{len(report.bad_caught)} ({report.bad_caught} violations); model "
        f"check clipped {report.units_clipped}/{report.units_checked} units"
        + (f"; first: {report.violations[0]}" if report.violations else ""))


# ------------------------------------------------------------------------------ the grid
#
# Margins come from the paper's statement, fixed before the grid was run: "far below" is ≥5
# accuracy points, "close to BN" is within 3 points on the smoke task (2 on CIFAR-10 with 3
# seeds). Condition (iii), a comparison only counts when the reference learned the task (≥5
# points above chance), was added after sizing runs showed the smoke task is not learned; it
# can only turn a verdict into NOT_REPRODUCED. The lr is the paper's recipe, 0.1 × B / 256.

SMOKE_GRID = GridConfig(
    # Half-width tiny twins (8-16-32 channels, 20K params) on 16 px generated data: the whole
    # family, 30 grid cells + 2 ablation cells + 8 tiny-batch cells, took 2 min from a cold
    # cache on one thread of the shared 2-core CPU. λ is a subset of the paper's grid
    # {0.01, ..., 0.16} for that budget. At this scale the generated task is not learned at
    # the paper's learning rates (every cell ends near chance, 10%), so condition (iii) below
    # keeps the grid verdicts from resting on noise: they come out NOT_REPRODUCED.
    nf_model="nf_resnet_tiny", bn_model="bn_resnet_tiny",
    model_overrides=(("stem_width", 8), ("widths", (8, 16, 32))),
    data=DataSpec("synthetic", train_size=4096, test_size=1024),
    resolution=16,
    batch_sizes=(32, 256, 1024),
    lambdas=(0.01, 0.04, 0.16),
    seeds=(0, 1),
    # Warm-up is 1/18 of training: 5 of 90 epochs, as the linear-scaling recipe (Goyal et al.).
    train=TrainConfig(epochs=3, warmup_epochs=3 * 5 / 90, check_every=4),
    clearly_below=0.05, bn_margin=0.03, learned_margin=0.05,
)

FULL_GRID = GridConfig(
    # Time estimate (no GPU was available to measure it): ResNet-18 at 32 px, bf16,
    # channels_last, no compile trains at roughly 15k img/s on one H100, so one epoch of
    # CIFAR-10 is ~3.5 s; 63 grid + 3 ablation cells × 2 epochs ≈ 7.5 min, plus ~1.5 min for
    # the tiny-batch cells and timing: ~9-10 min for the family.
    nf_model="nf_resnet18_cifar", bn_model="bn_resnet18_cifar",
    data=DataSpec("cifar10"),
    resolution=32,
    batch_sizes=(256, 1024, 4096),
    lambdas=(0.01, 0.02, 0.04, 0.08, 0.16),
    seeds=(0, 1, 2),
    train=TrainConfig(epochs=2, warmup_epochs=2 * 5 / 90, augment=True, amp="bf16",
                      channels_last=True, check_every=10),
    clearly_below=0.05, bn_margin=0.02, learned_margin=0.05,
)

GRID_CONFIGS = {"smoke": SMOKE_GRID, "full": FULL_GRID}


def grid_runs(cfg: GridConfig, cells, profile, load_data, workers):
    """The runs of ``cells``: cached on disk (not for dry runs), side by side on the CPU."""
    return run_cells(cfg, cells, device=profile.device,
                     load=lambda: load_data(cfg.data, cfg.resolution),
                     use_cache=not profile.dry_run, workers=workers)


# Noise behind the tolerances, measured on the smoke profile (2-core shared CPU, 1 thread):
# three cold runs in separate processes, one with --no-cache and one with ATEN and oneDNN
# restricted to AVX2 kernels (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2) to stand in
# for another CPU. Accuracies were bit-identical across processes; the AVX2 run moved 2 of 30
# runs by 2 test images (0.002) and no mean used here. The seed-to-seed std of one cell was up
# to 0.016, i.e. 0.011 for a 2-seed mean. The full profile needs its own measurement on its GPU.


def _acc_tol(what: str) -> Tolerance:
    return Tolerance(why=f"{what}: mean over seeds (diverged = chance). Bit-identical across "
                         "processes on one CPU; AVX2-only kernels moved single runs by ≤0.002 "
                         "and these means by 0; 0.03 is ~2.7 seed-σ of a 2-seed mean (0.011), "
                         "for when another CPU's rounding grows into seed-like noise", abs=0.03)


LOWER_TOL = Tolerance(why="one-sided 95% Welch lower bound from 2-seed means: unchanged in the "
                          "repeated and AVX2 runs, but it is the difference minus t(df≈1-2, "
                          "2.9-6.3) × its standard error, so runs moving by a seed-σ would move "
                          "it by ~0.1; band 0.15", abs=0.15)
LAMBDA_TOL = Tolerance(why="argmax over λ of near-equal means: unchanged in the repeated and "
                           "AVX2 runs; rel 3 lets it move one grid step either way (×4 in smoke)",
                       rel=3.0)
COUNT_TOL = Tolerance(why="seeds that diverged: 0 in every repeated and AVX2 run; any change is "
                          "a change of behaviour", abs=0.0)


STABILIZES = Claim(
    id="agc.stabilizes_large_batch",
    statement="At large batch with lr scaled linearly, an NF-ResNet without AGC becomes unstable "
              "(diverges or ends far below), while with AGC it trains stably and comes close to, "
              "or beats, a BatchNorm ResNet trained the same way.",
    source=SOURCE,
    scope="any",
    paper={"NF-ResNet-50, B=4096": "no AGC unstable; AGC (λ=0.01) matches BN"},
)


@pytest.mark.claim(STABILIZES)
def test_stabilizes_large_batch(evidence, profile, load_data, workers):
    cfg = profile.pick(GRID_CONFIGS)
    evidence.record_config(cfg, seeds=cfg.seeds)
    runs = grid_runs(cfg, grid_cells(cfg), profile, load_data, workers)
    summary = grid_summary(runs)
    print(summary.to_string(index=False))
    evidence.table("grid_runs.csv", runs)
    evidence.table("grid_summary.csv", summary)
    evidence.figure("accuracy_vs_batch.png", plot_grid(runs, cfg.chance))
    j = judge_stabilizes_large_batch(runs, cfg)
    n = j.numbers
    evidence.metric("nf_acc_largest_batch", n["nf_acc"], _acc_tol("NF, no AGC"), key=True)
    evidence.metric("agc_acc_largest_batch", n["agc_acc"], _acc_tol("NF+AGC, best λ"), key=True,
                    paper="≈ BN")
    evidence.metric("bn_acc_largest_batch", n["bn_acc"], _acc_tol("BN"), key=True)
    evidence.metric("nf_diverged_largest_batch", n["nf_diverged"], COUNT_TOL)
    evidence.metric("agc_diverged_largest_batch", n["agc_diverged"], COUNT_TOL)
    evidence.metric("best_lambda_largest_batch", n["best_lambda"], LAMBDA_TOL, paper="0.01")
    evidence.metric("bn_minus_nf_lower_bound", n["bn_minus_nf_lower"], LOWER_TOL)
    evidence.metric("agc_minus_bn_lower_bound", n["agc_minus_bn_lower"], LOWER_TOL)
    evidence.decide(j.holds, j.reason)


SMALL_BATCH_BENEFIT = Claim(
    id="agc.small_batch_benefit_small",
    statement="AGC's benefit shrinks as the batch gets smaller.",
    source=SOURCE,
    scope="any",
    paper={"NF-ResNet-50": "AGC helps most at B=4096, little at B=256"},
)


@pytest.mark.claim(SMALL_BATCH_BENEFIT)
def test_small_batch_benefit_small(evidence, profile, load_data, workers):
    cfg = profile.pick(GRID_CONFIGS)
    evidence.record_config(cfg, seeds=cfg.seeds)
    runs = grid_runs(cfg, grid_cells(cfg), profile, load_data, workers)
    evidence.table("benefit.csv", benefit_table(runs))
    j = judge_small_batch_benefit(runs)
    n = j.numbers
    evidence.metric("benefit_smallest_batch", n["benefit_smallest_batch"],
                    _acc_tol("acc(AGC best λ) − acc(NF)"), key=True)
    evidence.metric("benefit_largest_batch", n["benefit_largest_batch"],
                    _acc_tol("acc(AGC best λ) − acc(NF)"), key=True)
    evidence.metric("benefit_gap_lower_bound", n["benefit_gap_lower"], LOWER_TOL)
    evidence.decide(j.holds, j.reason)


LAMBDA_SHRINKS = Claim(
    id="agc.lambda_shrinks_with_batch",
    statement="The best clipping threshold λ is smaller at larger batch.",
    source=SOURCE,
    scope="any",
    paper={"best λ": "0.01 at B=4096; up to 0.08-0.16 at small batch"},
)


@pytest.mark.claim(LAMBDA_SHRINKS)
def test_lambda_shrinks_with_batch(evidence, profile, load_data, workers):
    cfg = profile.pick(GRID_CONFIGS)
    evidence.record_config(cfg, seeds=cfg.seeds)
    runs = grid_runs(cfg, grid_cells(cfg), profile, load_data, workers)
    evidence.table("best_lambda.csv", benefit_table(runs))
    j = judge_lambda_shrinks(runs, cfg)
    n = j.numbers
    evidence.metric("best_lambda_smallest_batch", n["best_lambda_smallest_batch"], LAMBDA_TOL,
                    key=True, paper="0.08-0.16")
    evidence.metric("best_lambda_largest_batch", n["best_lambda_largest_batch"], LAMBDA_TOL,
                    key=True, paper="0.01")
    evidence.metric("agc_best_acc_smallest_batch", n["agc_best_acc_smallest_batch"],
                    _acc_tol("NF+AGC, best λ"))
    evidence.metric("agc_best_acc_largest_batch", n["agc_best_acc_largest_batch"],
                    _acc_tol("NF+AGC, best λ"))
    evidence.decide(j.holds, j.reason)


SKIP_FINAL = Claim(
    id="agc.skip_final_layer",
    statement="Clipping the final linear layer does worse than leaving it unclipped.",
    source="Brock et al. 2021, §4.1 (AGC ablations)",
    scope="any",
    paper={"clip classifier": "worse"},
)


@pytest.mark.claim(SKIP_FINAL)
def test_skip_final_layer(evidence, profile, load_data, workers):
    cfg = profile.pick(GRID_CONFIGS)
    evidence.record_config(cfg, seeds=cfg.seeds)
    runs = grid_runs(cfg, grid_cells(cfg), profile, load_data, workers)
    lam = best_lambdas(runs)[cfg.batch_sizes[-1]]
    extra = grid_runs(cfg, skip_final_cells(cfg, lam), profile, load_data, workers)
    both = pd.concat([runs, extra], ignore_index=True)
    evidence.table("skip_final.csv", grid_summary(both[both.batch_size == cfg.batch_sizes[-1]]))
    j = judge_skip_final_layer(both)
    n = j.numbers
    evidence.metric("acc_classifier_skipped", n["acc_skip_head"], _acc_tol("AGC, head skipped"),
                    key=True)
    evidence.metric("acc_classifier_clipped", n["acc_clip_head"], _acc_tol("AGC, head clipped"),
                    key=True)
    evidence.metric("skipped_minus_clipped_lower_bound", n["skip_minus_clip_lower"], LOWER_TOL)
    evidence.decide(j.holds, j.reason)


# ------------------------------------------------------------------------ BatchNorm's costs

BN_COSTS = Claim(
    id="agc.bn_costs",
    statement="BatchNorm costs time per step (an NF network runs faster than the same network "
              "with BN) and degrades at very small batch, where the NF network does not.",
    source="Brock et al. 2021, §1 (BatchNorm's drawbacks)",
    scope="any",
    paper={"step time": "NF faster than BN", "tiny batch": "BN degrades, NF does not"},
)

BN_COST_CONFIGS = {
    "smoke": BNCostConfig(
        # B=4 against the grid's smallest batch, on a 1024-image subset to fit the budget.
        accuracy=dataclasses.replace(SMOKE_GRID, data=DataSpec("synthetic", 1024, 1024),
                                     batch_sizes=(4, 32), lambdas=()),
        timing=StepTimingConfig("nf_resnet_tiny", "bn_resnet_tiny", batch_size=64,
                                resolution=16, rounds=7, min_run_time=0.25,
                                model_overrides=SMOKE_GRID.model_overrides),
        degrade_margin=0.03,
    ),
    "full": BNCostConfig(
        # B=8 against B=128 on a 4000-image subset: 500 steps/epoch at B=8 (~1 min in all).
        accuracy=dataclasses.replace(FULL_GRID, data=DataSpec("cifar10", 4000, 10000),
                                     batch_sizes=(8, 128), lambdas=(),
                                     train=dataclasses.replace(FULL_GRID.train, epochs=3,
                                                               warmup_epochs=3 * 5 / 90)),
        timing=StepTimingConfig("nf_resnet18_cifar", "bn_resnet18_cifar", batch_size=256,
                                resolution=32, rounds=5, min_run_time=1.0, amp=True,
                                channels_last=True),
        degrade_margin=0.02,
    ),
}

RATIO_TOL = Tolerance(why="ratio of two step times, interleaved in one process (median of "
                          "rounds): 0.952, 0.986, 0.949 over three smoke runs on the shared 2-core "
                          "CPU (one with AVX2 kernels), a 4% spread; band 25% for load and CPU "
                          "type", rel=0.25)


@pytest.mark.claim(BN_COSTS)
def test_bn_costs(evidence, profile, load_data, workers):
    cfg = profile.pick(BN_COST_CONFIGS)
    evidence.record_config(cfg, seeds=cfg.accuracy.seeds)
    times = time_bn_vs_nf(cfg.timing, profile.device)
    evidence.table("step_times.csv", times)
    ratio = float(times.bn_over_nf.median())
    tiny = grid_runs(cfg.accuracy, tiny_batch_cells(cfg.accuracy), profile, load_data, workers)
    evidence.table("tiny_batch.csv", grid_summary(tiny))
    j = judge_bn_costs(ratio, tiny, cfg.degrade_margin)
    n = j.numbers
    evidence.metric("bn_over_nf_step_time", ratio, RATIO_TOL, key=True, paper="> 1")
    for name in ("bn_acc_tiny", "bn_acc_ref", "nf_acc_tiny", "nf_acc_ref"):
        evidence.metric(name, n[name], _acc_tol(name), key=name.endswith("tiny"))
    evidence.metric("bn_drop_lower_bound", n["bn_drop_lower"], LOWER_TOL)
    evidence.metric("nf_tiny_minus_ref_lower_bound", n["nf_tiny_minus_ref_lower"], LOWER_TOL)
    evidence.decide(j.holds, j.reason)

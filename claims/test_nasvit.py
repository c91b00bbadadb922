"""NASViT: gradient conflict-aware supernet training (Gong et al., ICLR 2022; claims/README.md §5).

A weight-sharing supernet trained by the sandwich rule sums the supernet's gradient g₁ and the
subnets' g₂; the paper finds they conflict (cos < 0) far more often in a transformer supernet
than in a CNN one, and removes the conflicting part of g₁ (projection). Claims: the projection
law; transformers conflict more; projection helps the subnets; naively trained transformer
subnets fall below the same architectures trained alone. Implementation:
``harness.models.supernet`` (the supernets) and ``harness.supernet`` (sandwich, known_bad,
study, verdicts).
"""

from __future__ import annotations

import pytest

from harness.bands import Measured, mean_accuracy
from harness.claim import DIFFERENCE, SHARE, Claim
from harness.costs import placeholder_jobs
from harness.data import DataSpec
from harness.odds import judge_odds
from harness.stats import mean
from harness.supernet.study import (
    CNN,
    HYBRID,
    NAIVE,
    GridConfig,
    RuleConfig,
    cell_job,
    grid_cells,
    plot_cosine,
    rule_study,
    subnet_evaluation_cost,
    summary_table,
    train_supernet_cells,
    values,
)
from harness.supernet.verdicts import (
    judge_naive_underperforms,
    judge_projection_helps,
    judge_transformer_conflicts_more,
)
from harness.train import TrainConfig

SOURCE = "Gong et al. 2022 (NASViT), §3-§4; official code facebookresearch/NASViT"

# ------------------------------------------------------------------------ the projection law

PROJECTION_RULE = Claim(
    id="nasvit.projection_rule",
    statement="Per parameter tensor, if ⟨g₁, g₂⟩ < 0 then g₁ ← g₁ − ⟨g₁, g₂⟩/‖g₂‖²·g₂, and the "
              "update is g₁ + g₂: it never has a negative inner product with g₂, equals g₁ + g₂ "
              "when there is no conflict, and leaves g₂ intact. A wrong sign, projecting g₂ "
              "instead of g₁, or projecting without a conflict, fail.",
    source=f"{SOURCE}; claims/README.md §5",
    scope="any",  # exact laws: any device
    paper={"projection": "g₁ − ⟨g₁,g₂⟩/‖g₂‖² g₂ when ⟨g₁,g₂⟩ < 0"},
)

RULE_CONFIGS = {
    "smoke": RuleConfig(model="hybrid_supernet_tiny", resolution=16, real_steps=3,
                        random_pairs=250),
    "full": RuleConfig(model="hybrid_supernet_tiny", resolution=16, real_steps=10,
                       random_pairs=2000),
}


@pytest.mark.claim(PROJECTION_RULE)
def test_projection_rule(evidence, profile):
    cfg = profile.pick(RULE_CONFIGS)
    evidence.record_config(cfg, seeds=(cfg.seed,))
    report = rule_study(cfg)
    holds, laws = evidence.laws("pairs_checked", report.pairs, report.violations,
                                report.bad_caught)
    evidence.decide(holds, f"{report.pairs} gradient pairs ({cfg.random_pairs} random, the rest "
                           f"per-tensor pairs of {cfg.real_steps} sandwich steps of {cfg.model}; "
                           f"{report.conflicts} in conflict): {laws}")


# ------------------------------------------------------------------------------ the grid
#
# One grid of cached runs that the trained claims read: naive sandwich training of the CNN and
# of the hybrid supernet, projected (conflict-aware) training of the hybrid, and the hybrid's
# smallest and mid-size subnets trained alone, 3 seeds each. Budget per subnet: a standalone
# run has the supernet run's recipe (same epochs, batch, optimizer steps, schedule); inside
# the sandwich the smallest subnet gets a gradient at every one of those steps, the mid-size
# one only through the weights it shares (it is rarely drawn exactly). Margins fixed before
# the grid ran: the hybrid's conflict share must exceed the CNN's by ≥ 0.02; "at least the
# accuracy" allows 0.02 below; comparisons count only ≥ 5 points above chance. Subnets are
# evaluated extracted, their BN statistics re-estimated on 8 training batches.

# The recipe is NASViT's (its official config): AdamW, weight decay 0, the global gradient
# norm clipped to 1.0 after the subnets' gradients are summed, warm-up then cosine. SGD was
# tried first: the hybrid supernet trained alone at SGD lr 0.1 ended at 0.12 (unstable without
# clipping) and lr 0.02 left every net under-trained (CNN largest alone 0.42 vs 0.64 at 0.1).
# The lr was picked on the naive-sandwich baseline, one seed, 6 epochs: AdamW 0.01 gave CNN
# largest 0.42, hybrid largest 0.36; 0.003 gave 0.47 and 0.48, so 0.003. (At 0.01 the projected
# hybrid stalled at chance from the first steps: its loss never left ln 10. With distillation
# off it learned, at 0.003 it learned; see harness/supernet/sandwich.py.)

# Epochs: 6 (558 steps) kept the family at 215-419 s depending on the machine, and 4 still took
# 246 s in a clean-clone CI run on a mid-speed 2-core machine (hybrid sandwich runs 43-56 s
# each): over its 4 minutes. Measured on seed 0, naive sandwich: hybrid largest 0.48 at 6
# epochs, 0.42 at 4, 0.37 at 3; CNN largest 0.47 at 6, 0.30 at 4, 0.24 at 3 (the CNN starts
# slowly). 3 epochs ran in 169 s but is too few: measured across seeds and kernel paths, the
# projected hybrid's seed 2 was still near chance (smallest subnet 0.155-0.226), so its band
# (0.256 ± 0.161) reached chance and would guard nothing. 3.5 epochs sits between the two.
# Cheaper steps were tried and not taken: batch 64 for 5 epochs learned no more than batch 32
# for 3.3 at more cost; 12 px inputs cost 0.68 of 16 px and learned less (0.36 / 0.30 at 6
# epochs); scaled_dot_product_attention was no faster than the explicit attention at 64 tokens.

SMOKE_GRID = GridConfig(
    # Two ~95k-parameter supernets (largest: CNN 4.2 MFLOPs, hybrid 4.4) at 16 px on 3000
    # generated images of the learnable "medium" level; 3.5 epochs at batch 32 (326 sandwich
    # steps of 4 subnets).
    cnn="cnn_supernet_tiny", hybrid="hybrid_supernet_tiny",
    data=DataSpec("synthetic", train_size=3000, test_size=1000, difficulty="medium"),
    resolution=16, seeds=(0, 1, 2),
    train=TrainConfig(epochs=3.5, batch_size=32, optimizer="adamw", lr=0.003, weight_decay=0.0,
                      clip_grad_norm=1.0, warmup_epochs=0.25, check_every=10),
)

FULL_GRID = GridConfig(
    # CIFAR-10, the CIFAR supernets (largest: CNN 154 MFLOPs 1.8M params, hybrid 134 MFLOPs
    # 1.5M), 4 epochs, batch 256, bf16, the same AdamW recipe (lr unmeasured on a GPU).
    # Time model (no GPU measured yet): 9 sandwich runs × 200k images at ~8k img/s (4
    # forward/backward passes per step) + 6 standalone runs at ~30k img/s ≈ 4.5 min on one H100.
    cnn="cnn_supernet_cifar", hybrid="hybrid_supernet_cifar",
    data=DataSpec("cifar10"), resolution=32, seeds=(0, 1, 2), log_every=10,
    train=TrainConfig(epochs=4, batch_size=256, optimizer="adamw", lr=0.003, weight_decay=0.0,
                      clip_grad_norm=1.0, warmup_epochs=0.5, augment=True, amp="bf16"),
)

GRID_CONFIGS = {"smoke": SMOKE_GRID, "full": FULL_GRID}


def _grid(evidence, profile, load_data, executor):
    """The grid every trained NASViT claim reads (trained once, then cached)."""
    cfg = profile.pick(GRID_CONFIGS)
    evidence.record_config(cfg, seeds=cfg.seeds)
    full = profile.unshrunk(GRID_CONFIGS)  # a dry run prints what the full grid would cost
    evidence.full_size_jobs(lambda: placeholder_jobs(full, grid_cells(full), cell_job))
    evidence.full_size_phases(lambda: {"nasvit.subnets": subnet_evaluation_cost(full)})
    runs = train_supernet_cells(cfg, grid_cells(cfg), device=profile.device,
                     load=lambda: load_data(cfg.data, cfg.resolution),
                     use_cache=profile.use_cache, executor=executor)
    return cfg, runs


def _share_tol(what: str) -> Measured:
    return Measured(what=f"{what}: mean over seeds of the share of logged (step, tensor) pairs "
                         f"with cos(g₁, g₂) < 0", domain=SHARE, floor=0.01)


CONFLICTS_MORE = Claim(
    id="nasvit.transformer_conflicts_more",
    statement="Over sandwich training, the share of negative cos(g₁, g₂) (supernet vs summed "
              "subnet gradients, per tensor) is higher in a hybrid conv+transformer supernet "
              "than in a CNN supernet of similar size.",
    source=f"{SOURCE}, §3 (gradient conflict, Fig. 2)",
    scope="any",
    paper={"negative cosine": "much more frequent for the ViT supernet than AlphaNet's CNN "
                              "(shares unverified)"},
    trained=True,
)


@pytest.mark.claim(CONFLICTS_MORE)
def test_transformer_conflicts_more(evidence, profile, load_data, executor):
    cfg, runs = _grid(evidence, profile, load_data, executor)
    evidence.table("grid_summary.csv", summary_table(runs))
    evidence.table("grid_runs.csv", runs.drop(columns=["cos", "cos_steps"]))
    evidence.figure("cosine_vs_step.png", plot_cosine(runs))
    evidence.baseline(values(runs, HYBRID, NAIVE), cfg.chance,
                      "the hybrid supernet's largest subnet, naive sandwich")
    j = judge_transformer_conflicts_more(runs, cfg)
    evidence.metric("conflict_share_hybrid", mean(j.hybrid), _share_tol("hybrid, naive"),
                    key=True, samples=list(j.hybrid))
    evidence.metric("conflict_share_cnn", mean(j.cnn), _share_tol("CNN, naive"), key=True,
                    samples=list(j.cnn))
    gap = [h - c for h, c in zip(j.hybrid, j.cnn, strict=True)]
    evidence.metric("conflict_share_gap", mean(gap), Measured(
        what="per-seed conflict share, hybrid minus CNN", domain=DIFFERENCE, floor=0.01),
        samples=gap)
    evidence.metric("acc_cnn_largest", mean(values(runs, CNN, NAIVE)),
                    mean_accuracy("CNN supernet, largest subnet"), samples=values(runs, CNN, NAIVE))
    evidence.decide(j.holds, j.reason, judge_odds(judge_transformer_conflicts_more, runs, cfg))


PROJECTION_HELPS = Claim(
    id="nasvit.projection_helps",
    statement="With gradient projection, the smallest and a mid-size subnet of a hybrid "
              "supernet reach at least the accuracy they reach under naive sandwich training "
              "(the paper claims better).",
    source=f"{SOURCE}, §4 (ablation: gradient projection)",
    scope="any",
    paper={"NASViT A0/A1/A2": "78.2 / 79.7 / 80.5 % ImageNet top-1 (with projection)"},
    trained=True,
)


@pytest.mark.claim(PROJECTION_HELPS)
def test_projection_helps(evidence, profile, load_data, executor):
    cfg, runs = _grid(evidence, profile, load_data, executor)
    evidence.baseline(values(runs, HYBRID, NAIVE), cfg.chance,
                      "the hybrid supernet's largest subnet, naive sandwich")
    j = judge_projection_helps(runs, cfg)
    for arch in j.naive:
        evidence.metric(f"acc_{arch}_naive", mean(j.naive[arch]), mean_accuracy(f"{arch}, naive"),
                        key=True, samples=list(j.naive[arch]))
        evidence.metric(f"acc_{arch}_projected", mean(j.projected[arch]),
                        mean_accuracy(f"{arch}, projected"), key=True,
                        samples=list(j.projected[arch]))
        gap = [p - n for p, n in zip(j.projected[arch], j.naive[arch], strict=True)]
        evidence.metric(f"acc_gap_{arch}", mean(gap), Measured(
            what=f"per-seed accuracy, projected minus naive, {arch} subnet",
            domain=DIFFERENCE, floor=0.01), samples=gap)
    evidence.decide(j.holds, j.reason, judge_odds(judge_projection_helps, runs, cfg))


UNDERPERFORMS = Claim(
    id="nasvit.naive_supernet_underperforms",
    statement="Under naive sandwich training, transformer subnets inherited from the supernet "
              "are less accurate than the same architectures trained alone (same recipe: "
              "epochs, batch, optimizer steps).",
    source=f"{SOURCE}, §1 and §3",
    scope="any",
    paper={"naive ViT supernet": "worse than training single ViTs"},
    trained=True,
)


@pytest.mark.claim(UNDERPERFORMS)
def test_naive_supernet_underperforms(evidence, profile, load_data, executor):
    cfg, runs = _grid(evidence, profile, load_data, executor)
    j = judge_naive_underperforms(runs, cfg)
    evidence.baseline(j.standalone["smallest"], cfg.chance,
                      "the hybrid's smallest subnet trained alone")
    for arch in j.inherited:
        evidence.metric(f"acc_{arch}_inherited", mean(j.inherited[arch]),
                        mean_accuracy(f"{arch}, inherited (naive)"), key=True,
                        samples=list(j.inherited[arch]))
        evidence.metric(f"acc_{arch}_alone", mean(j.standalone[arch]),
                        mean_accuracy(f"{arch}, trained alone"), key=True,
                        samples=list(j.standalone[arch]))
    evidence.decide(j.holds, j.reason, judge_odds(judge_naive_underperforms, runs, cfg))

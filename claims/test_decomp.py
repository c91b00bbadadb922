"""Tucker-2 decomposition chosen layer by layer, and pruning before it (the compression talk on
YOLOv5; Kim et al., ICLR 2016; claims/README.md §4).

A conv's weight is split into a 1×1 → k×k → 1×1 chain with VBMF ranks; a layer is decomposed
only where a random tensor's output moves by less than a threshold; L1 pruning first, at the
largest ratio a binary search keeps under it, lets weights decompose to lower ranks. The talk's
claims: decomposing everything costs much accuracy, choosing layers keeps it while still
removing parameters, the layer error ranks the damage, and pruning helps (~2% more
parameters). What compression buys at deployment is ``test_deploy.py``'s, on the networks
trained here. Rules and margins: ``harness/decompose/verdicts.py``.

The rank rule and the threshold are fixed here, before any claim run: VBMF ranks (the method's
and the public project's), and a relative random-tensor error of 0.1 (the layer's output moves
by a tenth of its norm). The talk gives no threshold; the public project's default, 0.1, is on
its own absolute error (mean |y − ỹ| per element on a [0, 1) patch), which does not transfer
between networks. Nothing is fine-tuned: every accuracy here is "not fine-tuned".
"""

from __future__ import annotations

import math

import pytest

from harness.bands import Measured
from harness.claim import ACCURACY, CORRELATION, EXACT, SHARE, Claim
from harness.costs import placeholder_data
from harness.data import DataSpec
from harness.decompose.study import (
    DecompStudyConfig,
    accuracy,
    base_jobs,
    decomposition_cost,
    decomposition_tables,
    plot_damage,
    plot_strategies,
    trained_models,
)
from harness.decompose.verdicts import (
    judge_damage_ranking,
    judge_pruning_helps,
    judge_selective,
    strategy_values,
)
from harness.odds import judge_odds
from harness.stats import mean
from harness.train import TrainConfig

SOURCE = "compression talk on YOLOv5 and its public Tucker project; Kim et al., ICLR 2016"

STUDY = {
    # The half-width five-conv VGG of the ITOP smoke grid (16-32-32-64-64 channels) on 4000
    # generated 16 px images ("medium"), 8 epochs: ~0.70 test accuracy against 0.10 chance.
    "smoke": DecompStudyConfig(
        model="vgg_tiny", model_overrides=(("stages", ((16,), (32, 32), (64, 64))),),
        data=DataSpec("synthetic", train_size=4000, test_size=1000, difficulty="medium"),
        resolution=16, seeds=(0, 1, 2), threshold=0.1, rank_rule="vbmf",
        train=TrainConfig(epochs=8, lr=0.1, warmup_epochs=0.5, check_every=8)),
    # A CIFAR ResNet-18 (BN), 15 epochs; time model (no GPU measured yet): 3 seeds × 15 × 50k
    # images at ~20k img/s (0.56 GFLOP forward, bf16, one H100) ≈ 2 min, plus ~1 min of
    # decompositions and evaluations per seed.
    "full": DecompStudyConfig(
        model="bn_resnet18_cifar", model_overrides=(), data=DataSpec("cifar10"), resolution=32,
        seeds=(0, 1, 2), threshold=0.1, rank_rule="vbmf",
        train=TrainConfig(epochs=15, batch_size=512, lr=0.4, warmup_epochs=1, augment=True,
                          amp="bf16", channels_last=True)),
}

_NETS: dict = {}  # per run: the trained networks, and the tables the decomp claims read
_TABLES: dict = {}


def trained_networks(evidence, profile, load_data, executor):
    """The network trained once per seed (cached with its weights), its accuracy recorded as
    the baseline; the data. Shared by every claim of the family in a run."""
    cfg = profile.pick(STUDY)
    evidence.record_config(cfg, seeds=cfg.seeds)
    full = profile.unshrunk(STUDY)  # a dry run prints what the full-size runs would cost
    evidence.full_size_jobs(lambda: base_jobs(full, placeholder_data(full.data, full.resolution),
                                              "cpu"))
    data = load_data(cfg.data, cfg.resolution)
    key = (cfg, profile.device)
    if key not in _NETS:
        _NETS[key] = trained_models(cfg, data, device=profile.device,
                                    use_cache=profile.use_cache, executor=executor)
    nets = _NETS[key]
    evidence.baseline([accuracy(net, data, cfg, profile.device) for net in nets.values()],
                      cfg.chance, f"the trained {cfg.model}")
    return cfg, data, nets


def _study(evidence, profile, load_data, executor):
    """The trained networks and the damage and strategy tables (computed once per run)."""
    cfg, data, nets = trained_networks(evidence, profile, load_data, executor)
    evidence.full_size_phases(lambda: decomposition_cost(profile.unshrunk(STUDY)))
    key = (cfg, profile.device)
    if key not in _TABLES:
        _TABLES[key] = decomposition_tables(nets, data, cfg, profile.device)
    return (cfg, nets, *_TABLES[key])


def _acc(what: str) -> Measured:
    return Measured(what=f"{what}: mean test accuracy over seeds, not fine-tuned",
                    domain=ACCURACY, floor=0.01, pool="acc_")


def _share(what: str) -> Measured:
    return Measured(what=f"{what}: mean share of conv parameters removed over seeds",
                    domain=SHARE, floor=0.01)


# ------------------------------------------------------------------------- decomposition

LAYER_ERROR_PREDICTS_DAMAGE = Claim(
    id="decomp.layer_error_predicts_damage",
    statement="A layer's random-tensor error ranks layers by how much decomposing that layer "
              "alone costs the trained network's accuracy.",
    source=f"{SOURCE}; claims/README.md §4",
    paper={"selection": "keep a decomposition only where the random-tensor error is low"},
    trained=True,
)


@pytest.mark.claim(LAYER_ERROR_PREDICTS_DAMAGE)
def test_layer_error_predicts_damage(evidence, profile, load_data, executor):
    cfg, _, damage, _ = _study(evidence, profile, load_data, executor)
    judged = judge_damage_ranking(damage, cfg)
    evidence.metric("rho_mean", mean(judged.rho), Measured(
        what="per-seed Spearman ρ(layer error, single-layer accuracy drop), mean over rank "
             "levels, then seeds", domain=CORRELATION, floor=0.05), key=True,
        samples=judged.rho)
    evidence.metric("rho_pooled", judged.pooled_rho, Measured(
        what="Spearman ρ over every (seed, layer, rank level) point", domain=CORRELATION,
        floor=0.05))
    evidence.metric("layers", damage.layer.nunique(), EXACT)
    evidence.table("damage.csv", damage)
    evidence.figure("damage.png", plot_damage(damage))
    evidence.decide(judged.holds, judged.reason, judge_odds(judge_damage_ranking, damage, cfg))


SELECTIVE_KEEPS_ERROR_LOW = Claim(
    id="decomp.selective_keeps_error_low",
    statement="Decomposing every conv removes many parameters but costs much accuracy; "
              "decomposing only the layers under the error threshold keeps the accuracy within "
              "a small margin of the original while still removing a meaningful share of "
              "parameters.",
    source=f"{SOURCE}; claims/README.md §4",
    paper={"YOLOv5x": "86.7M → 51.5M params, mAP50:95 49.6 → 49.2",
           "YOLOv5l": "46.6M → 26.9M params, mAP50:95 48.0 → 46.9",
           "Kim et al.": "VGG-16 top-5 −0.5 after fine-tuning"},
    trained=True,
)


@pytest.mark.claim(SELECTIVE_KEEPS_ERROR_LOW)
def test_selective_keeps_error_low(evidence, profile, load_data, executor):
    cfg, _, _, strategies = _study(evidence, profile, load_data, executor)
    judged = judge_selective(strategies, cfg)
    evidence.metric("acc_original", mean(judged.original), _acc("the trained network"),
                    samples=judged.original)
    evidence.metric("acc_all", mean(judged.all_acc), _acc("every conv decomposed"),
                    samples=judged.all_acc, key=True)
    evidence.metric("acc_selective", mean(judged.selective_acc),
                    _acc("convs under the threshold decomposed"), samples=judged.selective_acc,
                    key=True)
    evidence.metric("removed_all", mean(judged.all_removed), _share("decompose-all"),
                    samples=judged.all_removed)
    evidence.metric("removed_selective", mean(judged.selective_removed), _share("selective"),
                    samples=judged.selective_removed, key=True)
    evidence.metric("layers_selective", mean(strategy_values(strategies, "selective", "layers")),
                    Measured(what="mean number of convs under the threshold", domain=(0, math.inf),
                             floor=0.5))
    evidence.table("strategies.csv", strategies)
    evidence.figure("strategies.png", plot_strategies(strategies))
    evidence.decide(judged.holds, judged.reason, judge_odds(judge_selective, strategies, cfg))


PRUNING_HELPS = Claim(
    id="decomp.pruning_helps_decomposition",
    statement="L1 pruning before decomposing, at each layer's binary-searched largest ratio, "
              "removes more parameters than decomposition alone at the same error threshold.",
    source=f"{SOURCE}; claims/README.md §4",
    paper={"gain": "about 2% fewer parameters"},
    trained=True,
)


@pytest.mark.claim(PRUNING_HELPS)
def test_pruning_helps_decomposition(evidence, profile, load_data, executor):
    cfg, _, _, strategies = _study(evidence, profile, load_data, executor)
    judged = judge_pruning_helps(strategies, cfg)
    evidence.metric("removed_selective", mean(judged.selective_removed), _share("selective"),
                    samples=judged.selective_removed)
    evidence.metric("removed_pruned", mean(judged.pruned_removed), _share("prune + selective"),
                    samples=judged.pruned_removed, key=True)
    acc = strategy_values(strategies, "prune+selective", "acc")
    evidence.metric("acc_pruned", mean(acc), _acc("prune + selective"), samples=acc)
    evidence.decide(judged.holds, judged.reason, judge_odds(judge_pruning_helps, strategies, cfg))

"""harness.decompose.study: networks train once through run_jobs (weights cached), the tables
have a row per layer and strategy, and a planted bug in the method moves what the claims read."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from harness.data import DataSpec, load_dataset
from harness.decompose import study, tucker
from harness.decompose.tucker import DecomposeSettings, decompose_model
from harness.train import TrainConfig

TINY = study.DecompStudyConfig(
    model="vgg_tiny", model_overrides=(("stages", ((4,), (8,), (8,))),),
    data=DataSpec("synthetic", train_size=256, test_size=128, difficulty="medium"),
    resolution=8, seeds=(0, 1), threshold=0.3, rank_rule="energy",
    train=TrainConfig(epochs=2, batch_size=32, lr=0.05, warmup_epochs=0.2, check_every=4),
    energies=(0.5, 0.9))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import os

    os.environ["HARNESS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    data = load_dataset(TINY.data, TINY.resolution, None)
    try:
        nets = study.trained_models(TINY, data, device="cpu")
    finally:
        del os.environ["HARNESS_CACHE"]
    return data, nets


def test_tables_have_a_row_per_layer_level_and_strategy(trained):
    data, nets = trained
    damage, strategies = study.decomposition_tables(nets, data, TINY, "cpu", progress=False)
    layers = study.decomposable_layers(nets[0])
    assert len(damage) == len(nets) * len(layers) * len(TINY.energies)
    assert set(strategies.strategy) == {"original", "all", "selective", "prune+selective"}
    assert strategies.groupby("seed").size().eq(4).all()
    orig = strategies[strategies.strategy == "original"]
    assert orig.removed_share.eq(0).all() and orig.acc_drop.eq(0).all()
    forced = strategies[strategies.strategy == "all"]
    assert (forced.layers == len(layers)).all() and (forced.removed_share < 1).all()


def test_the_report_counts_the_parameters_the_model_has(trained):
    _, nets = trained
    net = nets[0]
    new, report = decompose_model(net, DecomposeSettings(0.3, "energy", keep=0.7), 8,
                                  force=True)
    convs = lambda m: sum(p.numel() for c in m.modules() if isinstance(c, nn.Conv2d)  # noqa: E731
                          for p in c.parameters())
    assert report.params_before.sum() == convs(net)
    assert report.params_after.sum() == convs(new)


def test_pointwise_convs_are_left_alone_with_the_reason():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1))
    _, report = decompose_model(net, DecomposeSettings(0.5, "energy"), 8, force=True)
    assert report.decomposed.tolist() == [True, False]
    assert "1×1" in report.reason.iloc[1]


def test_a_planted_factor_bug_is_caught_by_the_layer_error(monkeypatch):
    """Swap the roles of U_in and U_out's transposes in the chain (a classic bug): at full
    rank the layer error, which must be ~0, is large, so the threshold rejects every layer."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
    good, report = decompose_model(net, DecomposeSettings(0.01, "energy", keep=1.0), 8,
                                  in_channels=6)
    assert report.decomposed.all() and report.error.max() < 1e-4
    real = tucker.tucker2

    def swapped(conv, ranks):
        chain = real(conv, ranks)
        chain[0].weight.data = chain[0].weight.data.transpose(0, 1).contiguous()
        return chain

    monkeypatch.setattr(tucker, "tucker2", swapped)
    _, bad = decompose_model(net, DecomposeSettings(0.01, "energy", keep=1.0), 8, in_channels=6)
    assert not bad.decomposed.any() and bad.error.min() > 0.1


def test_the_dry_run_config_is_tiny():
    cfg = dataclasses.replace(TINY, seeds=(0, 1, 2)).dry_run()
    assert cfg.seeds == (0,) and cfg.train.max_steps == 2 and cfg.resolution == 8


def test_each_seed_is_its_own_training_run():
    """The seed statistics need one network per seed: each job trains with its seed, and the
    jobs' cache keys differ (run_jobs gives jobs with equal keys one shared record, so a key
    without the seed would make every "seed" the same network)."""
    from types import SimpleNamespace

    from harness.runs.cache import cache_key

    x, y = torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    data = SimpleNamespace(train=(x, y), test=(x, y))  # base_jobs only hands the sets on
    cfg = dataclasses.replace(TINY, seeds=(0, 1, 2))
    jobs = study.base_jobs(cfg, data, "cpu")
    assert [job.cfg.seed for job in jobs] == [0, 1, 2]
    keys = [cache_key(job.key, job.code(), job.device) for job in jobs]
    assert len(set(keys)) == 3, "two seeds share a cache key: one trained network for both"


def test_the_seeds_trained_different_networks(trained):
    _, nets = trained
    a, b = (nets[seed].state_dict() for seed in TINY.seeds)
    assert any(not torch.equal(a[k], b[k]) for k in a), "every seed is the same network"

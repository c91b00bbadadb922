"""harness.decompose.deploy: the deployment measurements return sane ratios on tiny inputs, and
the quantities that are exact (sizes, flops, the crossover rule) are checked exactly; every
timing runs in the setup given (on CUDA the profile's precision and layout, seen here without a
GPU), and each depthwise cell gets its dispatch-bound check."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn as nn

from harness import timing
from harness.complexity import measure
from harness.decompose import DecomposeSettings, decompose_model, deploy

QUICK = timing.TimingSetup(min_run_time=0.01, warmup=1)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _zero_share(model: nn.Module) -> float:
    """The share of the conv and linear weights that are zero: the sparsity pruned to."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights))


def test_pruning_keeps_the_saved_size_but_shrinks_the_compressed_one(monkeypatch):
    # Known fake timings, by the sparsity of the network timed: dense 5 s a block in the
    # median, 4 s at best; 90% pruned 3.5 s and 3 s.
    seconds = {0.0: timing.Timing(5.0, 0.0, 3, 4.0), 0.9: timing.Timing(3.5, 0.0, 3, 3.0)}

    def fake_time(model, batch, resolution, s, in_channels=3):
        return seconds[round(_zero_share(model), 1)]

    monkeypatch.setattr(timing, "time_inference", fake_time)
    model = net()
    table = deploy.pruning_costs(model, (0.0, 0.9), batch=2, resolution=8, setup=QUICK,
                                 rounds=2)
    dense, sparse = table.iloc[0], table.iloc[1]
    assert table.sparsity.tolist() == [0.0, 0.9]
    assert dense.saved_ratio == 1 and dense.gzip_ratio == 1
    assert abs(sparse.saved_ratio - 1) < 0.01  # zeros are stored like any float
    assert sparse.gzip_ratio < 0.5  # ...but compress
    # the sizes are those torch.save writes, over the dense model's
    raw, gz = deploy.saved_sizes(deploy.prune_all(model, 0.9))
    dense_raw, dense_gz = deploy.saved_sizes(model)
    assert (sparse.saved_bytes, sparse.gzip_bytes) == (raw, gz)
    assert sparse.saved_ratio == raw / dense_raw and sparse.gzip_ratio == gz / dense_gz
    # time: pruned over dense, fastest block over fastest block; low/high: the rounds' ratios
    assert (dense.time_ratio, dense.time_low, dense.time_high) == (1.0, 1.0, 1.0)
    assert sparse.time_ratio == pytest.approx(3.0 / 4.0)
    assert (sparse.time_low, sparse.time_high) == pytest.approx((3.5 / 5.0, 3.5 / 5.0))
    pruned = deploy.prune_all(model, 0.9)
    w = pruned[2].weight
    assert abs(float((w == 0).float().mean()) - 0.9) < 0.01
    assert not (model[2].weight == 0).any()  # the input is untouched


def test_the_depthwise_grid_counts_flops_exactly_and_finds_the_crossover():
    grid = deploy.depthwise_grid((4, 16), (4, 8), batch=2, setup=QUICK)
    assert len(grid) == 4 and set(grid.columns) >= {"flops_ratio", "time_ratio"}
    for row in grid.itertuples():  # 9c + c² multiply-adds over 9c² per position
        assert abs(row.flops_ratio - (9 * row.channels + row.channels ** 2)
                   / (9 * row.channels ** 2)) < 1e-9
    made_up = pd.DataFrame([dict(channels=c, size=8, time_ratio=r) for c, r in
                            ((8, 1.4), (32, 0.9), (64, 1.1), (128, 0.8), (256, 0.5))])
    assert deploy.crossover(made_up).faster_from_channels.tolist() == [128]
    never = made_up.assign(time_ratio=2.0)
    assert deploy.crossover(never).faster_from_channels.isna().all()


def test_precision_and_decomposition_speedups_are_ratios_of_timings(monkeypatch):
    # Known fake timings: by precision (fp32 3 s, bf16 1.2 s) for the precision speed-up, by
    # network for the decomposed one (the original 1.6 s at best, the decomposed 0.48 s at
    # best, each round another time), so each ratio is checked exactly and the right way round.
    model = net()

    def by_precision(m, batch, resolution, s, in_channels=3):
        return timing.Timing.exact({None: 3.0, torch.bfloat16: 1.2}[s.amp_dtype])

    monkeypatch.setattr(timing, "time_inference", by_precision)
    assert deploy.precision_speedup(model, 2, 8, torch.bfloat16, QUICK) == pytest.approx(2.5)

    small, _ = decompose_model(model, DecomposeSettings(1.0, "energy", 0.5), resolution=8,
                               force=True)
    by_round = {id(model): [2.0, 1.6, 1.8], id(small): [0.5, 0.6, 0.48]}
    calls = {id(model): 0, id(small): 0}

    def by_network(m, batch, resolution, s, in_channels=3):
        t = by_round[id(m)][calls[id(m)]]
        calls[id(m)] += 1
        return timing.Timing.exact(t)

    monkeypatch.setattr(timing, "time_inference", by_network)
    out = deploy.decomposed_speedup(model, small, 2, 8, QUICK, rounds=3)
    assert calls == {id(model): 3, id(small): 3}  # both timed once a round
    # decomposed over original, fastest over fastest: not a round's ratio, not the inverse
    assert out.time_ratio == pytest.approx(0.48 / 1.6)
    # the flops: the exact counts of the two networks, decomposed over original
    assert out.flops_ratio == measure(small, 8).flops / measure(model, 8).flops
    assert out.flops_ratio < 1


def test_the_depthwise_grid_time_ratio_is_the_separable_time_over_the_standard(monkeypatch):
    # Fake timings by module and channels: the standard conv C / 2 ms, the separable block
    # (C / 4 + 2) ms: slower at C = 4, faster at C = 16.
    def fake_time(model, batch, resolution, s, in_channels=3):
        separable = isinstance(model, nn.Sequential)
        ms = in_channels / 4 + 2 if separable else in_channels / 2
        return timing.Timing.exact(ms * 1e-3 * resolution)

    monkeypatch.setattr(timing, "time_inference", fake_time)
    grid = deploy.depthwise_grid((4, 16), (4, 8), batch=2, setup=QUICK)
    assert list(zip(grid.channels, grid["size"])) == [(4, 4), (4, 8), (16, 4), (16, 8)]
    for row in grid.itertuples():
        assert row.time_ratio == pytest.approx((row.channels / 4 + 2) / (row.channels / 2))
    assert deploy.crossover(grid).faster_from_channels.tolist() == [16, 16]


def _deploy_config(**kw):
    from harness.decompose.study import DeployConfig

    return DeployConfig(batch=2, sparsities=(0.9,), channels=(4, 8), sizes=(4,), grid_batch=2,
                        rounds=1, min_run_time=0.01, **kw)


def test_the_deploy_config_times_in_its_precision_and_layout_on_cuda_only():
    dep = _deploy_config(amp="bf16", channels_last=True)
    cuda = dep.setup("cuda")
    assert cuda.amp_dtype is torch.bfloat16 and cuda.channels_last
    assert (cuda.device, cuda.min_run_time, cuda.cpu_threads) == ("cuda", 0.01, 1)
    # the CPU times as before: fp32 NCHW, whatever the config says
    assert dep.setup("cpu") == timing.TimingSetup(device="cpu", min_run_time=0.01, cpu_threads=1)
    assert _deploy_config().setup("cpu") == dep.setup("cpu")
    assert _deploy_config(amp="fp16").setup("cuda").amp_dtype is torch.float16


def test_the_deploy_functions_time_in_the_setup_they_are_given(monkeypatch):
    # No GPU needed: the timing calls are captured, with the setup built for "cuda".
    setup = _deploy_config(amp="bf16", channels_last=True).setup("cuda")
    seen = []

    def fake_ratio(a, b, batch, resolution, s, rounds=3, in_channels=3):
        seen.append(s)
        return timing.RatioSummary(1.0, 1.0, 1.0, 1.0)

    def fake_time(model, batch, resolution, s, in_channels=3):
        seen.append(s)
        return timing.Timing.exact(0.001 if s.amp_dtype is None else 0.0005)

    monkeypatch.setattr(timing, "inference_ratio", fake_ratio)
    monkeypatch.setattr(timing, "time_inference", fake_time)
    deploy.depthwise_grid((4, 8), (4,), 2, setup)
    deploy.pruning_costs(net(), (0.5,), 2, 8, setup, rounds=1)
    deploy.decomposed_speedup(net(), net(), 2, 8, setup, rounds=1)
    deploy.depthwise_doubling((4,), (4,), 2, setup)
    assert seen and all(s == setup for s in seen)
    seen.clear()
    # fp32 over the low precision: the fp32 side drops the setup's amp, keeps its layout
    assert deploy.precision_speedup(net(), 2, 8, torch.float16, setup) == 2.0
    assert [s.amp_dtype for s in seen] == [None, torch.float16]
    assert all(s.channels_last and s.device == "cuda" for s in seen)


def test_depthwise_doubling_flags_dispatch_bound_cells(monkeypatch):
    # t(B) is flat for the small cells (launches set the pace) and doubles for the large ones;
    # the separable block's t(B) grows less than the standard conv's
    def fake_time(model, batch, resolution, s, in_channels=3):
        work = in_channels * resolution ** 2 * batch
        per = 0.5e-9 if isinstance(model, nn.Sequential) else 1e-9
        return timing.Timing.exact(1e-4 + (work * per if in_channels > 8 else 0.0))

    def doubling(c, per):
        work = c * 32 ** 2 * 64
        return (1e-4 + 2 * work * per) / (1e-4 + work * per)

    monkeypatch.setattr(timing, "time_inference", fake_time)
    table = deploy.depthwise_doubling((4, 256), (32,), 64, QUICK)
    assert list(table.columns) == ["channels", "size", "doubling_standard",
                                   "doubling_separable", "doubling", "dispatch_bound"]
    assert table.dispatch_bound.tolist() == [True, False]
    assert table.doubling.iloc[0] == pytest.approx(1.0)
    # t(2B)/t(B) of each module, and the smaller of the two
    assert table.doubling_standard.iloc[1] == pytest.approx(doubling(256, 1e-9))
    assert table.doubling_separable.iloc[1] == pytest.approx(doubling(256, 0.5e-9))
    assert table.doubling.iloc[1] == pytest.approx(doubling(256, 0.5e-9))
    assert table.doubling.iloc[1] > timing.DISPATCH_BOUND_BELOW


def test_depthwise_doubling_on_real_timings_is_a_ratio_per_cell():
    table = deploy.depthwise_doubling((4,), (4, 8), 2, QUICK)
    assert len(table) == 2 and table.doubling.gt(0).all()
    assert (table.doubling == table[["doubling_standard", "doubling_separable"]].min(axis=1)).all()


def test_the_precision_speedup_is_fp32_time_over_low_precision_time(monkeypatch):
    """Known fake timings, looked up by the precision each call times in (not by call order):
    fp32 3 s, fp16 1 s, bf16 1.5 s. The speed-up is time(fp32) / time(low), above 1 when the low
    precision is faster, and the fp16 verdict reads it that way."""
    from harness.decompose.verdicts import judge_precision_speedup

    seconds = {None: 3.0, torch.float16: 1.0, torch.bfloat16: 1.5}

    def fake_time(model, batch, resolution, s, in_channels=3):
        # every statistic (median, fastest block) the same: whichever one the ratio reads
        return timing.Timing.exact(seconds[s.amp_dtype])

    monkeypatch.setattr(timing, "time_inference", fake_time)
    speedups = {}
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        for setup in (QUICK, timing.TimingSetup(amp_dtype=torch.bfloat16)):  # fp32 stays fp32
            speedups[name] = deploy.precision_speedup(net(), 2, 8, dtype, setup)
            assert speedups[name] == pytest.approx(3.0 / seconds[dtype])
    assert speedups == pytest.approx({"fp16": 3.0, "bf16": 2.0})
    margins = _deploy_config()
    assert judge_precision_speedup(speedups, margins).holds
    seconds[torch.float16] = 6.0  # fp16 twice as slow: a slow-down, ×0.5
    slower = deploy.precision_speedup(net(), 2, 8, torch.float16, QUICK)
    assert slower == pytest.approx(0.5)
    assert not judge_precision_speedup({"fp16": slower}, margins).holds


def test_prune_all_prunes_each_layer_to_the_sparsity_on_its_own():
    """Per layer, not one global magnitude threshold: a layer of small weights is pruned to the
    same sparsity as a layer of large ones (a global threshold would zero it whole)."""
    model = net()
    with torch.no_grad():
        model[0].weight.mul_(1e-3)
    pruned = deploy.prune_all(model, 0.5)
    for i in (0, 2, 6):
        weight = pruned[i].weight
        assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
        assert torch.equal(pruned[i].bias, model[i].bias)

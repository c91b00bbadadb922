"""Every CUDA path of the harness, once, on a tiny model: skipped where torch sees no GPU.

Run it wherever a GPU is available (``nox -s cuda_tests``, or ``nox -s tests --
tests/test_cuda.py``): no CUDA path is exercised anywhere else, and the CPU suite cannot catch
a tensor on the wrong device, a hidden host sync, or a dtype the CPU never sees. Every test
here carries the ``cuda`` marker (``pytest -m cuda``).

Covered: training in bf16/fp16, channels_last, compiled, without host syncs, with the AGC hook;
the AGC rule study; timing; dynamic sparse masks (SET, RigL); the sandwich step; Tucker-2 and
a decomposed model; the deployment timings in the profile's precision and layout; the
processes executor with one GPU per worker.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import pytest
import torch
import torch.nn as nn

from harness import models, timing
from harness.agc.study import AGCHook, RuleConfig, rule_study
from harness.data import synthetic_dataset
from harness.decompose import deploy
from harness.decompose.study import DeployConfig
from harness.decompose.tucker import DecomposeSettings, decompose_model, layer_error, tucker2
from harness.profiles import device_class
from harness.runs.executors import ExecutorSpec, visible_gpus
from harness.runs.jobs import TrainJob, run_jobs
from harness.sparse.masks import DynamicSparse, SparseConfig
from harness.supernet.sandwich import Sandwich, SandwichConfig
from harness.train import TrainConfig, autocast_dtype, grad_scaler, train

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="no CUDA device: torch.cuda.is_available() is False"),
              pytest.mark.cuda]

DEVICE = "cuda"  # the tests below that take it run on the CPU too (a check of their APIs)

TINY = dict(stem_width=4, widths=(4, 8, 8), resolution=16)


def _data():
    return synthetic_dataset(resolution=16, train_size=128, test_size=64, seed=0)


def _nf():
    return models.build("nf_resnet_tiny", **TINY)


def test_bf16_channels_last_training_with_the_agc_hook():
    data = _data()
    cfg = TrainConfig(epochs=1, batch_size=32, max_steps=2, warmup_epochs=0, amp="bf16",
                      channels_last=True, augment=True, check_every=1)
    rec = train(_nf, data.train, data.test, cfg, device="cuda", before_step=[AGCHook(0.01)],
                progress=False)
    assert rec.steps == 2 and not rec.diverged and math.isfinite(rec.test_acc)
    assert rec.peak_memory_mb is not None and rec.peak_memory_mb > 0  # CUDA's allocator peak


def test_fp16_uses_an_enabled_grad_scaler_and_trains():
    assert grad_scaler("cuda", autocast_dtype("fp16", "cuda")).is_enabled()
    assert not grad_scaler("cuda", autocast_dtype("bf16", "cuda")).is_enabled()
    data = _data()
    cfg = TrainConfig(epochs=1, batch_size=32, max_steps=2, warmup_epochs=0, amp="fp16")
    rec = train(_nf, data.train, data.test, cfg, device="cuda", before_step=[AGCHook(0.01)],
                progress=False)
    assert rec.steps == 2 and math.isfinite(rec.test_acc)


def test_compiled_training():
    data = _data()
    cfg = TrainConfig(epochs=1, batch_size=32, max_steps=2, warmup_epochs=0, amp="bf16",
                      compile=True)
    rec = train(lambda: models.build("anynet_tiny_x", resolution=16), data.train, data.test,
                cfg, device="cuda", progress=False)
    assert rec.steps == 2 and math.isfinite(rec.test_acc)


def test_a_training_step_never_syncs_with_the_host_between_checks():
    # From the end of step 0 to the end of the last step, any host sync (an .item(), a
    # blocking copy such as a CPU-drawn augmentation moved per batch) raises. The check at
    # the last step and evaluation sync on purpose, so the mode is lifted before them.
    data = _data()
    total = 3
    cfg = TrainConfig(epochs=1, batch_size=32, max_steps=total, warmup_epochs=0, amp="bf16",
                      channels_last=True, augment=True, check_every=100)
    seen = []

    def strict_between_steps(state):
        seen.append(state.step)
        torch.cuda.set_sync_debug_mode("error" if state.step < total - 1 else "default")

    try:
        rec = train(_nf, data.train, data.test, cfg, device="cuda",
                    before_step=[AGCHook(0.01)], after_step=[strict_between_steps],
                    progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert rec.steps == total and seen == [0, 1, 2]


def test_rule_study_on_cuda():
    cfg = RuleConfig(case_seeds=(0,), dtypes=("float32",), lambdas=(0.01,),
                     model="nf_resnet_tiny", model_batch=4, model_resolution=8)
    report = rule_study(cfg, device="cuda")
    assert report.violations == []
    assert all(n > 0 for n in report.bad_caught.values())


def test_cuda_timing_and_device_class():
    model = models.build("anynet_tiny_x", resolution=16)
    setup = timing.TimingSetup(device="cuda", amp_dtype=torch.bfloat16, channels_last=True,
                               min_run_time=0.05)
    assert timing.time_inference(model, 8, 16, setup).median > 0
    assert timing.time_train_step(model, 8, 16, 10, setup).median > 0
    compiled = timing.TimingSetup(device="cuda", amp_dtype=torch.bfloat16, compile=True,
                                  min_run_time=0.05, warmup=3)
    assert timing.time_train_step(model, 8, 16, 10, compiled).median > 0
    ratio = timing.batch_doubling_ratio(
        lambda b: timing.time_inference(model, b, 16, setup), 64)
    assert 0.5 < ratio < 4
    assert device_class("cuda").startswith("cuda-") and device_class("cpu") == "cpu"


# --------------------------------------------------------------- dynamic sparse masks


def _vgg():
    return models.build("vgg_tiny", stages=((8,), (16, 16)), resolution=16)


@pytest.mark.parametrize("growth", ["random", "gradient"])  # SET, RigL
def test_dynamic_sparse_masks_stay_on_the_device_and_keep_the_density(growth):
    data = _data()
    hook = DynamicSparse(SparseConfig(0.8, growth=growth, update_interval=1, stop_fraction=1.0))
    seen = []

    def check(state):
        assert all(m.device.type == DEVICE for m in [*hook.masks, *hook.ever])
        assert [int(m.sum()) for m in hook.masks] == hook._counts  # exact after every step
        for p, m in zip(hook._params, hook.masks, strict=True):
            assert p.device.type == DEVICE and not p[~m].any()  # masked weights are zero
            buf = hook._momentum(p)
            assert buf is None or not buf[~m].any()  # and so is their momentum
        seen.append(state.step)

    cfg = TrainConfig(epochs=1, batch_size=32, max_steps=3, warmup_epochs=0, amp="bf16",
                      channels_last=True, check_every=1)
    rec = train(_vgg, data.train, data.test, cfg, device=DEVICE, after_step=[hook, check],
                progress=False)
    assert rec.steps == 3 and seen == [0, 1, 2] and hook.updates == 2  # at steps 1 and 2
    assert abs(rec.extra["sparse"]["density"] - 0.2) < 0.02 and math.isfinite(rec.test_acc)
    assert rec.extra["sparse"]["rs"] > rec.extra["sparse"]["density"]  # regrowth explored


# --------------------------------------------------------------------- the sandwich


def test_the_sandwich_step_under_bf16():
    data = _data()
    sandwich = Sandwich(SandwichConfig(n_random=1, project=True, log_every=1))
    cfg = TrainConfig(epochs=1, batch_size=32, max_steps=2, warmup_epochs=0, amp="bf16",
                      optimizer="adamw", lr=0.003, check_every=1)
    rec = train(functools.partial(models.build, "hybrid_supernet_tiny", resolution=16),
                data.train, data.test, cfg, device=DEVICE, step_fn=sandwich, progress=False)
    assert rec.steps == 2 and not rec.diverged and math.isfinite(rec.test_acc)
    conflict = rec.extra["conflict"]
    assert conflict["steps"] == [0, 1] and all(math.isfinite(c) for c in conflict["cos"])
    assert all(len(row) == len(conflict["names"]) for row in conflict["tensor_cos"])


# -------------------------------------------------------------------- decomposition


def test_tucker2_of_a_conv_on_the_device_and_a_decomposed_model():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1).to(DEVICE)
    chain = tucker2(conv, (24, 16))  # full ranks: the original up to rounding (TF32 on CUDA)
    assert all(p.device.type == DEVICE and p.dtype == torch.float32
               for p in chain.parameters())
    x = torch.randn(4, 16, 8, 8, device=DEVICE)
    with torch.no_grad():
        y, y_hat = conv(x), chain(x)
    assert float((y - y_hat).norm() / y.norm()) < 1e-2
    assert 0 < layer_error(conv, tucker2(conv, (8, 6)), 16, 8) < 1  # lower ranks: some error
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1)).to(DEVICE)
    new, report = decompose_model(model, DecomposeSettings(1.0, "energy", 0.999), resolution=8,
                                  force=True)
    assert report.decomposed.all() and all(p.device.type == DEVICE for p in new.parameters())
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    with torch.no_grad():
        assert float((model(x) - new(x)).norm() / model(x).norm()) < 0.1


# ---------------------------------------------------------------- deployment timings


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_the_deployment_timings_in_the_profiles_precision_and_layout():
    dep = DeployConfig(batch=4, sparsities=(0.9,), channels=(8, 16), sizes=(8,), grid_batch=4,
                       rounds=1, min_run_time=0.01, amp="bf16", channels_last=True)
    setup = dataclasses.replace(dep.setup(DEVICE), warmup=1)
    if DEVICE == "cuda":
        assert setup.amp_dtype is torch.bfloat16 and setup.channels_last
    net = _small_net()
    table = deploy.pruning_costs(net, dep.sparsities, dep.batch, 8, setup, dep.rounds)
    assert table.time_ratio.gt(0).all() and table.gzip_ratio.lt(1).all()
    grid = deploy.depthwise_grid(dep.channels, dep.sizes, dep.grid_batch, setup, dep.rounds)
    assert len(grid) == 2 and grid.time_ratio.gt(0).all()
    doubling = deploy.depthwise_doubling(dep.channels, dep.sizes, dep.grid_batch, setup)
    assert doubling.doubling.gt(0).all() and doubling.dispatch_bound.dtype == bool
    assert deploy.precision_speedup(net, 4, 8, torch.float16, setup) > 0
    small, _ = decompose_model(net, DecomposeSettings(1.0, "energy", 0.5), resolution=8,
                               force=True)
    out = deploy.decomposed_speedup(net, small.to(DEVICE), 4, 8, setup, rounds=1)
    assert out.flops_ratio < 1 and out.time_ratio > 0


# ------------------------------------------------------ the processes executor, per GPU


@dataclasses.dataclass
class WhatTheWorkerSees:
    """An ``after_step`` hook (module level: it pickles into the worker) that records the GPUs
    its process was given."""

    def __call__(self, state) -> None:
        pass

    def record(self) -> dict:
        return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "devices": torch.cuda.device_count()}


def test_the_processes_executor_runs_cells_one_gpu_per_worker(tmp_path):
    data = _data()
    cfg = TrainConfig(epochs=1, batch_size=32, max_steps=2, warmup_epochs=0, amp="bf16",
                      check_every=1)
    jobs = [TrainJob({"test": "cuda processes executor", "seed": seed}, _nf, data.train,
                     data.test, dataclasses.replace(cfg, seed=seed), DEVICE,
                     after_step=(WhatTheWorkerSees(),), desc=f"tiny seed {seed}")
            for seed in (0, 1)]
    spec = ExecutorSpec("processes")  # one worker per visible GPU (at most one per cell)
    records = run_jobs(jobs, executor=spec, directory=tmp_path, progress=False)
    assert len(records) == 2 and all(r.steps == 2 and not r.from_cache for r in records)
    assert all(math.isfinite(r.test_acc) for r in records)
    assert records[0].loss_curve != records[1].loss_curve  # two seeds, two runs
    gpus = visible_gpus()
    for r in records:  # pinned before CUDA started: the worker sees its one GPU
        assert r.extra["visible"] in gpus and r.extra["devices"] == 1
    again = run_jobs(jobs, executor=spec, directory=tmp_path, progress=False)
    assert all(r.from_cache for r in again)
    assert [r.test_acc for r in again] == [r.test_acc for r in records]

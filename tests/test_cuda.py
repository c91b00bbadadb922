"""Every CUDA path of the harness, once, on a tiny model: skipped where torch sees no GPU.

Run it wherever a GPU is available (``nox -s tests -- tests/test_cuda.py``): no CUDA path is
exercised anywhere else, and the CPU suite cannot catch a tensor on the wrong device, a
hidden host sync, or a dtype the CPU never sees.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness import models, timing
from harness.agc.study import AGCHook, RuleConfig, rule_study
from harness.data import synthetic_dataset
from harness.profiles import device_class
from harness.train import TrainConfig, autocast_dtype, grad_scaler, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: torch.cuda.is_available() is False")

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

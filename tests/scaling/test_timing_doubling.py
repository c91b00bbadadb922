"""The dispatch-bound rule on the dWr claim's timings (``scaling.study.timing_doubling``): per
network, t(2B)/t(B) of inference at the timing batch and of a training step at the training
batch, in the precision and layout of the timing, each flagged by ``timing.dispatch_bound``."""

from __future__ import annotations

import pytest

from harness import models, timing
from harness.scaling import study

NETS = {"a": models.config_of("anynet_tiny_x", resolution=16),
        "b": models.config_of("effnet_tiny", resolution=16)}


def test_each_network_is_checked_in_both_phases(monkeypatch):
    calls = []

    def inference(model, batch, resolution, setup, in_channels=3):
        calls.append(("inference", batch, resolution, setup))
        flat = isinstance(model, type(models.build_config(NETS["a"])))  # "a": launch-bound
        return timing.Timing.exact(1e-3 if flat else 1e-5 * batch)

    def train_step(model, batch, resolution, num_classes, setup):
        calls.append(("train_step", batch, resolution, setup))
        return timing.Timing.exact(1e-5 * batch)

    monkeypatch.setattr(timing, "time_inference", inference)
    monkeypatch.setattr(timing, "time_train_step", train_step)
    table = study.timing_doubling(NETS, batch=8, train_batch=32, device="cpu",
                                  min_run_time=0.05, amp="bf16", channels_last=True)
    assert table.network.tolist() == ["a", "b"]
    assert table.inference.tolist() == pytest.approx([1.0, 2.0])
    assert table.train_step.tolist() == pytest.approx([2.0, 2.0])
    assert table.doubling.tolist() == pytest.approx([1.0, 2.0])
    assert table.dispatch_bound.tolist() == [True, False]
    assert {(phase, b) for phase, b, _, _ in calls} == {("inference", 8), ("inference", 16),
                                                        ("train_step", 32), ("train_step", 64)}
    setups = {s for *_, s in calls}  # as inference_times times: amp on CUDA only, NHWC as asked
    assert setups == {timing.TimingSetup(device="cpu", channels_last=True, min_run_time=0.05)}


def test_on_real_timings_the_ratios_are_positive():
    table = study.timing_doubling({"a": NETS["a"]}, batch=2, train_batch=2, device="cpu",
                                  min_run_time=0.0)
    assert table.doubling.gt(0).all() and table.dispatch_bound.dtype == bool

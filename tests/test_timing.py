import warnings

import pytest
import torch
import torch.nn as nn

from harness import timing


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


def test_inference_and_train_step_report_median_and_iqr():
    inf = timing.time_inference(tiny(), 4, 16, min_run_time=0.05)
    step = timing.time_train_step(tiny(), 4, 16, num_classes=10, min_run_time=0.05)
    for t in (inf, step):
        assert t.median > 0 and t.iqr >= 0 and t.runs >= 1


def test_train_step_really_updates_weights():
    model = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    timing.time_train_step(model, 4, 16, num_classes=10, min_run_time=0.01)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_thread_count_is_fixed_and_restored():
    prev = torch.get_num_threads()
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x.mean((2, 3))

    timing.time_inference(Probe(), 2, 8, cpu_threads=1, min_run_time=0.01)
    assert set(seen) == {1} and torch.get_num_threads() == prev


def test_noisy_measurement_warns():
    assert timing.Timing(median=1.0, iqr=0.5, runs=5).noisy
    assert not timing.Timing(median=1.0, iqr=0.01, runs=5).noisy
    with pytest.warns(UserWarning, match="noisy timing for x: IQR/median = 0.50"):
        timing.warn_if_noisy(timing.Timing(median=1.0, iqr=0.5, runs=5), "x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        timing.warn_if_noisy(timing.Timing(median=1.0, iqr=0.01, runs=5), "x")


def test_unknown_device_fails_cleanly():
    with pytest.raises((RuntimeError, ValueError)):
        timing.time_inference(tiny(), 2, 8, device="nonsense", min_run_time=0.01)

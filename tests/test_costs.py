"""harness.costs: the work of a run and its GPU time (kernels per step: harness.kernel_counts)."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import costs, kernel_counts, models
from harness.data import DataSpec
from harness.runs.jobs import TrainJob
from harness.train import TrainConfig


def test_gpu_seconds_follow_the_stated_rule():
    work = costs.Work(macs_per_image=4.09e9, images=3200)
    assert work.gpu_seconds() == pytest.approx(3 * 4.09e9 * 3200 / costs.H100_MACS_PER_SECOND)
    assert work.gpu_seconds() == pytest.approx(1.0, rel=0.02)  # the calibration: ~3,200 img/s


def test_a_jobs_work_is_counted_at_full_size_without_data():
    data = costs.placeholder_data(DataSpec("cifar10"), 32)
    assert data.train[0].shape == (50_000, 3, 32, 32) and data.train[0].untyped_storage().nbytes() < 1e5
    model_fn = functools.partial(models.build, "vgg16_cifar", resolution=32)
    job = TrainJob({"c": 1}, model_fn, data.train, data.test, TrainConfig(epochs=2, batch_size=100))
    work = costs.job_work(job)
    from harness.complexity import measure

    assert work.macs_per_image == measure(model_fn(), 32).flops
    assert work.images == 2 * 500 * 100  # steps × batch
    twice = costs.estimate([job, job])
    assert twice.runs == 1  # one key, one run
    assert twice.gpu_hours == pytest.approx(costs.train_phase(job).seconds / 3600)


def test_placeholder_jobs_build_each_cell_on_full_size_placeholder_data():
    @dataclasses.dataclass(frozen=True)
    class Grid:
        data: DataSpec
        resolution: int

    seen = []

    def cell_job(cfg, cell, data, device):
        seen.append((cell, data.train[0].shape, device))
        return cell

    grid = Grid(DataSpec("cifar10", train_size=4000), 32)
    assert costs.placeholder_jobs(grid, ["a", "b"], cell_job) == ["a", "b"]
    assert seen == [("a", (4000, 3, 32, 32), "cpu"), ("b", (4000, 3, 32, 32), "cpu")]


# ------------------------------------------------------------------ the phase model


def _mlp(depth: int, width: int = 8, resolution: int = 4) -> torch.nn.Module:
    layers = [torch.nn.Flatten(), torch.nn.Linear(3 * resolution * resolution, width)]
    for _ in range(depth):
        layers += [torch.nn.ReLU(), torch.nn.Linear(width, width)]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def _job(depth: int, batch: int = 8, width: int = 8, **cfg) -> TrainJob:
    data = costs.placeholder_data(DataSpec("synthetic", train_size=64, test_size=16), 4)
    return TrainJob({"depth": depth, "width": width, "batch": batch, **cfg},
                    functools.partial(_mlp, depth, width), data.train, data.test,
                    TrainConfig(epochs=1, batch_size=batch, warmup_epochs=0, **cfg))


def test_kernels_per_step_are_counted_and_grow_by_the_same_amount_per_block():
    counts = [kernel_counts.step_ops(_job(d)).step for d in (1, 2, 3, 4)]
    steps = {b - a for a, b in zip(counts, counts[1:])}
    assert len(steps) == 1 and steps.pop() > 0, counts  # exact: one more block, same kernels
    # a block (ReLU + Linear with bias): forward, backward and SGD-with-momentum update
    # launch at least 6 kernels (relu, addmm; threshold_backward, two mm, the bias's sum)
    assert counts[1] - counts[0] >= 6


def test_a_tiny_net_is_launch_bound_and_a_large_batch_is_not():
    tiny = costs.train_phase(_job(2, batch=8))
    assert tiny.launch_bound and tiny.device_seconds < tiny.seconds
    big = costs.train_phase(_job(2, batch=8, width=4096))
    wide = dataclasses.replace(costs.GPU, seconds_per_op=1e-9)  # launches free: compute decides
    assert not costs.train_phase(_job(2, batch=8, width=4096), model=wide).launch_bound
    assert big.seconds >= tiny.seconds


def test_autocast_adds_a_cast_per_weight_forward_and_backward():
    plain = kernel_counts.step_ops(_job(2)).step
    amp = kernel_counts.step_ops(_job(2, amp="bf16")).step
    assert amp - plain == 2 * 4  # four Linear layers


def test_a_wrong_kernel_count_is_caught():
    # A counter that missed the backward pass (e.g. counting the forward only) would price a
    # step below its forward plus backward; the law above and this bound catch it.
    ops = kernel_counts.step_ops(_job(3))
    assert ops.step > 2 * ops.forward


phases = st.lists(st.tuples(st.floats(0.1, 100), st.floats(0.0, 1.0)), min_size=1, max_size=8)


@given(phases, st.integers(1, 8))
@settings(max_examples=50, deadline=None)
def test_shared_runs_cost_the_larger_of_device_work_and_overlapped_hosts(runs, n):
    est = costs.Estimate({f"r{i}": costs.Phase("train", "x", s, device_seconds=s * share,
                                                concurrency=n)
                          for i, (s, share) in enumerate(runs)})
    total = sum(s for s, _ in runs)
    device = sum(s * share for s, share in runs)
    assert est.total_seconds == pytest.approx(max(device, total / n))
    assert est.total_seconds <= total + 1e-9  # sharing never costs more than one at a time
    if n == 1:
        assert est.total_seconds == pytest.approx(total)


def test_other_phases_add_up_and_a_key_counts_once():
    est = costs.Estimate()
    est.add_phase("a", costs.Phase("timing", "t", 10.0)).add_phase("a", costs.Phase("timing", "t", 99))
    est.add_phase("b", costs.compile_phase("c", 2))
    assert est.total_seconds == pytest.approx(10 + 2 * costs.GPU.compile_seconds)
    assert est.by_kind() == pytest.approx({"timing": 10 / 60, "compile": 2 * 60 / 60})
    with pytest.raises(ValueError):
        costs.Phase("timing", "negative", -1.0)


def test_svd_and_tucker_flops_follow_the_stated_count():
    assert costs.svd_flops(10, 4) == 4 * 10 * 16 + 8 * 64
    assert costs.svd_flops(4, 10) == costs.svd_flops(10, 4)
    one = costs.svd_flops(64, 32 * 9) + costs.svd_flops(32, 64 * 9)
    assert costs.tucker2_flops(64, 32, 3, iterations=4) == 5 * one


def test_timing_is_priced_from_min_run_time_warmup_and_autotuning():
    seconds = costs.network_timing_seconds(1e6, 8, 10, min_run_time=0.5, phases=("inference",))
    call = max(1e6 * 8 / costs.GPU.macs_per_second, 10 * costs.GPU.seconds_per_op)
    assert seconds == pytest.approx(0.5 * costs.GPU.timing_overhead + 2 * call
                                    + costs.GPU.autotune_seconds)
    again = costs.network_timing_seconds(1e6, 8, 10, 0.5, phases=("inference",), autotune=False)
    assert seconds - again == pytest.approx(costs.GPU.autotune_seconds)


def test_the_stored_estimate_round_trips_and_a_corrupt_one_reads_as_none(tmp_path):
    est = {"agc.x": costs.Estimate({"k": costs.Phase("timing", "t", 120.0)}),
           "agc.y": costs.Estimate({"k": costs.Phase("timing", "t", 120.0)}),
           "itop.z": costs.Estimate({"j": costs.Phase("evaluate", "e", 60.0)})}
    record = costs.estimate_record(est)
    assert record["families"] == {"agc": 2.0, "itop": 1.0}  # agc's shared key counted once
    assert record["total_minutes"] == 3.0 and record["assumptions"] == list(costs.ASSUMPTIONS)
    path = costs.estimate_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    assert costs.load_estimate(tmp_path) == record
    path.write_text("{not json")
    assert costs.load_estimate(tmp_path) is None
    assert costs.load_estimate(tmp_path / "nowhere") is None

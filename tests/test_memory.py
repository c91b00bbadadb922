"""harness.memory: the predicted peak of a training step against real CPU measurements, the
micro-batch rule, micro-batched timing, and the full scaling population's plan."""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import tempfile
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import memory, models, scaling, timing
from harness.runs.jobs import TrainJob
from harness.scaling import study
from harness.train import TrainConfig

NETS = ("anynet_tiny_x", "effnet_tiny", "nf_resnet_tiny", "bn_resnet18_cifar")
RES = 32
TOLERANCE = 0.10  # the model against a real CPU measurement


# ------------------------------------------------------------------ independent CPU measurements


def cpu_saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Saved-tensor bytes of a real CPU forward and loss, written here apart from the harness's
    own: deduplicated by the data pointer of each untyped storage (real storages have distinct
    ones), parameters and buffers excluded by theirs."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}
    kept = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            seen[s.data_ptr()] = s.nbytes()
            kept.append(s)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long))
    del loss
    return sum(seen.values())


def cpu_allocated_peak(fn) -> int:
    """The most bytes the CPU allocator had handed out at once during ``fn()`` beyond what was
    allocated before it, from torch.profiler's memory events ("Total Allocated" after each
    allocation and free). The profiler sees every allocation of the CPU allocator, so this
    is what a step really held, whatever the memory model says."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.remove(path)
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    base = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in mem) - base


def _net(name: str) -> nn.Module:
    torch.manual_seed(0)
    return models.build(name).train()


# ------------------------------------------------------------------ agreement with the CPU


def saved_agreement(name: str, batch: int) -> tuple[int, int]:
    """(predicted, measured) saved bytes at ``batch``: the model's activations (meta, per-image
    × batch + fixed) against a real CPU forward's."""
    predicted = memory.train_step_peak(functools.partial(models.build, name), batch, RES).activations
    measured = cpu_saved_bytes(_net(name), torch.randn(batch, 3, RES, RES))
    return predicted, measured


@pytest.mark.parametrize("name", NETS)
def test_predicted_activations_agree_with_a_real_cpu_forward(name):
    # Measured here on the CPU on nets of 4 families (RegNet-like, EfficientNet-like with SE,
    # NF-ResNet, BN ResNet-18): 0.0% apart at B = 16 (the meta forward saves the same tensors).
    predicted, measured = saved_agreement(name, 16)
    assert predicted == pytest.approx(measured, rel=TOLERANCE), (predicted, measured)


def test_a_memory_model_that_forgets_the_batch_is_caught(monkeypatch):
    # The planted bug: activations of one image whatever the (micro-)batch.
    def broken(self, k):
        return self.__class__(**{**self.__dict__, "activations": self.saved_fixed + self.per_image,
                                 "microbatches": k})

    monkeypatch.setattr(memory.MemoryEstimate, "with_microbatches", broken)
    predicted, measured = saved_agreement("anynet_tiny_x", 16)
    assert abs(predicted / measured - 1) > TOLERANCE


@pytest.mark.parametrize("name", NETS)
def test_predicted_step_peak_agrees_with_the_cpu_allocator(name):
    # The whole step (forward, zero_grad, backward, SGD step), as the allocator saw it,
    # against what the model puts on top of the weights, momentum and batch already there:
    # saved + transient activations and the new gradients. Measured here at B = 16:
    # anynet +1.5%, effnet +0.6%, nf_resnet +1.2%, bn_resnet18 +7.7% (-1.4% to +7.7% from
    # B = 4 to 64), within the allocator margin the plan adds on top.
    batch = 16
    net = _net(name)
    x, y = torch.randn(batch, 3, RES, RES), torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    F.cross_entropy(net(x), y).backward()  # a first step: gradients and momentum exist
    opt.step()

    def step() -> None:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    measured = cpu_allocated_peak(step)
    est = memory.train_step_peak(functools.partial(models.build, name), batch, RES)
    input_saved = batch * 3 * RES * RES * 4  # x is saved by the stem, but existed before
    predicted = est.activations + est.transient + est.grads - input_saved
    assert predicted == pytest.approx(measured, rel=TOLERANCE), (predicted, measured)


@pytest.mark.parametrize("name", ("anynet_tiny_x", "effnet_tiny", "nf_resnet_tiny"))
def test_half_width_activations_agree_with_cpu_autocast(name):
    # amp is measured by casting the model and input to bf16 on meta; real autocast (here the
    # CPU's, bf16) keeps some tensors fp32 and saves the weights' bf16 copies. Measured: within
    # 0.2% on these convnets and bn_resnet18_cifar at B = 8 (the attention net
    # hybrid_supernet_cifar: -6.5%, its layer norms run in fp32).
    batch = 8
    net, x = _net(name), torch.randn(batch, 3, RES, RES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        measured = cpu_saved_bytes(net, x)
    predicted = memory.train_step_peak(functools.partial(models.build, name), batch, RES,
                                       amp="bf16").activations
    assert predicted == pytest.approx(measured, rel=TOLERANCE), (predicted, measured)


# ------------------------------------------------------------------ the meta measurement


@settings(max_examples=8, deadline=None)
@given(name=st.sampled_from(("anynet_tiny_x", "effnet_tiny", "nf_resnet_tiny")),
       batch=st.integers(1, 256), channels_last=st.booleans())
def test_saved_and_peak_bytes_are_linear_in_the_batch_on_meta(name, batch, channels_last):
    fn = functools.partial(models.build, name)
    law = memory.forward_law(fn, RES, channels_last=channels_last)
    m = memory._prepared(fn, channels_last=channels_last)
    x = memory._input(batch, 3, RES, torch.float32, channels_last, "meta")
    got = memory.measure_forward(m, x)
    assert (got.saved, got.peak) == (law.saved.at(batch), law.peak.at(batch))
    assert got.peak >= got.saved


@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.bfloat16, True)])
def test_the_fast_meta_batch_norm_gives_the_decompositions_bytes(dtype, channels_last):
    m = memory._prepared(functools.partial(models.build, "effnet_tiny"), dtype, channels_last)
    x = memory._input(4, 3, RES, dtype, channels_last, "meta")
    assert memory.measure_forward(m, x, fast_meta=True) == memory.measure_forward(m, x,
                                                                                  fast_meta=False)


def test_meta_and_cpu_measurements_agree_and_leave_the_callers_model_alone():
    net = _net("effnet_tiny").eval()
    before = copy.deepcopy(net.state_dict())
    meta = memory.forward_law(net, RES)
    cpu = memory.forward_law(net, RES, device="cpu")
    assert meta == cpu
    assert not net.training and next(net.parameters()).device.type == "cpu"
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_multi_pass_step_peaks_at_one_pass_and_holds_one_more_gradient():
    # The sandwich rule's backward per subnet frees its saved tensors before the next forward.
    images = torch.zeros(1, 3, RES, RES).expand(64, -1, -1, -1)
    labels = torch.zeros(1, dtype=torch.long).expand(64)
    job = TrainJob({}, functools.partial(models.build, "anynet_tiny_x"), (images, labels),
                   (images[:10], labels[:10]), TrainConfig(batch_size=16, optimizer="adamw"))
    one = memory.job_peak(job)
    sandwich = memory.job_peak(TrainJob(**{**job.__dict__,
                                           "step_fn": SimpleNamespace(forward_passes=4)}))
    assert sandwich.activations == one.activations and sandwich.grads == 2 * one.grads
    assert one.optimizer_state == 2 * one.grads  # AdamW: m and v
    assert one.data == 64 * (3 * RES * RES * 4 + 8) + 10 * (3 * RES * RES * 4 + 8) \
        + 16 * (3 * RES * RES * 4 + 8)  # training set, one eval batch, the step's input


# ------------------------------------------------------------------ micro-batches


@settings(max_examples=200, deadline=None)
@given(per_image=st.integers(1, 10 ** 9), fixed=st.integers(0, 10 ** 11),
       batch=st.integers(1, 1024), budget=st.integers(1, 10 ** 11))
def test_microbatches_is_the_least_dividing_count_that_fits(per_image, fixed, batch, budget):
    def fits(k: int) -> bool:
        return fixed + per_image * (batch // k) <= budget

    try:
        k = memory.microbatches(per_image, fixed, batch, budget)
    except ValueError:
        assert not fits(batch)  # not even one image at a time
        return
    assert batch % k == 0 and fits(k)
    assert not any(fits(d) for d in range(1, k) if batch % d == 0)


@settings(max_examples=30, deadline=None)
@given(batch=st.sampled_from((8, 48, 256)), budget_gib=st.floats(2.5, 200))
def test_a_planned_step_is_exactly_its_laws_sum_and_fits(batch, budget_gib):
    one = memory.MemoryEstimate(0, 0, 10 ** 8, 10 ** 8, 10 ** 8, 10 ** 7, 0, batch=1,
                                per_image=3 * 10 ** 8, saved_fixed=10 ** 7,
                                transient_per_image=10 ** 6, transient_fixed=10 ** 5,
                                input_per_image=10 ** 5)
    step = one.at_batch(batch)
    budget = int(budget_gib * memory.GIB)
    try:
        planned = step.planned(budget)
    except ValueError:
        assert not step.with_microbatches(batch).fits(budget)
        return
    for k in (d for d in range(1, batch + 1) if batch % d == 0):
        s = step.with_microbatches(k)
        assert s.total == s.fixed_bytes + s.per_image_bytes * (batch // k)
    assert planned.fits(budget) and batch % planned.microbatches == 0
    if planned.microbatches > 1:
        assert not step.fits(budget)


def test_device_budget_off_the_gpu_is_the_planning_budget():
    assert memory.device_budget("cpu") == memory.PLANNING_BUDGET_BYTES == 80 * 10 ** 9


# ------------------------------------------------------------------ micro-batched timing


def _no_bn() -> nn.Module:
    # No batch norm: its batch statistics would make a micro-batch's gradient differ.
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def _one_step_grads(model: nn.Module, k: int, monkeypatch) -> list[torch.Tensor]:
    """The gradients ``time_train_step`` leaves after exactly one step (the timer replaced by
    one call), from the same weights and the same batch."""
    monkeypatch.setattr(timing, "_measure", lambda fn, setup, label: (fn(), timing.Timing.exact(1))[1])
    torch.manual_seed(1)  # the same random batch and labels
    timing.time_train_step(model, 8, 12, 10, timing.TimingSetup(min_run_time=0.0), microbatches=k)
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("k", (2, 4))
def test_micro_batched_step_accumulates_the_whole_batchs_gradient(k, monkeypatch):
    torch.manual_seed(0)
    model = _no_bn()
    whole = _one_step_grads(copy.deepcopy(model), 1, monkeypatch)
    split = _one_step_grads(copy.deepcopy(model), k, monkeypatch)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:noisy timing")
def test_micro_batched_step_times_on_the_cpu_and_rejects_a_non_divisor():
    t = timing.time_train_step(_no_bn(), 8, 12, 10, timing.TimingSetup(min_run_time=0.02),
                               microbatches=2)
    assert t.median > 0
    with pytest.raises(ValueError, match="do not divide"):
        timing.time_train_step(_no_bn(), 8, 12, 10, microbatches=3)


# ------------------------------------------------------------------ the scaling population

# claims/test_scaling.py's full population, built here (tests do not import claims/).
FULL_POPULATION = study.PopulationConfig(
    bases=("regnetx_200mf", "regnety_200mf", "efficientnet_b0"), strategies=scaling.STRATEGIES,
    scales=(2.0, 4.0, 8.0), batch_size=256, min_run_time=0.5, amp="bf16", channels_last=True)


def test_the_largest_full_population_member_needs_and_gets_micro_batches():
    # EfficientNet-B0 ×8 by r (632 px): 674 MiB/image saved in fp32, 337 in bf16 (84 GiB at
    # B = 256): over an 80 GB H100 in one pass, under it in two halves.
    net = scaling.scale(models.config_of("efficientnet_b0"), 8.0, "r")
    plan = study.plan_member(net, net.resolution, 256, "bf16", True, memory.PLANNING_BUDGET_BYTES)
    assert not plan.step.with_microbatches(1).fits(memory.PLANNING_BUDGET_BYTES)
    assert plan.step.microbatches == 2 and plan.step.fits(memory.PLANNING_BUDGET_BYTES)
    fp32 = memory.per_image_saved_bytes(functools.partial(models.build_config, net), net.resolution)
    assert 600 * 2 ** 20 < fp32 < 750 * 2 ** 20


@pytest.mark.slow
def test_every_full_population_step_is_planned_under_80_gb():
    peaks = study.population_peaks(FULL_POPULATION)
    assert len(peaks) == len(study.population_configs(FULL_POPULATION))
    assert (peaks.predicted_peak_gib * memory.GIB <= memory.PLANNING_BUDGET_BYTES).all()
    split = peaks[peaks.train_step_microbatches > 1]
    assert len(split) >= 1 and (split.unsplit_peak_gib * memory.GIB
                                > memory.PLANNING_BUDGET_BYTES).all()
    unsplit = peaks[peaks.train_step_microbatches == 1]
    assert (unsplit.unsplit_peak_gib == unsplit.predicted_peak_gib).all()


SMOKE_SLICE = study.PopulationConfig(bases=("anynet_tiny_x",), strategies=("d",), scales=(2.0,),
                                     batch_size=4, min_run_time=0.0)


def _recording_timer(monkeypatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    real = timing.time_train_step

    def record(model, batch, res, classes, setup, microbatches=1):
        calls.append((batch, microbatches))
        return real(model, batch, res, classes, setup, microbatches=microbatches)

    monkeypatch.setattr(study.timing, "time_train_step", record)
    return calls


def test_a_cpu_population_is_timed_as_before_in_one_pass(monkeypatch):
    calls = _recording_timer(monkeypatch)
    pop = study.runtime_population.__wrapped__(SMOKE_SLICE, "cpu")
    assert calls and all(k == 1 for _, k in calls)
    assert (pop.train_step_microbatches == 1).all() and pop.predicted_peak_gib.isna().all()


def test_a_planned_split_reaches_the_timing(monkeypatch):
    calls = _recording_timer(monkeypatch)
    monkeypatch.setattr(study, "population_plans", lambda cfg, device: [
        study.MemberPlan(memory.MemoryEstimate(0, 0, 0, 0, 0, 0, 0, batch=4, microbatches=2),
                         doubling_microbatches=4)
        for _ in study.population_configs(cfg)])
    with pytest.warns(UserWarning, match="2 micro-batches of 2"):
        pop = study.runtime_population.__wrapped__(SMOKE_SLICE, "cpu")
    assert (4, 2) in calls and (8, 4) in calls  # the base's t(2B) in its own split
    assert set(pop.train_step_microbatches) == {2} and not math.isnan(pop.predicted_peak_gib[0])


def test_a_gpu_population_is_planned_before_it_is_timed():
    # The CUDA path's planning runs anywhere (meta); off a GPU against the planning budget.
    plans = study.population_plans(SMOKE_SLICE, "cuda")
    assert [p.microbatches for p in plans] == [1, 1]
    assert all(0 < p.peak_gib < 80 for p in plans)
    assert study.population_plans(SMOKE_SLICE, "cpu") == [study.MemberPlan(None)] * 2

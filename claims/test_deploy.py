"""What compression buys at deployment (the compression talk on YOLOv5; Kim et al., ICLR 2016;
claims/README.md §4): pruning alone speeds nothing, depthwise-separable convs are not always
faster, half precision is, and a Tucker-decomposed network's flops saving shrinks in
wall-clock time (~4% on a GPU). The networks are the ones the decomposition claims train (``test_decomp.py``);
every time is a ratio of two programs timed in one run (``harness.timing``). Rules and
margins: ``harness/decompose/verdicts.py``; timings: ``harness/decompose/deploy.py``.
"""

from __future__ import annotations

import math

import pytest
from test_decomp import SOURCE, STUDY, trained_networks

from harness import bands, timing
from harness.bands import Measured
from harness.claim import RATIO, Claim, Tolerance
from harness.decompose import deploy
from harness.decompose.study import (
    DeployConfig,
    decompose_all,
    deploy_cost,
    plot_depthwise,
)
from harness.decompose.verdicts import (
    depthwise_verdict,
    judge_decomposed_speedup,
    judge_depthwise,
    judge_precision_speedup,
    judge_pruning_no_speedup,
)

DEPLOY = {
    "smoke": DeployConfig(batch=64, sparsities=(0.5, 0.9), channels=(4, 16, 64, 256),
                          sizes=(8, 32), grid_batch=8, rounds=3, min_run_time=0.1),
    "full": DeployConfig(batch=256, sparsities=(0.5, 0.9), channels=(16, 64, 256, 512),
                         sizes=(8, 32, 56), grid_batch=64, rounds=5, min_run_time=0.3,
                         amp="bf16", channels_last=True),  # as the network trains (STUDY)
}

def _deployment_cost(evidence, profile) -> None:
    """On a dry run, the full deployment timings' GPU time (keyed per claim, priced once)."""
    evidence.full_size_phases(lambda: deploy_cost(profile.unshrunk(DEPLOY), profile.unshrunk(STUDY)))


TIME_WHY = ("inference time over the reference network's, fastest block over fastest block "
            "across interleaved pairs timed in one run (torch.utils.benchmark, 1 thread on the "
            "CPU)")


def _time_ratio(what: str) -> Measured:
    # Load on a shared 2-core CPU moves a small-net timing more than the kernel paths show.
    return Measured(what=f"{what}: {TIME_WHY}", domain=RATIO, floor_rel=0.15)


PRUNING_NO_SPEEDUP = Claim(
    id="deploy.pruning_no_speedup",
    statement="Unstructured pruning to high sparsity leaves dense inference time and the saved "
              "size unchanged, but shrinks the compressed (gzip) size substantially.",
    source=f"{SOURCE}; claims/README.md §4",
    trained=True,
)


@pytest.mark.claim(PRUNING_NO_SPEEDUP)
def test_pruning_no_speedup(evidence, profile, load_data, executor):
    cfg, _, nets = trained_networks(evidence, profile, load_data, executor)
    dep = profile.pick(DEPLOY)
    _deployment_cost(evidence, profile)
    net = nets[cfg.seeds[0]]
    table = deploy.pruning_costs(net, dep.sparsities, dep.batch, cfg.resolution,
                                 dep.setup(profile.device), dep.rounds)
    judged = judge_pruning_no_speedup(table, dep)
    for row in table.itertuples():
        tag = f"{round(row.sparsity * 100)}"
        evidence.metric(f"time_ratio_{tag}", row.time_ratio, _time_ratio(
            f"{row.sparsity:.0%}-sparse network"), key=row.sparsity == judged.sparsity)
        evidence.metric(f"saved_ratio_{tag}", row.saved_ratio, Tolerance(
            why="torch.save of the same shapes: zeros are stored like any float; only the "
                "pickle's few bytes of metadata may differ", abs=0.001, domain=RATIO))
        evidence.metric(f"gzip_ratio_{tag}", row.gzip_ratio, Measured(
            what="gzip size of the saved pruned weights over the dense network's",
            domain=RATIO, floor=0.01), key=row.sparsity == judged.sparsity)
    evidence.table("pruning.csv", table)
    evidence.decide(judged.holds, judged.reason)


DEPTHWISE_NOT_ALWAYS_FASTER = Claim(
    id="deploy.depthwise_not_always_faster",
    statement="Depthwise-separable convs have far fewer flops than the standard conv they "
              "replace, yet for small layers they are not faster; above some size they are. "
              "The crossover is reported per map size.",
    source=f"{SOURCE}; claims/README.md §4",
)


# Why the deciding cells' CPU ratios are reported, not guarded (the verdict, and the count of
# slower cells, still are): the largest cell's ratio is not one number on a CPU. On this
# project's AVX2 EPYC back-to-back runs gave 0.12 and 0.25 (fastest blocks); the AVX-512 EPYC
# of earlier references gave 0.24-0.50 (medians) across its kernel paths. A band covering that
# would guard nothing the verdict (ratio < 1 in the largest cell, > 1 in the smallest) misses.
DEPTHWISE_CPU_WHY = ("a deciding cell; on a CPU its ratio moves with the CPU and between runs "
                     "(0.12-0.50 seen in the largest cell), so the verdict guards it, not a band")


@pytest.mark.claim(DEPTHWISE_NOT_ALWAYS_FASTER)
def test_depthwise_not_always_faster(evidence, profile):
    dep = profile.pick(DEPLOY)
    _deployment_cost(evidence, profile)
    evidence.record_config(dep)
    setup = dep.setup(profile.device)
    grid = deploy.depthwise_grid(dep.channels, dep.sizes, dep.grid_batch, setup, dep.rounds)
    judged = judge_depthwise(grid, dep)
    # The two cells that decide the verdict are guarded; the rest are shown (sub-millisecond
    # convs on a shared CPU: a cell moved by 20% between two runs of one kernel path).
    deciding = {(min(dep.channels), min(dep.sizes)), (max(dep.channels), max(dep.sizes))}
    for row in grid.itertuples():
        tag = f"c{row.channels}_s{row.size}"
        evidence.metric(f"flops_ratio_{tag}", row.flops_ratio, Tolerance(
            why="(9C + C²)/(9C²) counted by harness.complexity: exact arithmetic",
            rel=1e-9, domain=RATIO))
        if (row.channels, row.size) in deciding and profile.device == "cuda":
            evidence.metric(f"time_ratio_{tag}", row.time_ratio, _time_ratio(
                "depthwise-separable block over the standard 3×3 conv"), key=True)
        elif (row.channels, row.size) in deciding:
            evidence.observe(f"time_ratio_{tag}", row.time_ratio, DEPTHWISE_CPU_WHY)
        else:
            evidence.observe(f"time_ratio_{tag}", row.time_ratio, "a cell that does not decide "
                             "the verdict; in the table and heat map")
    cross = deploy.crossover(grid)
    for row in cross.itertuples():
        evidence.note(f"{row.size} px: separable faster from {row.faster_from_channels} "
                      "channels on" if math.isfinite(row.faster_from_channels)
                      else f"{row.size} px: separable never faster in this grid")
    evidence.metric("slower_cells", judged.slower_cells, Measured(
        what="cells where the separable block is not faster", domain=(0, judged.cells),
        floor=1))
    # The dispatch-bound rule, timed after the grid (its ratios are timed as before).
    grid = grid.merge(deploy.depthwise_doubling(dep.channels, dep.sizes, dep.grid_batch, setup),
                      on=["channels", "size"])
    bound = _record_depthwise_doubling(evidence, grid, deciding, profile.device)
    holds, reason = depthwise_verdict(judged, dep, bound)
    evidence.table("depthwise.csv", grid)
    evidence.table("crossover.csv", cross)
    evidence.figure("depthwise.png", plot_depthwise(grid))
    evidence.decide(holds, reason)


DOUBLING_WHY = ("smallest t(2B)/t(B) over the grid's cells (standard conv and separable block): "
                "2 when the device's work sets the time, towards 1 when kernel launches do")


def _record_depthwise_doubling(evidence, grid, deciding, device: str) -> str:
    """The dispatch-bound rule on the depthwise grid. On CUDA the smallest t(2B)/t(B) is
    guarded, every dispatch-bound cell noted, and the deciding ones among them returned (they
    then cannot decide the verdict); on the CPU only reported (returns '')."""
    bands.record_min_doubling(evidence, float(grid.doubling.min()), DOUBLING_WHY, device,
                               "on the CPU only reported (the verdict's cells stay as they "
                               "were decided)")
    if device != "cuda":
        return ""
    flagged = grid[grid.dispatch_bound]
    if len(flagged):
        evidence.note(f"dispatch-bound cells (t(2B)/t(B) < {timing.DISPATCH_BOUND_BELOW}): "
                      + ", ".join(f"{r.channels} ch {r.size} px ({r.doubling:.2f})"
                                  for r in flagged.itertuples()))
    return ", ".join(f"{r.channels} ch {r.size} px" for r in flagged.itertuples()
                     if (r.channels, r.size) in deciding)


FP16_SPEEDUP = Claim(
    id="deploy.fp16_speedup",
    statement="Half precision gives a real inference speed-up over fp32.",
    source=f"{SOURCE}; claims/README.md §4",
    scope="gpu",
    trained=True,
)


@pytest.mark.claim(FP16_SPEEDUP)
def test_fp16_speedup(evidence, profile, load_data, executor):
    import torch

    cfg, _, nets = trained_networks(evidence, profile, load_data, executor)
    dep = profile.pick(DEPLOY)
    _deployment_cost(evidence, profile)
    setup = dep.setup(profile.device)
    net = nets[cfg.seeds[0]]
    speedups = {}
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        try:
            speedups[name] = deploy.precision_speedup(net, dep.batch, cfg.resolution, dtype,
                                                      setup)
        except RuntimeError as err:  # a CPU without the kernels: reported, not a crash
            evidence.note(f"{name} inference not supported here: {err}")
    judged = judge_precision_speedup(speedups, dep)
    for name, value in speedups.items():
        if profile.device == "cuda":
            evidence.metric(f"speedup_{name}", value, Measured(
                what=f"fp32 time over {name} time (GPU)", domain=RATIO, floor_rel=0.1),
                key=name == "fp16")
        else:
            evidence.observe(f"speedup_{name}", value, "GPU-scoped; a CPU's half-precision "
                             "kernels say nothing about a GPU's")
    evidence.decide(judged.holds, judged.reason)


TUCKER_SPEEDUP_SMALL = Claim(
    id="deploy.tucker_speedup_small",
    statement="The flops saved by Tucker-2 turn into a much smaller wall-clock saving.",
    source=f"{SOURCE}; claims/README.md §4",
    paper={"GPU speed-up": "about 4%", "Kim et al. (phone)": "1.4-3.7×"},
    # Measured on every device, decided for GPUs (the project's): on a CPU the answer is the
    # CPU's kernels'. This machine's native path saved 0.27 of the flops saving in time, its
    # AVX2-only path 0.61, so no CPU verdict would hold on a user's CPU.
    scope="gpu",
    trained=True,
)


@pytest.mark.claim(TUCKER_SPEEDUP_SMALL)
def test_tucker_speedup_small(evidence, profile, load_data, executor):
    cfg, _, nets = trained_networks(evidence, profile, load_data, executor)
    dep = profile.pick(DEPLOY)
    _deployment_cost(evidence, profile)
    net = nets[cfg.seeds[0]]
    # Every conv decomposed, so the flops saving is the largest this rank rule gives.
    decomposed = decompose_all(net, cfg)
    result = deploy.decomposed_speedup(net, decomposed.to(profile.device), dep.batch,
                                       cfg.resolution, dep.setup(profile.device), dep.rounds)
    judged = judge_decomposed_speedup(result.flops_ratio, result.time_ratio, dep)
    evidence.metric("flops_ratio", result.flops_ratio, Measured(
        what="flops of the decompose-all network over the original's (its VBMF ranks come "
             "from trained weights)", domain=RATIO, floor=0.01), key=True)
    if profile.device == "cuda":
        evidence.metric("time_ratio", result.time_ratio, _time_ratio("decompose-all network"),
                        key=True)
    else:
        evidence.observe("time_ratio", result.time_ratio, "decided for GPUs; a CPU's ratio "
                         "follows its conv kernels (0.74 native, 0.40 AVX2-only here)")
    evidence.decide(judged.holds, judged.reason)

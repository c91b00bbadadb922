"""What the full profile costs on one GPU, estimated from its work before anyone runs it.

Every phase a claim runs is priced, not only training (``Phase.kind``):
- ``train``: per step, the larger of the device's work and the host's launch floor,
      compute = 3 × forward multiply-adds per image × images per step / ``macs_per_second``
      floor   = kernels per step × ``seconds_per_op``
  (a GPU runs asynchronously: a step costs whichever side is slower). Kernels per step are
  counted, not guessed: two short CPU runs of the job's own loop, model, hooks and step function
  under a dispatch-mode counter (``step_ops``), view and metadata ops excluded. Small nets at
  small batches are launch-bound: their floor, not their flops, sets the time. Plus the end of
  run evaluation (the same rule, forward only) and a fixed start-up per run.
- ``evaluate``: forward passes over a test set (e.g. every subnet a supernet claim reads).
- ``timing``: timed measurements (``torch.utils.benchmark``'s ``blocked_autorange`` runs for at
  least ``min_run_time``, plus warm-up calls and cuDNN's autotuning of each new shape).
- ``compile``: ``torch.compile`` of one model, a stated constant.
- ``decompose``: Tucker-2 decompositions, priced by their SVDs' flops at a stated fp64 rate.

The constants are in ``GPU`` (``CostModel``) with where each comes from; ``ASSUMPTIONS`` is
what a dry run prints. Read an estimate as a planning figure to about ×2, not a measurement:
``python -m harness.gpu_window`` measures each family beside it on the first GPU run.
Used by ``--dry-run`` (minutes per family and in total, against ``FULL_BUDGET_MINUTES``) and by
``harness.paper_scale`` (the README's "Running at paper scale" table). Kernels per step are
``harness.kernel_counts``'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.data import DatasetSplits, DataSpec
from harness.kernel_counts import forward_kernels, op_signature, step_ops
from harness.runs.cache import cache_key
from harness.runs.jobs import TrainJob

# Calibration of the device's work: a ResNet-50 (4.09 GMAC at 224²) trains at about 3,200
# images/s on one H100 in bf16 with channels_last (of the order NVIDIA's DeepLearningExamples
# report, data loading not the bottleneck): 3 × 4.09e9 × 3,200 ≈ 40 TMAC/s, about 8% of the
# bf16 dense peak. Cross-check at CIFAR scale: airbench's README gives "standard ResNet-18
# training", 32.3 PFLOP in 7 min on one A100, i.e. 38 TMAC/s (FLOP = 2 MAC), and airbench94
# 0.36 PFLOP in 3.83 s (47 TMAC/s) on an A100; an H100 is faster, so 40 TMAC/s is cautious for
# the compute term of the CIFAR nets here.
H100_MACS_PER_SECOND = 40e12
FORWARD_BACKWARD = 3  # forward + backward ≈ 3 forwards
FULL_BUDGET_MINUTES = 30.0  # the full profile's budget on one H100 (the design card)


@dataclass(frozen=True)
class CostModel:
    """The constants of the GPU cost model, each with its source in ``ASSUMPTIONS``."""

    macs_per_second: float = H100_MACS_PER_SECOND
    # Host time per eager kernel: Python, the dispatcher and the CUDA launch, 5-20 µs on a
    # server CPU (PyTorch's CUDA-graphs notes and the performance-tuning guide name this
    # overhead as what bounds small nets); 10 µs is the middle.
    seconds_per_op: float = 10e-6
    compile_seconds: float = 60.0  # inductor, one CIFAR model, forward and backward
    run_start_seconds: float = 3.0  # model build, data to the device, first cuDNN autotuning
    autotune_seconds: float = 1.0  # cudnn.benchmark's search for one new set of shapes
    timing_overhead: float = 1.25  # blocked_autorange overshoots min_run_time by a block
    # fp64 SVDs of conv-weight unfoldings (a few hundred to a few thousand columns) on a GPU
    # through cuSOLVER: far below the fp64 peak at these sizes; 100 GFLOP/s assumed.
    svd_flops_per_second: float = 100e9
    # numpy's LAPACK on the host for VBMF's singular values: 20 GFLOP/s (a few cores).
    cpu_flops_per_second: float = 20e9


GPU = CostModel()

ASSUMPTIONS = (
    f"device work: 3 x forward MACs per image at {GPU.macs_per_second / 1e12:g} TMAC/s "
    "(ResNet-50 bf16 on an H100, ~3,200 img/s; airbench's ResNet-18 on an A100: 38 TMAC/s)",
    f"launch floor: {GPU.seconds_per_op * 1e6:g} us of host time per eager kernel, kernels per "
    "step counted on the CPU with a dispatch-mode counter (views excluded; autocast adds one "
    "cast per conv/linear weight forward and backward)",
    "a step costs max(device work, launch floor): the GPU runs asynchronously",
    "training runs that read no timing run 4 per GPU (executors.CELLS_PER_GPU), each its own "
    "process: N runs cost max(sum of device work, sum of run times / N) (hosts overlap, the "
    "device's work is time-sliced, no MPS; context switches not priced)",
    f"per run: {GPU.run_start_seconds:g} s start-up and the final evaluation; "
    f"torch.compile {GPU.compile_seconds:g} s per model",
    f"timing: min_run_time x {GPU.timing_overhead:g} per measurement, warm-up calls at the "
    f"model's own cost, {GPU.autotune_seconds:g} s of cuDNN autotuning per new shape",
    f"Tucker-2: partial_tucker's SVDs at {GPU.svd_flops_per_second / 1e9:g} GFLOP/s fp64 on "
    "the GPU (4mn^2 + 8n^3 per m x n unfolding, the init plus each HOOI iteration); VBMF's "
    f"singular values on the host CPU at {GPU.cpu_flops_per_second / 1e9:g} GFLOP/s",
    "not priced: CIFAR download and loading (once, cached), Python between phases",
)


@dataclass(frozen=True)
class Work:
    """What one run computes: forward multiply-adds per image and images processed."""

    macs_per_image: float
    images: float  # steps × batch size × forward/backward passes per step

    def gpu_seconds(self, macs_per_second: float = H100_MACS_PER_SECOND) -> float:
        return FORWARD_BACKWARD * self.macs_per_image * self.images / macs_per_second


_MACS: dict[tuple[str, tuple[int, ...]], float] = {}


def job_work(job: TrainJob) -> Work:
    """The work of ``job`` at its own size (its model built once, counted at its input size;
    the count is cached per model and input shape: a grid's seeds and recipes share it)."""
    from harness.complexity import measure

    images = job.train_set[0]
    _, channels, resolution, _ = images.shape
    key = (repr(job.model_fn), tuple(images.shape[1:]))
    macs = _MACS.get(key)
    if macs is None:
        with torch.device("meta"):  # counted without allocating or initialising weights
            model = job.model_fn()
        macs = measure(model, resolution, channels).flops
        if " at 0x" not in key[0]:  # a closure's repr names its address, which a later one may reuse
            _MACS[key] = macs
    steps = job.cfg.total_steps(len(images))
    passes = getattr(job.step_fn, "forward_passes", 1)
    return Work(macs, steps * job.cfg.batch_size * passes)


# ------------------------------------------------------------------ phases and estimates


@dataclass(frozen=True)
class Phase:
    """One priced piece of a run: what it is and its GPU seconds (and the share that is the
    launch floor, for training)."""

    kind: str  # train | evaluate | timing | compile | decompose | host
    what: str
    seconds: float  # alone on the GPU
    launch_bound: bool = False  # the launch floor, not the device's work, set the time
    device_seconds: float | None = None  # the GPU's own work (training: compute + evaluation)
    concurrency: int = 1  # runs sharing the GPU at once (``executors.CELLS_PER_GPU``)
    peak_bytes: float | None = None  # predicted peak GPU memory of one run (``harness.memory``)

    def __post_init__(self) -> None:
        if not (self.seconds >= 0 and math.isfinite(self.seconds)):
            raise ValueError(f"{self.what}: {self.seconds} seconds")


def train_phase(job: TrainJob, concurrency: int = 1, model: CostModel = GPU) -> Phase:
    """A training run: steps × max(device work, launch floor) + its evaluation + start-up
    (+ compilation)."""
    work = job_work(job)
    ops = step_ops(job)
    steps = job.cfg.total_steps(len(job.train_set[0]))
    compute = work.gpu_seconds(model.macs_per_second) / max(steps, 1)
    floor = ops.step * model.seconds_per_op
    n_test = len(job.test_set[0])
    eval_batches = math.ceil(n_test / job.cfg.eval_batch_size)
    evaluation = max(work.macs_per_image * n_test / model.macs_per_second,
                     eval_batches * ops.forward * model.seconds_per_op)
    seconds = steps * max(compute, floor) + evaluation + model.run_start_seconds
    if job.cfg.compile:
        seconds += model.compile_seconds
    device = steps * compute + work.macs_per_image * n_test / model.macs_per_second
    return Phase("train", f"{job.desc}: {steps} steps, {work.macs_per_image / 1e6:.0f} MMAC/img, "
                 f"{ops.step:.0f} kernels/step", seconds, launch_bound=floor > compute,
                 device_seconds=device, concurrency=concurrency, peak_bytes=job_peak_bytes(job))


_PEAKS: dict[tuple[str, int], float] = {}


def job_peak_bytes(job: TrainJob) -> float:
    """``memory.job_peak(job).total``, cached per op signature and batch: seeds and
    hyper-parameter values do not change what a step holds."""
    from harness.memory import job_peak

    key = (op_signature(job), job.cfg.batch_size)
    if key not in _PEAKS:
        _PEAKS[key] = float(job_peak(job).total)
    return _PEAKS[key]


def evaluate_phase(what: str, macs_per_image: float, images: int, forward_ops: float,
                   batch: int, passes: int = 1, model: CostModel = GPU) -> Phase:
    """``passes`` evaluations of ``images`` test images in batches of ``batch``."""
    per = max(macs_per_image * images / model.macs_per_second,
              math.ceil(images / batch) * forward_ops * model.seconds_per_op)
    return Phase("evaluate", what, passes * per)


def timing_phase(what: str, measurements: int, min_run_time: float, call_seconds: float = 0.0,
                 warmup: int = 2, new_shapes: int | None = None, model: CostModel = GPU) -> Phase:
    """``measurements`` timed blocks of at least ``min_run_time`` each, with ``warmup`` calls
    of ``call_seconds`` before each and cuDNN autotuning for ``new_shapes`` (default: one per
    measurement)."""
    shapes = measurements if new_shapes is None else new_shapes
    seconds = measurements * (max(min_run_time, call_seconds) * model.timing_overhead
                              + warmup * call_seconds) + shapes * model.autotune_seconds
    return Phase("timing", what, seconds)


def network_timing_seconds(macs_per_image: float, batch: int, forward_ops: float,
                           min_run_time: float, phases: Sequence[str] = ("inference", "train_step"),
                           warmup: int = 2, autotune: bool = True, model: CostModel = GPU) -> float:
    """Seconds to time one network in ``phases`` at ``batch`` (``harness.timing``): each a
    block of at least ``min_run_time``, ``warmup`` calls first, cuDNN autotuning once (unless
    the shapes were timed before: ``autotune=False``). A call
    costs max(device work, launch floor); a training step is 3 forwards."""
    total = 0.0
    for phase in phases:
        factor = FORWARD_BACKWARD if phase == "train_step" else 1
        call = max(factor * macs_per_image * batch / model.macs_per_second,
                   factor * forward_ops * model.seconds_per_op)
        total += (max(min_run_time, call) * model.timing_overhead + warmup * call
                  + (model.autotune_seconds if autotune else 0.0))
    return total


def forward_ops_of(model_fn: Callable[[], torch.nn.Module], resolution: int,
                   channels: int = 3) -> float:
    """Kernels of one eval forward of ``model_fn()`` at ``resolution`` (built on meta)."""
    with torch.device("meta"):
        model = model_fn()
    return forward_kernels(model, torch.zeros(1, channels, resolution, resolution, device="meta"))


def forward_work(model_fn: Callable[[], torch.nn.Module], resolution: int,
                 channels: int = 3) -> tuple[float, float]:
    """(forward multiply-adds per image, kernels of one eval forward) of ``model_fn()`` at
    ``resolution``, the model built once on meta."""
    from harness.complexity import measure

    with torch.device("meta"):
        model = model_fn()
    macs = measure(model, resolution, channels).flops
    return macs, forward_kernels(model, torch.zeros(1, channels, resolution, resolution,
                                                 device="meta"))


def compile_phase(what: str, models_compiled: int, model: CostModel = GPU) -> Phase:
    return Phase("compile", what, models_compiled * model.compile_seconds)


def svd_flops(rows: int, cols: int) -> float:
    """Flops of a thin SVD with both factors of a rows × cols matrix (Golub & Van Loan's
    R-SVD count, 4mn² + 8n³ with n the smaller side)."""
    m, n = max(rows, cols), min(rows, cols)
    return 4 * m * n * n + 8 * n ** 3


def tucker2_flops(out_channels: int, in_channels: int, kernel: int, iterations: int) -> float:
    """partial_tucker on modes (0, 1) of a T × S × k × k weight: the SVD init of both
    unfoldings, then ``iterations`` HOOI sweeps (bounded here by the full unfoldings)."""
    k2 = kernel * kernel
    per_sweep = svd_flops(out_channels, in_channels * k2) + svd_flops(in_channels, out_channels * k2)
    return (1 + iterations) * per_sweep


def decompose_phase(what: str, flops: float, model: CostModel = GPU) -> Phase:
    return Phase("decompose", what, flops / model.svd_flops_per_second)


def host_phase(what: str, flops: float, model: CostModel = GPU) -> Phase:
    """Linear algebra on the host CPU (the GPU waits): ``flops`` at ``cpu_flops_per_second``."""
    return Phase("host", what, flops / model.cpu_flops_per_second)


@dataclass
class Estimate:
    """The priced phases of one or more claims, by key: a run shared between claims (same
    cache key) or a phase declared twice under one key counts once."""

    phases: dict[str, Phase] = field(default_factory=dict)

    def add(self, jobs: Sequence[TrainJob], concurrency: int = 1) -> Estimate:
        """Training runs, ``concurrency`` of them sharing the GPU at once."""
        for job in jobs:
            key = "train:" + cache_key(job.key, code="estimate")
            if key not in self.phases:
                self.phases[key] = train_phase(job, concurrency)
        return self

    def add_phase(self, key: str, phase: Phase) -> Estimate:
        self.phases.setdefault(key, phase)
        return self

    def merged(self, other: Estimate) -> Estimate:
        return Estimate({**self.phases, **other.phases})

    @property
    def seconds(self) -> dict[str, float]:
        return {k: p.seconds for k, p in self.phases.items()}

    @property
    def runs(self) -> int:
        return sum(p.kind == "train" for p in self.phases.values())

    @property
    def total_seconds(self) -> float:
        """Phases one after another, except training runs that share the GPU: N at once
        overlap their hosts' launches but not the device's work, so a group costs
        max(Σ device work, Σ run time / N)."""
        alone = sum(p.seconds for p in self.phases.values() if p.concurrency == 1)
        shared: dict[int, list[Phase]] = {}
        for p in self.phases.values():
            if p.concurrency > 1:
                shared.setdefault(p.concurrency, []).append(p)
        for n, group in shared.items():
            alone += max(sum(p.seconds if p.device_seconds is None else p.device_seconds
                             for p in group),
                         sum(p.seconds for p in group) / n)
        return alone

    @property
    def gpu_hours(self) -> float:
        return self.total_seconds / 3600

    @property
    def minutes(self) -> float:
        return self.total_seconds / 60

    def by_kind(self) -> dict[str, float]:
        """Minutes per phase kind (shared training priced as in ``total_seconds``)."""
        out: dict[str, float] = {}
        for p in self.phases.values():
            if p.kind != "train":
                out[p.kind] = out.get(p.kind, 0.0) + p.seconds / 60
        trained = Estimate({k: p for k, p in self.phases.items() if p.kind == "train"})
        if trained.phases:
            out["train"] = trained.total_seconds / 60
        return out

    def launch_bound_runs(self) -> int:
        return sum(p.kind == "train" and p.launch_bound for p in self.phases.values())

    def peak_bytes(self) -> float:
        """The most GPU memory held at once: a phase's own peak, times the runs that share
        the GPU with it."""
        return max((p.peak_bytes * p.concurrency for p in self.phases.values()
                    if p.peak_bytes is not None), default=0.0)


def estimate(jobs: Sequence[TrainJob]) -> Estimate:
    return Estimate().add(jobs)


def family_of(claim_id: str) -> str:
    return claim_id.split(".", 1)[0]


def by_family(estimates: dict[str, Estimate]) -> dict[str, Estimate]:
    """Claims' estimates merged per family (the claim ID's prefix): shared phases once."""
    out: dict[str, Estimate] = {}
    for claim_id, est in sorted(estimates.items()):
        fam = family_of(claim_id)
        out[fam] = out.get(fam, Estimate()).merged(est)
    return out


def estimate_record(estimates: dict[str, Estimate]) -> dict[str, Any]:
    """What a dry run stores and ``load_estimate`` reads: minutes per family and in total."""
    families = by_family(estimates)
    total = Estimate()
    for est in families.values():
        total = total.merged(est)
    return {
        "schema": 1,
        "device": "one H100 (model: harness/costs.py)",
        "total_minutes": round(total.minutes, 2),
        "budget_minutes": FULL_BUDGET_MINUTES,
        "families": {f: round(e.minutes, 2) for f, e in families.items()},
        "by_kind": {f: {k: round(v, 2) for k, v in e.by_kind().items()}
                    for f, e in families.items()},
        "runs": {f: e.runs for f, e in families.items()},
        "peak_gib": {f: round(e.peak_bytes() / 2**30, 2) for f, e in families.items()},
        "assumptions": list(ASSUMPTIONS),
    }


ESTIMATE_NAME = "estimate.json"


def estimate_path(root: Path | None = None, profile: str = "full") -> Path:
    """Beside the profile's references (``references.DEFAULT_ROOT`` unless ``root``)."""
    default = Path(__file__).resolve().parent.parent / "reference_results"
    return Path(root or default) / profile / ESTIMATE_NAME


def load_estimate(root: Path | None = None, profile: str = "full") -> dict[str, Any] | None:
    """The stored estimate of ``profile`` (written by ``--dry-run --regen-references``), or
    None when there is none or it cannot be read."""
    path = estimate_path(root, profile)
    try:
        doc = json.loads(path.read_text())
        float(doc["total_minutes"])
        dict(doc["families"])
        return doc
    except (OSError, ValueError, KeyError, TypeError):
        return None


def placeholder_data(spec: DataSpec, resolution: int, channels: int = 3) -> DatasetSplits:
    """Splits of ``spec``'s full size and ``resolution`` holding no data (one zero image,
    expanded): enough to build a study's full-size jobs and count their work without the
    dataset (a dry run has no CIFAR)."""
    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.zeros(1, channels, resolution, resolution).expand(n, -1, -1, -1),
                torch.zeros(1, dtype=torch.long).expand(n))

    test = spec.test_size or (10_000 if spec.name != "synthetic" else 2_000)
    return DatasetSplits(split(spec.train_count), split(test), spec.num_classes, resolution,
                         f"placeholder for {spec.name} at {resolution} px (no data)")


def placeholder_jobs(cfg: Any, cells: Iterable[Any],
                     cell_job: Callable[[Any, Any, DatasetSplits, str], TrainJob]
                     ) -> list[TrainJob]:
    """A grid study's jobs, ``cell_job(cfg, cell, data, "cpu")`` per cell, built on
    ``placeholder_data`` for ``cfg.data`` at ``cfg.resolution``: what a dry run estimates at
    full size, without loading the data or training anything."""
    data = placeholder_data(cfg.data, cfg.resolution)
    return [cell_job(cfg, cell, data, "cpu") for cell in cells]

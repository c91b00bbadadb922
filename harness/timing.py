"""Wall-clock timing of inference and of one training step, done carefully.

- Uses ``torch.utils.benchmark.Timer``, which synchronises CUDA and runs warm-up itself.
- CUDA: cudnn.benchmark on, and the first (autotuning) calls are excluded by a warm-up.
- CPU: a fixed thread count, so numbers are comparable between runs on the same machine.
- Reports median and interquartile range; a wide IQR relative to the median gets a warning,
  since such a number is mostly noise.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness import environment
from harness.train import AMP_DTYPES, TrainConfig, make_optimizer, make_step

NOISY_IQR_RATIO = 0.15  # IQR/median above this marks a measurement as noisy


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and interquartile range over repeated blocks, and the fastest
    block (``best``): load on a shared CPU only ever adds time, so the fastest block is the
    estimate that other work on the machine moves least; comparisons read it."""

    median: float
    iqr: float
    runs: int
    best: float

    @classmethod
    def of(cls, m) -> Timing:
        """From a ``torch.utils.benchmark`` Measurement (``blocked_autorange``)."""
        return cls(m.median, m.iqr, len(m.times), min(m.times))

    @classmethod
    def exact(cls, seconds: float) -> Timing:
        """A timing without spread (every block took ``seconds``): for fakes in tests."""
        return cls(seconds, 0.0, 1, seconds)

    @property
    def noisy(self) -> bool:
        return self.iqr / self.median > NOISY_IQR_RATIO if self.median > 0 else True


def _measure(fn, setup: TimingSetup, label: str) -> Timing:
    from torch.utils import benchmark

    device, cpu_threads = setup.device, setup.cpu_threads
    with environment.timing_settings(device, cpu_threads):
        for _ in range(setup.warmup):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        timer = benchmark.Timer(
            stmt="fn()", globals={"fn": fn}, num_threads=cpu_threads if device == "cpu" else 1,
            label=label,
        )
        m = timer.blocked_autorange(min_run_time=setup.min_run_time)
    return warn_if_noisy(Timing.of(m), label)


def warn_if_noisy(t: Timing, label: str) -> Timing:
    if t.noisy:
        warnings.warn(
            f"noisy timing for {label}: IQR/median = {t.iqr / max(t.median, 1e-12):.2f} "
            f"(median {t.median * 1e3:.3g} ms over {t.runs} blocks)",
            stacklevel=4,
        )
    return t


@dataclass(frozen=True)
class TimingSetup:
    """How a network is timed: where, in which precision and layout, for how long.

    ``amp_dtype``: inference casts a copy of the model (and the input) to it once, as one
    deploys; a training step runs under autocast, as the loop trains. ``compile``:
    ``torch.compile`` the model first (the warm-up absorbs compilation)."""

    device: str = "cpu"
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    cpu_threads: int = 1
    min_run_time: float = 0.2
    warmup: int = 2


def time_inference(model: nn.Module, batch_size: int, resolution: int,
                   setup: TimingSetup = TimingSetup(), in_channels: int = 3) -> Timing:
    """Seconds per forward pass in eval mode under ``no_grad``."""
    if setup.amp_dtype is not None:
        model = copy.deepcopy(model).to(setup.amp_dtype)  # cast once, not per call
    model, x = _on_device(model.eval(), batch_size, resolution, setup, in_channels)
    forward_fn = _compiled(model, setup)

    def forward() -> None:
        with torch.no_grad():
            forward_fn(x)

    return _measure(forward, setup, "inference")


def time_train_step(model: nn.Module, batch_size: int, resolution: int, num_classes: int,
                    setup: TimingSetup = TimingSetup(), microbatches: int = 1) -> Timing:
    """Seconds per training step: the loop's own step (``train.make_step``: forward,
    cross-entropy, backward, an SGD step with momentum, no weight decay or label smoothing).

    ``microbatches`` = k > 1: where the step does not fit the device at once
    (``harness.memory.microbatches``), k forward/backward passes of ``batch_size / k`` images
    accumulate the gradient (each loss weighted 1/k: the batch mean's gradient), then one
    optimizer step: the same per-image work (batch norm then normalises over each micro-batch).
    1 is the plain step, unchanged."""
    if microbatches < 1 or batch_size % microbatches:
        raise ValueError(f"{microbatches} micro-batches do not divide the batch of {batch_size}")
    model, x = _on_device(model.train(), batch_size, resolution, setup)
    forward_fn = _compiled(model, setup)
    y = torch.randint(0, num_classes, (batch_size,), device=setup.device)
    amp = next((name for name, dtype in AMP_DTYPES.items() if dtype == setup.amp_dtype), None)
    # x is already in the setup's layout; a tiny lr keeps the weights (and the work) as they are.
    cfg = TrainConfig(lr=1e-6, nesterov=False, weight_decay=0.0, label_smoothing=0.0, amp=amp)
    if microbatches > 1:  # the loop has no accumulation: the same optimizer, its passes split
        return _measure(_accumulated_step(forward_fn, make_optimizer(model, cfg), x, y, setup,
                                          microbatches), setup,
                        f"train step ({microbatches} micro-batches)")
    step = make_step(model, cfg, setup.device, forward=forward_fn)
    return _measure(lambda: step(x, y), setup, "train step")


def _accumulated_step(forward_fn: Callable[[torch.Tensor], torch.Tensor],
                      opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                      setup: TimingSetup, k: int) -> Callable[[], None]:
    """One step as ``k`` accumulated passes over ``x``'s chunks (views, made once: slicing is
    no part of the timed work). The gradients are zeroed first, since they accumulate."""
    chunks = list(zip(x.chunk(k), y.chunk(k), strict=True))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for xc, yc in chunks:
            with _autocast(setup.device, setup.amp_dtype):
                loss = nn.functional.cross_entropy(forward_fn(xc), yc) / k
            loss.backward()  # frees this chunk's saved tensors before the next forward
        opt.step()

    return step


@dataclass(frozen=True)
class RatioSummary:
    """time(b) / time(a) over interleaved rounds: median, min and max of the rounds' ratios,
    and ``best``: b's fastest block over a's fastest, across every round (what a comparison
    reads: the least moved by load that hit one side of a round more than the other)."""

    median: float
    low: float
    high: float
    best: float


def interleaved_ratio(a: Callable[[], None], b: Callable[[], None], rounds: int,
                      min_run_time: float = 0.4) -> RatioSummary:
    """Time ``a`` then ``b`` in each of ``rounds`` (so load hits both alike) with
    ``torch.utils.benchmark``; the ratio b/a per round, summarised. The caller fixes threads."""
    from torch.utils import benchmark

    pairs = []
    for _ in range(rounds):
        t_a = benchmark.Timer("f()", globals={"f": a}).blocked_autorange(min_run_time=min_run_time)
        t_b = benchmark.Timer("f()", globals={"f": b}).blocked_autorange(min_run_time=min_run_time)
        pairs.append((Timing.of(t_a), Timing.of(t_b)))
    return _summary(pairs)


def inference_ratio(a: nn.Module, b: nn.Module, batch_size: int, resolution: int,
                    setup: TimingSetup = TimingSetup(), rounds: int = 3,
                    in_channels: int = 3) -> RatioSummary:
    """Inference time of ``b`` over ``a``'s, each timed by ``time_inference`` (threads, warm-up,
    precision, inputs), in ``rounds`` interleaved pairs so that load hits both alike."""
    pairs = []
    for _ in range(rounds):
        t_b = time_inference(b, batch_size, resolution, setup, in_channels)
        pairs.append((time_inference(a, batch_size, resolution, setup, in_channels), t_b))
    return _summary(pairs)


def _summary(pairs: list[tuple[Timing, Timing]]) -> RatioSummary:
    """The rounds' (a, b) timings as b over a: per-round medians, and fastest over fastest."""
    ratios = sorted(tb.median / ta.median for ta, tb in pairs)
    best = min(tb.best for _, tb in pairs) / min(ta.best for ta, _ in pairs)
    return RatioSummary(ratios[len(ratios) // 2], ratios[0], ratios[-1], best)


def synchronised(fn: Callable[[], None], device: str) -> Callable[[], None]:
    """``fn`` followed by a CUDA synchronise, so a wall-clock timer around a call (as
    pytest-benchmark's) sees the GPU's work finish rather than the launch return. The previous
    call's synchronise leaves the queue empty when the next starts. On the CPU, ``fn`` itself."""
    if device != "cuda":
        return fn

    def call() -> None:
        fn()
        torch.cuda.synchronize()

    return call


def bench_device() -> str:
    """Where benchmarks run: CUDA when this torch sees a GPU, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def batch_doubling_ratio(time_at: Callable[[int], Timing], batch_size: int) -> float:
    """t(2B) / t(B): 2 when the device, not the host, bounds the time (twice the work takes
    twice as long); towards 1 when launching kernels does (a dispatch-bound timing says
    little about the network). ``time_at(b)`` times one call at batch ``b``."""
    return time_at(2 * batch_size).best / time_at(batch_size).best


# t(2B)/t(B) under this: the host (Python, the dispatcher, kernel launches), not the device,
# sets the pace, and the timing says little about the network's work.
DISPATCH_BOUND_BELOW = 1.6


def dispatch_bound(doubling: float, below: float = DISPATCH_BOUND_BELOW) -> bool:
    """Whether a timing whose ``batch_doubling_ratio`` is ``doubling`` was dispatch-bound
    (t(2B)/t(B) < ``below``). NaN (not measured) is not flagged: the rule needs a measurement.

    How the claims use it: on CUDA a dispatch-bound timing is flagged in the evidence and does
    not decide a runtime comparison (the verdict is INCONCLUSIVE on it); on the CPU, whose
    references predate the rule, the ratio is only reported."""
    return bool(doubling < below)


def _on_device(model: nn.Module, batch_size: int, resolution: int, setup: TimingSetup,
               in_channels: int = 3) -> tuple[nn.Module, torch.Tensor]:
    """The model and a random input batch on the device, in the model's dtype, optionally
    channels_last."""
    model = model.to(setup.device)
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.randn(batch_size, in_channels, resolution, resolution, device=setup.device,
                    dtype=dtype)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def _compiled(model: nn.Module, setup: TimingSetup):
    """``torch.compile(model)`` when the setup asks for it, after checking that this machine can
    build the kernels (``harness.compile_check``: a clear error now, not an obscure one from
    inside inductor at the first call); else the model itself."""
    if not setup.compile:
        return model
    from harness.compile_check import require_compiler

    require_compiler(setup.device)
    return torch.compile(model)


def _autocast(device: str, dtype: torch.dtype | None):
    return torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None)

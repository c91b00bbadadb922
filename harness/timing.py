"""Wall-clock timing of inference and of one training step, done carefully.

- Uses ``torch.utils.benchmark.Timer``, which synchronises CUDA and runs warm-up itself.
- CUDA: cudnn.benchmark on, and the first (autotuning) calls are excluded by a warm-up.
- CPU: a fixed thread count, so numbers are comparable between runs on the same machine.
- Reports median and interquartile range; a wide IQR relative to the median gets a warning,
  since such a number is mostly noise.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

NOISY_IQR_RATIO = 0.15  # IQR/median above this marks a measurement as noisy


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and interquartile range over repeated blocks."""

    median: float
    iqr: float
    runs: int

    @property
    def noisy(self) -> bool:
        return self.iqr / self.median > NOISY_IQR_RATIO if self.median > 0 else True


@contextmanager
def timing_settings(device: str, cpu_threads: int):
    """cudnn autotuning on CUDA; a fixed thread count on the CPU. Restores both afterwards."""
    prev_threads, prev_bench = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        if device == "cuda":
            torch.backends.cudnn.benchmark = True
        else:
            torch.set_num_threads(cpu_threads)
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark = prev_bench


def _measure(fn, device: str, cpu_threads: int, min_run_time: float, warmup: int,
             label: str) -> Timing:
    from torch.utils import benchmark

    with timing_settings(device, cpu_threads):
        for _ in range(warmup):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        timer = benchmark.Timer(
            stmt="fn()", globals={"fn": fn}, num_threads=cpu_threads if device == "cpu" else 1,
            label=label,
        )
        m = timer.blocked_autorange(min_run_time=min_run_time)
    return warn_if_noisy(Timing(median=m.median, iqr=m.iqr, runs=len(m.times)), label)


def warn_if_noisy(t: Timing, label: str) -> Timing:
    if t.noisy:
        warnings.warn(
            f"noisy timing for {label}: IQR/median = {t.iqr / max(t.median, 1e-12):.2f} "
            f"(median {t.median * 1e3:.3g} ms over {t.runs} blocks)",
            stacklevel=4,
        )
    return t


def time_inference(
    model: nn.Module,
    batch_size: int,
    resolution: int,
    *,
    device: str = "cpu",
    channels_last: bool = False,
    amp_dtype: torch.dtype | None = None,
    cpu_threads: int = 1,
    min_run_time: float = 0.2,
    warmup: int = 2,
) -> Timing:
    """Seconds per forward pass in eval mode under ``no_grad``."""
    model, x = _on_device(model.eval(), batch_size, resolution, device, channels_last)

    def forward() -> None:
        with torch.no_grad(), _autocast(device, amp_dtype):
            model(x)

    return _measure(forward, device, cpu_threads, min_run_time, warmup, "inference")


def time_train_step(
    model: nn.Module,
    batch_size: int,
    resolution: int,
    *,
    num_classes: int,
    device: str = "cpu",
    channels_last: bool = False,
    amp_dtype: torch.dtype | None = None,
    cpu_threads: int = 1,
    min_run_time: float = 0.2,
    warmup: int = 2,
) -> Timing:
    """Seconds per training step: forward, cross-entropy, backward and an SGD step."""
    model, x = _on_device(model.train(), batch_size, resolution, device, channels_last)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)

    def step() -> None:
        with _autocast(device, amp_dtype):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _measure(step, device, cpu_threads, min_run_time, warmup, "train step")


def _on_device(model: nn.Module, batch_size: int, resolution: int, device: str,
               channels_last: bool) -> tuple[nn.Module, torch.Tensor]:
    """The model and a random input batch on ``device``, optionally channels_last."""
    model = model.to(device)
    x = torch.randn(batch_size, 3, resolution, resolution, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def _autocast(device: str, dtype: torch.dtype | None):
    return torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None)

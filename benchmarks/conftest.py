"""Shared by the speed benchmarks (``nox -s bench``; the gate: ``harness/benchgate.py``).

- ``bench(fn, device)`` times ``fn`` with pytest-benchmark's pedantic mode: a fixed warm-up
  and number of rounds (no calibration loop, which would time an unsynchronised CUDA launch),
  and on CUDA every call ends in a synchronise (``timing.synchronised``), cudnn autotuning on
  and excluded by the warm-up; on the CPU one thread, so runs on one machine compare.
- Every run's ``machine_info`` carries the GPU name, driver and CUDA version and the machine
  id under which ``--save-baseline`` stores the baseline.

Hot paths benchmarked: the training and inference step of scaled models
(test_bench_models.py), the training step of a smoke model (test_bench_train_step.py), AGC's
step (test_bench_agc.py), mask maintenance (test_bench_sparse.py), and complexity counting of
RegNetY-16GF (test_bench_complexity.py), and a Tucker-2-decomposed network against its
original plus the decomposition itself (test_bench_decompose.py); and the loop's own overhead
against a bare PyTorch loop doing the same work (test_bench_loop_overhead.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest


def pytest_benchmark_update_machine_info(config, machine_info):
    from harness.benchgate import machine_info as harness_machine_info

    machine_info.update(harness_machine_info())


@pytest.fixture
def bench(benchmark) -> Callable[..., None]:
    """``bench(fn, device, rounds=20, warmup=3)``: time ``fn`` as described above."""
    from harness.environment import timing_settings
    from harness.timing import synchronised

    def run(fn: Callable[[], None], device: str, rounds: int = 20, warmup: int = 3) -> None:
        with timing_settings(device, cpu_threads=1):
            benchmark.pedantic(synchronised(fn, device), warmup_rounds=warmup, rounds=rounds,
                               iterations=1)
        benchmark.extra_info["device"] = device

    return run

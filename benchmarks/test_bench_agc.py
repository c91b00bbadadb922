"""AGC's overhead per training step, as a ratio against the same step without clipping: both
the loop's real step (``train.make_step``), one with AGC as its ``before_step`` hook.

Both variants are timed in the same process, interleaved, with ``torch.utils.benchmark``; the
ratio goes to ``extra_info["agc_overhead_ratio"]`` (>1: AGC costs that factor). The benchmark's
own timing is the AGC step, for ``--benchmark-compare``. No test asserts wall-clock time.
"""

from __future__ import annotations

import torch

from harness import models
from harness.agc.study import AGCHook
from harness.environment import cpu_name
from harness.timing import interleaved_ratio
from harness.train import TrainConfig, make_step

MODEL, BATCH, RES, LAM, ROUNDS = "nf_resnet_tiny", 32, 32, 0.01, 7


CFG = TrainConfig(lr=1e-3)  # the recipe's step (SGD, Nesterov, weight decay, smoothing)


def agc_step(clip: bool):
    torch.manual_seed(0)
    model = models.build(MODEL, resolution=RES).train()
    x, y = torch.randn(BATCH, 3, RES, RES), torch.randint(0, 10, (BATCH,))
    hooks = [AGCHook(LAM)] if clip else []  # the hook train() runs, classifier skipped
    step = make_step(model, CFG, before_step=hooks)
    return lambda: step(x, y)


def test_agc_overhead_per_step(benchmark):
    torch.set_num_threads(1)  # fixed, so runs on the same machine compare
    plain, clipped = agc_step(False), agc_step(True)
    ratio = interleaved_ratio(plain, clipped, ROUNDS)  # load hits both variants alike
    benchmark.group = "agc"
    benchmark.pedantic(clipped, warmup_rounds=3, rounds=20, iterations=1)
    benchmark.extra_info.update({
        "agc_overhead_ratio": ratio.median,  # median over interleaved rounds
        "agc_overhead_ratio_min": ratio.low,
        "agc_overhead_ratio_max": ratio.high,
        "model": MODEL, "batch": BATCH, "resolution": RES, "lambda": LAM,
        "device": f"cpu: {cpu_name()}, 1 thread, torch {torch.__version__}",
    })

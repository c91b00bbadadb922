"""Dynamic sparse training: the step-time overhead of mask maintenance against dense training
(a ratio measured in one run, interleaved), and the cost of one mask update for a
ResNet-18-sized model. Every step timed is the loop's real step (``train.make_step``), the masks
its ``after_step`` hook. Speed is reported, never asserted: ``nox -s bench``."""

from __future__ import annotations

import torch
from torch.utils import benchmark as tb

from harness import models
from harness.environment import cpu_name
from harness.sparse import DynamicSparse, SparseConfig
from harness.timing import interleaved_ratio
from harness.train import RunStart, TrainConfig, make_optimizer, make_step

MODEL, BATCH, RES, ROUNDS, DT = "vgg_tiny", 32, 16, 7, 100
CFG = TrainConfig(lr=1e-3)  # the recipe's step (SGD, Nesterov, weight decay, smoothing)


def sparse_step(sparse: bool, update_interval: int = DT):
    torch.manual_seed(0)
    model = models.build(MODEL, resolution=RES).train()
    x, y = torch.randn(BATCH, 3, RES, RES), torch.randint(0, 10, (BATCH,))
    opt = make_optimizer(model, CFG)
    hooks = []
    if sparse:
        hooks = [DynamicSparse(SparseConfig(0.9, update_interval=update_interval,
                                            stop_fraction=1.0))]
        hooks[0].start(RunStart(model, opt, 10**9, 100, 0))
    step = make_step(model, CFG, optimizer=opt, after_step=hooks)  # counts its steps for ΔT
    return lambda: step(x, y)


def test_mask_maintenance_overhead_per_step(benchmark):
    """Masking weights and momentum every step, plus an update every ΔT=100 steps (its cost
    spread over the run, as training sees it)."""
    torch.set_num_threads(1)
    dense, sparse = sparse_step(False), sparse_step(True)
    ratio = interleaved_ratio(dense, sparse, ROUNDS)  # load hits both alike
    benchmark.group = "sparse"
    benchmark.pedantic(sparse, warmup_rounds=3, rounds=20, iterations=1)
    benchmark.extra_info.update({
        "sparse_over_dense_step": ratio.median,
        "sparse_over_dense_step_min": ratio.low, "sparse_over_dense_step_max": ratio.high,
        "model": MODEL, "batch": BATCH, "resolution": RES, "update_interval": DT,
        "device": f"cpu: {cpu_name()}, 1 thread, torch {torch.__version__}",
    })


def test_one_mask_update_of_a_resnet18_sized_model(benchmark):
    """One prune-and-grow update (RigL: gradient growth) over every conv of ResNet-18
    (11M weights), against one dense training step of the same model at batch 8."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = models.build("bn_resnet18_cifar").train()
    opt = make_optimizer(model, CFG)
    hook = DynamicSparse(SparseConfig(0.9, growth="gradient", stop_fraction=1.0))
    hook.start(RunStart(model, opt, 10**9, 100, 0))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    step = make_step(model, CFG, optimizer=opt)  # dense: the masks' hook is not in it
    step(x, y)  # leaves the gradients the growth criterion reads

    t_step = tb.Timer("f()", globals={"f": lambda: step(x, y)}).blocked_autorange(min_run_time=1.0)
    benchmark.group = "sparse"
    benchmark.pedantic(lambda: hook.update(1), warmup_rounds=1, rounds=5, iterations=1)
    t_update = benchmark.stats.stats.median
    benchmark.extra_info.update({
        "update_over_dense_step_b8": t_update / t_step.median,
        "weights": sum(p.numel() for p in hook._params),
        "device": f"cpu: {cpu_name()}, 1 thread, torch {torch.__version__}",
    })

"""The harness loop's own overhead: ``train.train`` against a bare PyTorch loop doing the same work
(same model, data, optimizer, schedule, label smoothing and final evaluation), interleaved in one
run so load hits both alike. Reported as bare time / loop time (1.0: no overhead; the target is
at least 0.95), never asserted: ``nox -s bench``."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from harness import models
from harness.data import synthetic_dataset
from harness.timing import interleaved_ratio
from harness.train import TrainConfig, evaluate, lr_factor, make_optimizer, train

MODEL, RES, BATCH, STEPS, ROUNDS = "vgg_tiny", 16, 32, 40, 5
CFG = TrainConfig(epochs=1, batch_size=BATCH, lr=0.05, warmup_epochs=0.2, max_steps=STEPS,
                  check_every=10, eval_batch_size=256, cpu_threads=1)


def _data():
    data = synthetic_dataset(resolution=RES, train_size=BATCH * STEPS, test_size=256, seed=0)
    return data.train, data.test


def harness_loop(train_set, test_set) -> None:
    train(functools.partial(models.build, MODEL, resolution=RES), train_set, test_set, CFG,
          progress=False)


def bare_loop(train_set, test_set) -> None:
    """What the loop does for a plain run, written out: seeded build, the same optimizer and
    schedule, shuffled full batches, one step each, the final evaluation."""
    torch.manual_seed(CFG.seed)
    model = models.build(MODEL, resolution=RES)
    opt = make_optimizer(model, CFG)
    n = len(train_set[0])
    total = min(CFG.total_steps(n), STEPS)
    warmup = round(CFG.warmup_epochs * CFG.steps_per_epoch(n))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, CFG.schedule, CFG.final_lr_fraction))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(CFG.seed))
    x_all, y_all = train_set
    model.train()
    for i in range(total):
        idx = order[i * BATCH:(i + 1) * BATCH]
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx], label_smoothing=CFG.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    evaluate(model, test_set, "cpu", CFG)


def test_loop_overhead_against_a_bare_pytorch_loop(benchmark):
    torch.set_num_threads(1)
    train_set, test_set = _data()
    loop = functools.partial(harness_loop, train_set, test_set)
    bare = functools.partial(bare_loop, train_set, test_set)
    ratio = interleaved_ratio(loop, bare, ROUNDS)  # bare / loop per round: throughput of the loop
    benchmark.group = "loop-overhead"
    benchmark.extra_info.update({
        "model": MODEL, "batch": BATCH, "steps": STEPS,
        "bare_over_loop": round(ratio.best, 4), "bare_over_loop_median": round(ratio.median, 4),
        "rounds": ROUNDS, "target": ">= 0.95"})
    print(f"\nloop throughput vs a bare PyTorch loop: {ratio.best:.3f}x (fastest blocks), "
          f"{ratio.median:.3f}x (median of {ROUNDS} rounds); target >= 0.95")
    benchmark.pedantic(loop, warmup_rounds=1, rounds=3, iterations=1)

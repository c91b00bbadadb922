"""How many kernels a training step launches, and a forward pass: counted, not guessed.

The cost model (``harness.costs``) prices a step at the larger of the device's work and the
host's launch floor, kernels per step × seconds per launch; small nets at small batches are
launch-bound. ``step_ops`` runs the job's own loop, model, hooks and step function for a few
steps on the CPU under a dispatch-mode counter (view and metadata ops launch nothing).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass

import torch

from harness.runs.jobs import TrainJob


class _KernelCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ATen ops that launch a kernel: views and metadata ops launch none."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func not in _NO_KERNEL:
            self.ops += 1
        return func(*args, **(kwargs or {}))


_NO_KERNEL = frozenset({torch.ops.aten.detach.default, torch.ops.aten.alias.default,
                        torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default,
                        torch.ops.aten.empty_like.default, torch.ops.aten.lift_fresh.default,
                        torch.ops.aten._local_scalar_dense.default,
                        torch.ops.aten.set_.source_Storage_storage_offset})


@dataclass(frozen=True)
class StepOps:
    """Kernels a training step launches, and a forward pass alone (for evaluation)."""

    step: float
    forward: float


_STEP_OPS: dict[str, StepOps] = {}


def step_ops(job: TrainJob) -> StepOps:
    """Kernels per step of ``job``: its loop, model, hooks and step function run on the CPU at
    batch 4 for 1 and for 3 steps under a counter; the difference over 2 is one step (model
    building, hook start-up and the final evaluation cancel out). Cached per job without its
    seed: seeds launch the same kernels. Mask updates every ΔT steps are not in 3 steps; they
    are a small share of ΔT ≥ 50 steps."""
    from harness.train import train

    sig = op_signature(job)
    if sig in _STEP_OPS:
        return _STEP_OPS[sig]
    batch = 4
    x, y = job.train_set
    x_test, y_test = job.test_set
    data = ((x[:16].contiguous(), y[:16].contiguous()), (x_test[:batch].contiguous(),
                                                          y_test[:batch].contiguous()))

    def count(steps: int) -> int:
        cfg = dataclasses.replace(job.cfg, batch_size=batch, max_steps=steps, epochs=100,
                                  check_every=10**6, eval_batch_size=batch, compile=False,
                                  cpu_threads=1)
        counter = _KernelCounter()
        hooks = copy.deepcopy((job.before_step, job.after_step, job.step_fn))  # hooks bind to one run
        with counter, _foreach_optimizers():
            train(job.model_fn, *data, cfg, device="cpu", before_step=hooks[0],
                  after_step=hooks[1], step_fn=hooks[2], progress=False)
        return counter.ops

    per_step = (count(3) - count(1)) / 2
    with torch.device("meta"):
        model = job.model_fn()
    weights = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    passes = getattr(job.step_fn, "forward_passes", 1)
    if job.cfg.amp is not None:  # autocast casts each weight on the way in and its grad back
        per_step += 2 * weights * passes
    forward = forward_kernels(model, x[:2])
    _STEP_OPS[sig] = StepOps(per_step, forward)
    return _STEP_OPS[sig]


@contextlib.contextmanager
def _foreach_optimizers():
    """Optimizers take their CUDA default while counting: the multi-tensor (foreach) kernels,
    a few launches per step, where the CPU default loops over every parameter."""
    import importlib

    # each module imported the chooser by name: patch it where it is looked up
    modules = [importlib.import_module(f"torch.optim.{m}") for m in ("sgd", "adam")]
    originals = [m._default_to_fused_or_foreach for m in modules]
    for m in modules:
        m._default_to_fused_or_foreach = lambda *a, **k: (False, True)
    try:
        yield
    finally:
        for m, original in zip(modules, originals):
            m._default_to_fused_or_foreach = original


def op_signature(job: TrainJob) -> str:
    """What sets a job's kernels per step: its model, the kinds of its hooks, its step
    function and the recipe's switches; not its seed, batch size or hyper-parameter values."""
    cfg = job.cfg
    return repr((repr(job.model_fn), [type(h).__name__ for h in (*job.before_step, *job.after_step)],
                 repr(job.step_fn), cfg.amp, cfg.augment, cfg.optimizer, cfg.channels_last,
                 cfg.clip_grad_norm is None, job.train_set[0].shape[1:]))


def forward_kernels(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Kernels of one eval-mode forward (``model`` on the meta device: shapes only)."""
    counter = _KernelCounter()
    with torch.no_grad(), counter:
        model.eval()(x.to("meta"))
    return counter.ops

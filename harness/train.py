"""One compact training loop for every claim, readable in one sitting (airbench-style).

Sections: config -> optimizer and schedule -> one step -> the loop -> evaluation. Caching runs
and running many side by side is ``harness.runs`` (which imports this, never the reverse).

- SGD with momentum (Nesterov optional), linear warm-up then cosine or exponential decay,
  label smoothing, no weight decay on norms and biases (ndim <= 1).
- CUDA: AMP (bf16, or fp16 with a GradScaler), optional torch.compile.
- Any device: channels_last (NHWC); on the CPU oneDNN's NHWC convolutions train the small
  smoke nets 15-30% faster than NCHW.
- One step implementation: ``make_step`` returns it as a callable ``step(x, y) -> loss``;
  ``train`` calls it once per batch, and benchmarks time that same callable.
- Two hook points, so AGC and sparse masks plug in without forking: ``before_step`` runs
  between backward (after unscaling) and the optimizer step, ``after_step`` runs after it. A
  hook may also define ``start(RunStart)`` (called once, after the model and optimizer exist
  and before the first forward) and ``record() -> dict`` (what it measured, stored in
  ``TrainRecord.extra`` and so cached with the run).
- One extension point for a step that is not one loss: ``step_fn(model, (x, y), StepContext)
  -> loss`` replaces the forward and backward (e.g. the sandwich rule: one forward/backward per
  sampled subnet, gradients combined by gradient projection). It runs its own backward passes
  through ``StepContext.backward`` (the loss scaler) inside ``StepContext.autocast()``, leaves
  the step's gradients in ``.grad`` and returns the loss the loop logs and checks for
  divergence. Unscaling, the hooks, the optimizer step and the schedule stay the loop's. It
  may define ``start``/``record`` like a hook; its module enters the cache's code fingerprint.
  Without one, the step is the plain cross-entropy step, unchanged.
- A NaN or exploding loss stops the run and is recorded as ``diverged=True``: a result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 10  # may be fractional: the loop counts steps
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate at ``batch_size`` (claims scale it themselves)
    optimizer: str = "sgd"  # "sgd" (momentum, nesterov) | "adamw" (betas (momentum, 0.999))
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # not applied to norms, gains and biases
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # "cosine" | "exponential" | "constant"
    final_lr_fraction: float = 0.0  # cosine floor / exponential end, as a fraction of lr
    label_smoothing: float = 0.1
    clip_grad_norm: float | None = None  # clip the global gradient norm to this (unscaled)
    augment: bool = False  # random crop + flip
    amp: str | None = None  # "bf16" | "fp16" | None (see ``autocast_dtype``); CUDA only
    channels_last: bool = False  # NHWC model and batches, on any device
    compile: bool = False  # torch.compile; CUDA only
    max_steps: int | None = None  # hard cap (dry runs)
    divergence_loss: float = 50.0  # a loss above this (or NaN) ends the run as diverged
    check_every: int = 10  # steps between divergence checks (each check syncs the GPU)
    eval_batch_size: int = 1000
    cpu_threads: int = 1  # CPU only: fixed, so runs are bit-reproducible (and fast on a shared box)
    seed: int = 0

    def steps_per_epoch(self, n_train: int) -> int:
        return max(1, n_train // self.batch_size)

    def total_steps(self, n_train: int) -> int:
        total = max(1, round(self.epochs * self.steps_per_epoch(n_train)))
        return min(total, self.max_steps) if self.max_steps else total


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(amp: str | None, device: str) -> torch.dtype | None:
    """The autocast dtype of a config's ``amp`` ("bf16", "fp16" or None), one spelling for
    every config (training, timing). Mixed precision is CUDA-only here: None elsewhere."""
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp={amp!r}: expected one of {sorted(AMP_DTYPES)} or None")
    return AMP_DTYPES[amp] if amp is not None and device == "cuda" else None


def grad_scaler(device: str, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The loss scaler: enabled for fp16 autocast only (bf16 and fp32 need none). A seam:
    tests replace it with an enabled CPU scaler to check that hooks see unscaled gradients."""
    return torch.amp.GradScaler("cuda" if device == "cuda" else "cpu",
                                enabled=amp_dtype is torch.float16)


@dataclass
class StepState:
    """What a hook sees: gradients are present and unscaled in ``before_step``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int
    loss: torch.Tensor


StepHook = Callable[[StepState], None]


@dataclass
class StepContext:
    """What a custom ``step_fn`` gets besides the model and the batch: the forward to call
    (the compiled model on CUDA when asked), the step, the recipe, and the loop's precision
    machinery: run forwards inside ``autocast()`` and backwards through ``backward(loss)``
    (the GradScaler: the loop unscales the summed gradients once, before the hooks)."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    step: int
    cfg: TrainConfig
    scaler: torch.amp.GradScaler
    device: str
    amp_dtype: torch.dtype | None

    def autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device, dtype=self.amp_dtype,
                              enabled=self.amp_dtype is not None)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate ``loss``'s gradients into ``.grad`` (scaled when a scaler is on)."""
        self.scaler.scale(loss).backward()


# ``step_fn(model, (x, y), ctx) -> loss``: fills ``.grad`` by its own backward passes.
StepFn = Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor], StepContext], torch.Tensor]


@dataclass
class RunStart:
    """What a hook's optional ``start`` sees, once, before the first forward pass."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    total_steps: int
    steps_per_epoch: int
    seed: int


@dataclass
class TrainRecord:
    test_acc: float  # NaN when the run diverged with non-finite weights
    test_loss: float
    diverged: bool
    steps: int
    loss_curve: list[tuple[int, float]]  # (step, mean train loss since the last point)
    epoch_seconds: list[float]
    images_per_second: float
    peak_memory_mb: float | None  # CUDA: peak allocated; CPU: process peak RSS
    train_seconds: float
    from_cache: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds_per_epoch(self) -> float:
        return sum(self.epoch_seconds) / max(1, len(self.epoch_seconds))


# ------------------------------------------------------------- optimizer and schedule


OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over two groups: weight decay on weights only."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


def lr_factor(step: int, total: int, warmup: int, schedule: str, floor: float) -> float:
    """Multiplier of the peak lr at ``step``: linear warm-up, then the decay."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "exponential":
        return max(floor, 1e-3) ** t
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}; use cosine, exponential or constant")


# ------------------------------------------------------------------------- one step

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # step(x, y) -> loss, detached


def make_step(model: nn.Module, cfg: TrainConfig, device: str = "cpu", *,
              optimizer: torch.optim.Optimizer | None = None,
              scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
              forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
              before_step: Sequence[StepHook] = (), after_step: Sequence[StepHook] = (),
              step_fn: StepFn | None = None) -> Step:
    """The loop's training step as a callable, the one ``train`` runs for every batch: zero the
    gradients; forward and backward in ``cfg``'s precision (or ``step_fn``); unscale; clip;
    the ``before_step`` hooks; the optimizer step; the ``after_step`` hooks; the schedule.

    Defaults for a step outside ``train`` (a benchmark): ``make_optimizer(model, cfg)``, no
    schedule (the lr stays ``cfg.lr``), ``forward`` the model itself. The caller puts the model
    in train mode and calls the hooks' ``start``; the step counts its own calls from 0."""
    opt = optimizer if optimizer is not None else make_optimizer(model, cfg)
    forward = forward if forward is not None else model
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = grad_scaler(device, amp_dtype)
    count = 0

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal count
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if step_fn is None:
            with torch.autocast(device_type=device, dtype=amp_dtype,
                                enabled=amp_dtype is not None):
                loss = F.cross_entropy(forward(x), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
        else:
            opt.zero_grad(set_to_none=True)
            loss = step_fn(model, (x, y), StepContext(forward, count, cfg, scaler, device,
                                                      amp_dtype))
        scaler.unscale_(opt)  # hooks (AGC) and clipping see true gradients
        if cfg.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        state = StepState(model, opt, count, loss.detach())
        for hook in before_step:
            hook(state)
        scaler.step(opt)
        scaler.update()
        for hook in after_step:
            hook(state)
        if scheduler is not None:
            scheduler.step()
        count += 1
        return state.loss

    return step


# ------------------------------------------------------------------------ the loop


def train(model_fn: Callable[[], nn.Module], train_set: tuple[torch.Tensor, torch.Tensor],
          test_set: tuple[torch.Tensor, torch.Tensor], cfg: TrainConfig, *, device: str = "cpu",
          before_step: Sequence[StepHook] = (), after_step: Sequence[StepHook] = (),
          progress: bool | None = None, desc: str = "train",
          step_fn: StepFn | None = None) -> TrainRecord:
    """Train ``model_fn()`` (built after seeding) and evaluate it on ``test_set``. ``step_fn``:
    a custom forward/backward (see ``StepContext``); None is the plain cross-entropy step."""
    from harness.environment import timing_settings

    with timing_settings(device, cfg.cpu_threads):
        return _train(model_fn, train_set, test_set, cfg, device, before_step, after_step,
                      progress, desc, step_fn)


def _train(model_fn, train_set, test_set, cfg, device, before_step, after_step, progress, desc,
           step_fn=None):
    from harness.batches import batches
    from harness.progress import progress_bar

    cuda = device == "cuda"
    if cuda:  # the CUDA kernel setting in force (TF32, determinism): harness.environment
        from harness.environment import apply_cuda_kernel_setting

        apply_cuda_kernel_setting()
    torch.manual_seed(cfg.seed)
    model = model_fn().to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cuda and cfg.compile:  # Triton needs a C compiler and Python's headers: say so first
        from harness.compile_check import require_compiler

        require_compiler("cuda")
    forward = torch.compile(model) if (cuda and cfg.compile) else model
    opt = make_optimizer(model, cfg)

    x_train, y_train = (t.to(device) for t in train_set)
    n_train = len(x_train)
    if n_train < cfg.batch_size or len(test_set[0]) == 0:
        # Full batches only (drop_last): with fewer samples than one batch no step would ever
        # run and the loop would spin.
        raise ValueError(f"{desc}: {n_train} training samples for batch size {cfg.batch_size} "
                         f"and {len(test_set[0])} test samples; need at least one full batch "
                         f"and one test sample")
    total = cfg.total_steps(n_train)
    warmup = min(total, round(cfg.warmup_epochs * cfg.steps_per_epoch(n_train)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, cfg.schedule, cfg.final_lr_fraction))
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    hooks = [*before_step, *after_step, *([step_fn] if step_fn is not None else [])]
    for hook in hooks:
        if hasattr(hook, "start"):
            hook.start(RunStart(model, opt, total, cfg.steps_per_epoch(n_train), cfg.seed))
    one_step = make_step(model, cfg, device, optimizer=opt, scheduler=sched, forward=forward,
                         before_step=before_step, after_step=after_step, step_fn=step_fn)

    bar = progress_bar(total, desc, progress)
    step, diverged = 0, False
    loss_curve: list[tuple[int, float]] = []
    epoch_seconds: list[float] = []
    running = torch.zeros((), device=device)
    since_check = 0
    model.train()
    while step < total and not diverged:
        _sync(device)
        t0 = time.perf_counter()
        for x, y in batches(x_train, y_train, cfg.batch_size, shuffle=True, generator=gen,
                            drop_last=True, augment=cfg.augment):
            running += one_step(x, y).float()
            step += 1
            since_check += 1
            if since_check == cfg.check_every or step == total:
                mean_loss = (running / since_check).item()  # one sync per check
                loss_curve.append((step, mean_loss))
                bar.update(since_check)
                bar.set_postfix(loss=f"{mean_loss:.3f}")
                running.zero_()
                since_check = 0
                if not math.isfinite(mean_loss) or mean_loss > cfg.divergence_loss:
                    diverged = True
                    break
            if step >= total:
                break
        _sync(device)
        epoch_seconds.append(time.perf_counter() - t0)
    bar.close()

    train_seconds = sum(epoch_seconds)
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    acc, test_loss = evaluate(forward, test_set, device, cfg) if finite else (math.nan, math.nan)
    return TrainRecord(
        test_acc=acc, test_loss=test_loss, diverged=diverged, steps=step, loss_curve=loss_curve,
        epoch_seconds=epoch_seconds, train_seconds=train_seconds,
        images_per_second=step * cfg.batch_size / train_seconds if train_seconds > 0 else 0.0,
        peak_memory_mb=_peak_memory_mb(device),
        extra={k: v for hook in hooks if hasattr(hook, "record") for k, v in hook.record().items()})


# ----------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, test_set: tuple[torch.Tensor, torch.Tensor], device: str,
             cfg: TrainConfig) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the test set, in eval mode, in the precision and
    layout the model trained in."""
    was_training = model.training
    model.eval()
    amp_dtype = autocast_dtype(cfg.amp, device)
    x_all, y_all = test_set
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(x_all), cfg.eval_batch_size):
        x = x_all[i:i + cfg.eval_batch_size].to(device)
        y = y_all[i:i + cfg.eval_batch_size].to(device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    return correct.item() / len(x_all), loss_sum.item() / len(x_all)  # one sync at the end


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_memory_mb(device: str) -> float | None:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:
        return None

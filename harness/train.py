"""One compact training loop for every claim, readable in one sitting (airbench-style).

Sections: config -> optimizer and schedule -> the loop -> evaluation -> the on-disk cache.

- SGD with momentum (Nesterov optional), linear warm-up then cosine or exponential decay,
  label smoothing, no weight decay on norms and biases (ndim <= 1).
- CUDA: AMP (bf16, or fp16 with a GradScaler), optional torch.compile.
- Any device: channels_last (NHWC); on the CPU oneDNN's NHWC convolutions train the small
  smoke nets 15-30% faster than NCHW.
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
- Records are cached on disk by a hash of everything that determines them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import atomic, executors
from harness.executors import CellsFailed, ExecutorSpec
from harness.jsonable import to_jsonable

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


# ------------------------------------------------------------------------ the loop


def train(
    model_fn: Callable[[], nn.Module],
    train_set: tuple[torch.Tensor, torch.Tensor],
    test_set: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    *,
    device: str = "cpu",
    before_step: Sequence[StepHook] = (),
    after_step: Sequence[StepHook] = (),
    progress: bool | None = None,
    desc: str = "train",
    step_fn: StepFn | None = None,
) -> TrainRecord:
    """Train ``model_fn()`` (built after seeding) and evaluate it on ``test_set``.

    ``step_fn``: a custom forward/backward (see ``StepContext``); None is the plain
    cross-entropy step."""
    from harness.timing import timing_settings

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
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = grad_scaler(device, amp_dtype)
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
                loss = step_fn(model, (x, y), StepContext(forward, step, cfg, scaler, device,
                                                          amp_dtype))
            scaler.unscale_(opt)  # hooks (AGC) and clipping see true gradients
            if cfg.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            state = StepState(model, opt, step, loss.detach())
            for hook in before_step:
                hook(state)
            scaler.step(opt)
            scaler.update()
            for hook in after_step:
                hook(state)
            sched.step()
            running += loss.detach().float()
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
        test_acc=acc,
        test_loss=test_loss,
        diverged=diverged,
        steps=step,
        loss_curve=loss_curve,
        epoch_seconds=epoch_seconds,
        images_per_second=step * cfg.batch_size / train_seconds if train_seconds > 0 else 0.0,
        peak_memory_mb=_peak_memory_mb(device),
        train_seconds=train_seconds,
        extra={k: v for hook in hooks if hasattr(hook, "record") for k, v in hook.record().items()},
    )


def grad_scaler(device: str, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The loss scaler: enabled for fp16 autocast only (bf16 and fp32 need none). A seam:
    tests replace it with an enabled CPU scaler to check that hooks see unscaled gradients."""
    return torch.amp.GradScaler("cuda" if device == "cuda" else "cpu",
                                enabled=amp_dtype is torch.float16)


# ----------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, test_set: tuple[torch.Tensor, torch.Tensor], device: str,
             cfg: TrainConfig) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the test set, in eval mode, in the precision and
    layout the model trained in."""
    was_training = model.training
    model.eval()
    amp_dtype = autocast_dtype(cfg.amp, device)
    channels_last = cfg.channels_last
    x_all, y_all = test_set
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(x_all), cfg.eval_batch_size):
        x = x_all[i:i + cfg.eval_batch_size].to(device)
        y = y_all[i:i + cfg.eval_batch_size].to(device)
        if channels_last:
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


# ------------------------------------------------------------------------ the cache
#
# A record is reused only when everything that determines it is unchanged: the key the caller
# gives (model config, recipe, data, seed, device class), the torch version, the CPU kernel
# path (another path rounds differently: a new draw, never the same record), and the code: a
# hash of the source of the loop's modules and of those defining the model and the hooks,
# with every harness module they import. Editing the loss invalidates the cache; editing the
# README does not.

CACHE_VERSION = 2  # bump when the loop changes what a record means


def cache_dir() -> Path:
    root = os.environ.get("HARNESS_CACHE")
    return Path(root) if root else Path(__file__).resolve().parent.parent / ".cache" / "train"


_HARNESS_ROOT = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    """The source file of a ``harness`` module or package, without importing it."""
    if name != "harness" and not name.startswith("harness."):
        return None
    rel = Path(*name.split(".")[1:]) if name != "harness" else Path()
    for candidate in (_HARNESS_ROOT / rel.with_suffix(".py") if rel.parts else None,
                      _HARNESS_ROOT / rel / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _imports_of(path: Path) -> set[str]:
    """The harness modules a file imports, lazily (inside functions) or not."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in found if _module_file(n) is not None}


# Modules that decide how and where runs are scheduled and how files are written, never what a
# run computes (tested: every executor gives the same record). They stay out of the key, so
# editing them keeps the cache warm.
_NOT_RUN_CODE = frozenset({_HARNESS_ROOT / "executors.py", _HARNESS_ROOT / "atomic.py"})


def _closure(files: set[Path]) -> set[Path]:
    """``files`` and every harness module they import, transitively (but ``_NOT_RUN_CODE``)."""
    seen: set[Path] = set()
    todo = list(files)
    while todo:
        f = todo.pop()
        if f in seen or f in _NOT_RUN_CODE:
            continue
        seen.add(f)
        if f.suffix == ".py":
            todo += [m for n in _imports_of(f) if (m := _module_file(n)) is not None]
    return seen


def _defining_file(obj: Any) -> Path | None:
    """The source file that defines a callable (through partials and bound methods)."""
    import functools
    import inspect

    while isinstance(obj, functools.partial):
        obj = obj.func
    target = obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)
    try:
        path = inspect.getsourcefile(target)
    except TypeError:  # builtins
        return None
    if path is None or "site-packages" in path or not Path(path).is_file():
        return None  # third-party code is covered by its version (torch's is in the key)
    return Path(path).resolve()


def code_fingerprint(*callables: Any) -> str:
    """A hash of the source that determines a training run: the loop's module and its imports,
    the harness's models and data, and the modules defining ``callables`` (the model factory,
    the hooks) with their imports."""
    # The data's code too: a job carries tensors, and its key only names the data spec.
    files = {Path(__file__).resolve(), _HARNESS_ROOT / "models" / "__init__.py",
             _HARNESS_ROOT / "data" / "__init__.py"}
    files |= {f for c in callables if (f := _defining_file(c)) is not None}
    roots = frozenset(files)
    memo = _FINGERPRINTS.get(roots)
    if memo is not None and all(_stamp(f) == st for f, st in memo[0]):
        return memo[1]  # no file of the closure changed since it was hashed
    closure = sorted(_closure(files))
    h = hashlib.sha256()
    for f in closure:
        h.update(str(f.relative_to(_HARNESS_ROOT.parent) if f.is_relative_to(_HARNESS_ROOT.parent)
                     else f.name).encode())
        h.update(f.read_bytes())
    digest = h.hexdigest()[:16]
    _FINGERPRINTS[roots] = ([(f, _stamp(f)) for f in closure], digest)
    return digest


_FINGERPRINTS: dict[frozenset[Path], tuple[list[tuple[Path, tuple[int, int]]], str]] = {}


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def cache_key(key: dict[str, Any], code: str | None = None, device: str | None = None) -> str:
    """The hash under which a run's record is stored: the caller's key, the torch version, the
    kernel path and the code fingerprint (``code_fingerprint()`` of the loop alone if None).
    A CUDA run (``device``, else a ``device``/``device_class`` in the key naming CUDA) adds the
    CUDA kernel setting in force, so each setting trains its own record; CPU keys are as ever."""
    from harness.environment import cuda_kernel_config, kernel_path

    doc = {"v": CACHE_VERSION, "torch": torch.__version__, "kernels": kernel_path(),
           "code": code if code is not None else code_fingerprint(), **to_jsonable(key)}
    if _on_cuda(key, device):
        doc["cuda_kernels"] = cuda_kernel_config()
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def _on_cuda(key: dict[str, Any], device: str | None) -> bool:
    if device is not None:
        return device == "cuda"
    return any(isinstance(key.get(k), str) and key[k].startswith("cuda")
               for k in ("device", "device_class"))


def cached(key: dict[str, Any], run: Callable[[], TrainRecord], *, enabled: bool = True,
           directory: Path | None = None, code: str | None = None,
           hashed: str | None = None) -> TrainRecord:
    """``run()``'s record, reused from disk when the same key finished before. ``hashed``: the
    key's ``cache_key`` when the caller has it already (``run_jobs``).

    One process trains a key at a time: a lock file per key (``filelock``) makes a concurrent
    run with the same cache wait, then read the first one's record instead of training it
    again. The entry is written atomically, so a run killed midway leaves none or a whole one."""
    from filelock import FileLock

    path = _cache_path(hashed or cache_key(key, code), directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        hit = _load_cached(path) if enabled else None
        if hit is not None:
            return hit
        rec = run()
        atomic.write_text(path, json.dumps({"key": to_jsonable(key),
                                            "record": to_jsonable(asdict(rec))}))
    return rec


def _cache_path(hashed_key: str, directory: Path | None) -> Path:
    return (directory or cache_dir()) / f"{hashed_key}.json"


class CorruptCacheEntry(UserWarning):
    """A cache entry that could not be read: it is moved aside and the run recomputed."""


def _load_cached(path: Path) -> TrainRecord | None:
    """The stored record; None when absent. An unreadable entry is reported, moved aside
    (``*.corrupt``) and None returned, so the run is recomputed, never silently reused."""
    import warnings

    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
        rec = TrainRecord(**{**doc["record"], "from_cache": True})
        rec.loss_curve = [tuple(p) for p in rec.loss_curve]
        if not isinstance(rec.test_acc, (int, float, type(None))) or not isinstance(rec.steps, int):
            raise TypeError("record fields of the wrong type")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        aside = path.with_suffix(".corrupt")
        os.replace(path, aside)
        warnings.warn(f"corrupt training-cache entry {path} ({type(e).__name__}: {e}); moved "
                      f"to {aside.name} and recomputing", CorruptCacheEntry, stacklevel=2)
        return None
    rec.test_acc = math.nan if rec.test_acc is None else rec.test_acc  # NaN is stored as null
    rec.test_loss = math.nan if rec.test_loss is None else rec.test_loss
    return rec


# ------------------------------------------------------------- many runs, side by side


@dataclass
class TrainJob:
    """One cached training run, described so that another process can run it: ``model_fn``
    and the hooks must pickle (module-level functions, ``functools.partial`` of them)."""

    key: dict[str, Any]  # the cache key: everything that determines the record
    model_fn: Callable[[], nn.Module]
    train_set: tuple[torch.Tensor, torch.Tensor]
    test_set: tuple[torch.Tensor, torch.Tensor]
    cfg: TrainConfig
    device: str = "cpu"
    before_step: Sequence[StepHook] = ()
    after_step: Sequence[StepHook] = ()
    desc: str = "train"
    cost: float = 0.0  # expected run time, any unit: the costliest start first
    keep_weights: bool = False  # also cache the trained state_dict (``trained_weights``)
    step_fn: StepFn | None = None  # a custom step (see ``StepContext``); must pickle too

    def code(self) -> str:
        """The fingerprint of the code this run depends on (see ``code_fingerprint``)."""
        extra = (self.step_fn,) if self.step_fn is not None else ()
        return code_fingerprint(self.model_fn, *self.before_step, *self.after_step, *extra)


def run_jobs(jobs: Sequence[TrainJob], *, executor: ExecutorSpec | None = None,
             use_cache: bool = True, directory: Path | None = None,
             progress: bool | None = None) -> list[TrainRecord]:
    """The records of ``jobs``, in order: cached ones read back, the rest trained (once per
    distinct key: duplicates share the record) by ``executor`` (default: ``local``, serial in
    this process; see ``harness.executors`` for ``processes`` and ``slurm``).

    Each cell writes its record to the cache and this process reads it back from there, so a
    killed run resumes with what had finished, and every executor returns the same record: each
    run seeds itself and pins its CPU threads, so a record from a worker process is
    bit-identical to a serial run's; only the measured fields (``MEASURED_FIELDS``) change.
    Cells that fail (an error, a worker that dies, ``cell_timeout``) are raised together as one
    ``CellsFailed`` after the others have finished.
    """
    spec = executor or ExecutorSpec()
    directory = directory or cache_dir()  # resolved here: a Slurm job may not share our env
    keys = [cache_key(job.key, job.code(), job.device) for job in jobs]
    first_of: dict[str, int] = {}  # jobs with equal keys train once and share the record
    for i, key in enumerate(keys):
        first_of.setdefault(key, i)
    out: dict[int, TrainRecord] = {}
    for i in first_of.values():
        hit = _load_cached(_cache_path(keys[i], directory)) if use_cache else None
        if hit is not None and jobs[i].keep_weights and not _weights_ok(keys[i], directory):
            hit = None  # the record without its weights is no use to the caller
        if hit is not None:
            out[i] = hit
    todo = [i for i in first_of.values() if i not in out]
    in_process = spec.name == "local"
    cells = [executors.Cell(_label(jobs[i], keys[i]),
                            functools.partial(_run_job, jobs[i], keys[i], use_cache, directory,
                                              progress if in_process else False),
                            cost=jobs[i].cost, device=jobs[i].device) for i in todo]
    outcomes = executors.run_cells(cells, spec, progress=progress,
                                   log_dir=directory.parent / "submitit")
    failures = []
    for i, cell, trained in zip(todo, cells, outcomes, strict=True):
        if isinstance(trained, executors.CellFailure):
            failures.append(trained)
            continue
        rec = _load_cached(_cache_path(keys[i], directory))  # what the cell wrote
        if rec is None:
            failures.append(executors.CellFailure(cell.label, "the run finished but left no "
                                                  "readable cache entry"))
            continue
        rec.from_cache = not trained  # False: trained just now (maybe by a concurrent run)
        out[i] = rec
    if failures:
        raise CellsFailed(failures)
    return [out[first_of[key]] for key in keys]


# What a run measures about the machine, not what its key determines: the fields that differ
# between two runs of one key (in another process, on a loaded core). Everything else is
# bit-identical whichever executor ran it.
MEASURED_FIELDS = ("epoch_seconds", "images_per_second", "peak_memory_mb", "train_seconds",
                   "from_cache")


def _label(job: TrainJob, hashed: str) -> str:
    """A failed cell's name in messages: its description, cache key and (shortened) config."""
    doc = json.dumps(to_jsonable(job.key), sort_keys=True)
    return f"{job.desc} [cache key {hashed}] {doc if len(doc) <= 300 else doc[:297] + '...'}"


def run_table(cells: Sequence[Any], job: Callable[[Any], TrainJob],
              row: Callable[[Any, TrainRecord], dict[str, Any]], *,
              executor: ExecutorSpec | None = None, use_cache: bool = True):
    """A study's grid: one job per cell through ``run_jobs``, one table row per cell (a
    ``pandas.DataFrame``, in the cells' order)."""
    import pandas as pd

    cells = list(cells)
    records = run_jobs([job(c) for c in cells], executor=executor, use_cache=use_cache)
    return pd.DataFrame([row(c, r) for c, r in zip(cells, records, strict=True)])


def _run_job(job: TrainJob, hashed: str, use_cache: bool, directory: Path | None,
             progress: bool | None) -> bool:
    """Train ``job`` into its cache entry (a cell's call, in whatever process runs it); False
    when a finished record was there already (a concurrent run trained it while this waited)."""
    after = list(job.after_step)
    if job.keep_weights:
        after.append(SaveWeights(str(_weights_path(hashed, directory))))
        use_cache = use_cache and _weights_ok(hashed, directory)
    rec = cached(job.key, lambda: train(job.model_fn, job.train_set, job.test_set, job.cfg,
                                        device=job.device, before_step=job.before_step,
                                        after_step=after, progress=progress, desc=job.desc,
                                        step_fn=job.step_fn),
                 enabled=use_cache, directory=directory, hashed=hashed)
    return not rec.from_cache


# ----------------------------------------------------------------- trained weights


@dataclass
class SaveWeights:
    """An ``after_step`` hook that keeps the trained weights: when the run ends (``record``)
    it writes the model's state_dict to ``path`` atomically, beside the cached record."""

    path: str
    _model: nn.Module | None = field(default=None, init=False, repr=False)

    def start(self, run: RunStart) -> None:
        self._model = run.model

    def __call__(self, state: StepState) -> None:
        pass

    def record(self) -> dict[str, Any]:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({k: v.detach().cpu() for k, v in self._model.state_dict().items()}, tmp)
        os.replace(tmp, path)
        return {"weights": path.name}


def _weights_path(hashed: str, directory: Path | None) -> Path:
    return _cache_path(hashed, directory).with_suffix(".pt")


def _weights_ok(hashed: str, directory: Path | None) -> bool:
    try:
        torch.load(_weights_path(hashed, directory), map_location="cpu", weights_only=True)
        return True
    except FileNotFoundError:
        return False
    except Exception as e:  # noqa: BLE001  (any unreadable file: retrain, say so)
        import warnings

        warnings.warn(f"unreadable cached weights {_weights_path(hashed, directory)} "
                      f"({type(e).__name__}: {e}); retraining", CorruptCacheEntry, stacklevel=2)
        return False


def trained_weights(record: TrainRecord, directory: Path | None = None) -> dict[str, Any]:
    """The state_dict a ``keep_weights`` job stored with ``record``."""
    name = record.extra.get("weights")
    if name is None:
        raise ValueError("this record was trained without keep_weights: no weights stored")
    path = (directory or cache_dir()) / name
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cached weights {path} unreadable ({type(e).__name__}: {e}); "
                                f"delete it to retrain") from e

"""Peak GPU memory of a training step, predicted before it runs (so a cell fits by design).

A step's peak is reached during its forward pass (the loop zeroes the gradients after the
forward, so the previous step's are still there):

    weights + gradients + optimizer state + data on the device
    + the tensors autograd saved for backward (the activations)
    + what the forward holds only for a while at its peak (transient) + a workspace allowance.

The activations are not guessed from a formula: they are *measured* on the meta device (shapes
only, nothing allocated) with ``torch.autograd.graph.saved_tensors_hooks``, deduplicated by
storage, parameters and buffers excluded; the transient from the storages the forward's ops
make and free (``_ForwardTracker``). Both are linear in the batch, exactly on meta,
S(b) = fixed + b · per-image, so two meta forwards (b = 1, 2) give both terms for any batch.
Where a step would not fit, ``microbatches`` gives the least number of gradient-accumulation
passes (``harness.timing.time_train_step(microbatches=k)``) that makes it fit, with the same
per-image work.

Not modelled: the evaluation's no-grad forwards (a few layer outputs of one eval batch alive at
a time, far below the training step's saved tensors at the batch sizes here), and the
backward's own transients beyond the forward's (of the same order; checked on the CPU).
"""

from __future__ import annotations

import copy
import dataclasses
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GIB = 2 ** 30
PLANNING_BUDGET_BYTES = 80 * 10 ** 9  # an 80 GB H100, when planning away from the GPU
# The workspace allowance: the CUDA context with cuBLAS and cuDNN loaded (~0.5-1 GiB on an
# H100), cuBLAS's workspaces and cuDNN's convolution workspace under cudnn.benchmark (it picks
# among algorithms whose workspace fits): 2 GiB in all. Plus the caching allocator's
# fragmentation, which hits the activation-sized blocks freed and re-made every step: 10% of
# the activations. Both are stated margins, not measurements.
WORKSPACE_FIXED_BYTES = 2 * GIB
ALLOCATOR_MARGIN_PERCENT = 10
OPTIMIZER_STATE = {"sgd": 1, "adamw": 2}  # fp32 copies of the parameters: momentum; m and v
HALF_WIDTH = {"bf16": torch.bfloat16, "fp16": torch.float16}

ModelLike = nn.Module | Callable[[], nn.Module]


# ------------------------------------------------------------------ saved tensors


def _prepared(model: ModelLike, dtype: torch.dtype = torch.float32, channels_last: bool = False,
              device: str = "meta") -> nn.Module:
    """A private ``model`` on ``device`` in train mode, ``dtype`` and layout: built there
    when it is a factory (on meta a huge net costs nothing), else a copy (``Module.to`` and
    ``train`` work in place: the caller's model is left as it is)."""
    if isinstance(model, nn.Module):
        m = copy.deepcopy(model).to(device)
    else:
        with torch.device(device):
            m = model()
    if dtype != torch.float32:
        m = m.to(dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m.train()


def _input(batch: int, channels: int, resolution: int, dtype: torch.dtype, channels_last: bool,
           device: str) -> torch.Tensor:
    x = torch.randn(batch, channels, resolution, resolution, device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def storage_key(t: torch.Tensor) -> int:
    """The identity of ``t``'s storage. Not ``data_ptr()``: every meta storage has data_ptr
    0, so that would merge all of them; the address of the StorageImpl is unique while the
    storage lives (views share it), on every device."""
    return t.untyped_storage()._cdata


@dataclass(frozen=True)
class ForwardBytes:
    """What one forward and loss leave for backward (``saved``) and the most bytes alive at
    once during it (``peak``: the saved ones, plus those alive only for a while, such as a
    residual's input or a product before its sum). Parameters and buffers in neither."""

    saved: int
    peak: int


class _ForwardTracker(TorchDispatchMode):
    """Follows the storages the forward's ops make: each counts from the op that makes it
    until it is freed (``weakref.finalize`` on its Python object, which torch keeps for as
    long as the storage lives), giving the live bytes' peak. An op's output that aliases an
    input (a view, an in-place op) makes nothing new.

    On meta, ``native_batch_norm`` is answered from shapes alone: torch's meta kernel for it
    is a Python decomposition that takes most of a meta forward's time (~6× slower in all).
    Same outputs: the normalised map like the input (layout kept), and the batch mean and
    inverse std per channel, fp32 for half inputs (as torch's kernels); checked against the
    decomposition in tests/test_memory.py."""

    def __init__(self, fast_meta: bool = True) -> None:
        super().__init__()
        self.fast_meta = fast_meta
        self.made: set[int] = set()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (self.fast_meta and func is torch.ops.aten.native_batch_norm.default
                and args[0].device.type == "meta"):
            x, training = args[0], args[5]
            stats = (x.shape[1],) if training else (0,)
            dtype = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
            out = (torch.empty_like(x), x.new_empty(stats, dtype=dtype),
                   x.new_empty(stats, dtype=dtype))
        else:
            out = func(*args, **kwargs)
        inputs = {storage_key(a) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and (key := storage_key(t)) not in inputs:
                self._made(t.untyped_storage(), key)
        return out

    def _made(self, storage: Any, key: int) -> None:
        if key in self.made:
            return
        self.made.add(key)
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, key, storage.nbytes()).atexit = False

    def _freed(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.made.discard(key)  # its address may be a new storage's from now on


def measure_forward(model: nn.Module, x: torch.Tensor, fast_meta: bool = True) -> ForwardBytes:
    """``ForwardBytes`` of ``model(x)`` and a cross-entropy loss, on whatever device they are
    on. Saved: the storages autograd saves for backward (``saved_tensors_hooks``), each once
    (a tensor saved twice, or views of one storage, count once), the model's parameters and
    buffers excluded (weights, not activations). ``fast_meta``: see ``_ForwardTracker``."""
    own = {storage_key(t) for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}
    alive: list[Any] = []  # keeps every counted storage alive, so no address is reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in own and key not in saved:
            storage = t.untyped_storage()
            saved[key] = storage.nbytes()
            alive.append(storage)
        return t

    y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    tracker = _ForwardTracker(fast_meta)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), tracker:
        # The logits in fp32, as autocast runs the loss (softmax and cross-entropy in fp32).
        loss = F.cross_entropy(model(x).float(), y)
    # Saved storages the forward did not make (its input) are alive throughout it.
    before = sum(n for key, n in saved.items() if key not in tracker.made)
    del loss
    alive.clear()
    return ForwardBytes(saved=sum(saved.values()), peak=tracker.peak + before)


def measure_saved_bytes(model: nn.Module, x: torch.Tensor, fast_meta: bool = True) -> int:
    """Bytes of the storages autograd saves for backward in ``model(x)`` and a cross-entropy
    loss (``measure_forward``)."""
    return measure_forward(model, x, fast_meta).saved


def saved_bytes(model: ModelLike, batch: int, resolution: int, channels: int = 3,
                dtype: torch.dtype = torch.float32, channels_last: bool = False,
                device: str = "meta") -> int:
    """S(batch): bytes autograd saves for backward in one train-mode forward and loss of
    ``model`` at ``batch`` images of ``resolution``², measured on ``device`` (meta: shapes
    only). ``dtype`` casts the model and the input (how a half-precision forward is
    measured)."""
    m = _prepared(model, dtype, channels_last, device)
    return measure_saved_bytes(m, _input(batch, channels, resolution, dtype, channels_last, device))


@dataclass(frozen=True)
class SavedBytes:
    """Bytes(b) = fixed + b · per_image: a forward's bytes as a law in the batch (exact on
    meta: every storage's size is a product of its shape, linear in b)."""

    per_image: int
    fixed: int  # whatever the batch: BN statistics, weight casts

    def at(self, batch: int) -> int:
        return self.fixed + batch * self.per_image


@dataclass(frozen=True)
class ForwardLaw:
    """The saved bytes' law and the forward's live peak's law (``ForwardBytes``)."""

    saved: SavedBytes
    peak: SavedBytes

    @property
    def transient(self) -> SavedBytes:
        """What the peak adds to the saved bytes (never negative: the saved ones are alive at
        the forward's end)."""
        return SavedBytes(max(0, self.peak.per_image - self.saved.per_image),
                          max(0, self.peak.fixed - self.saved.fixed))


def forward_law(model: ModelLike, resolution: int, channels: int = 3,
                dtype: torch.dtype = torch.float32, channels_last: bool = False,
                device: str = "meta") -> ForwardLaw:
    """Both laws from forwards at b = 1 and 2, measured on ``device``: meta for any net
    (nothing allocated, any batch and resolution); "cpu" runs real forwards and gives the
    same bytes (tests/test_memory.py)."""
    return _law(_prepared(model, dtype, channels_last, device), resolution, channels, dtype,
                channels_last, device)


def _law(m: nn.Module, resolution: int, channels: int, dtype: torch.dtype, channels_last: bool,
         device: str) -> ForwardLaw:
    f1, f2 = (measure_forward(m, _input(b, channels, resolution, dtype, channels_last, device))
              for b in (1, 2))
    return ForwardLaw(SavedBytes(f2.saved - f1.saved, 2 * f1.saved - f2.saved),
                      SavedBytes(f2.peak - f1.peak, 2 * f1.peak - f2.peak))


def saved_law(model: ModelLike, resolution: int, channels: int = 3,
              dtype: torch.dtype = torch.float32, channels_last: bool = False,
              device: str = "meta") -> SavedBytes:
    """Per-image and fixed saved bytes from S(1) and S(2) (``forward_law``)."""
    return forward_law(model, resolution, channels, dtype, channels_last, device).saved


def per_image_saved_bytes(model: ModelLike, resolution: int, channels: int = 3,
                          dtype: torch.dtype = torch.float32, channels_last: bool = False,
                          device: str = "meta") -> int:
    """S(2) − S(1): the saved bytes each image adds (batch-independent ones drop out)."""
    return saved_law(model, resolution, channels, dtype, channels_last, device).per_image


# ------------------------------------------------------------------ the step's peak


@dataclass(frozen=True)
class MemoryEstimate:
    """A training step's predicted peak, in bytes, by part. ``activations`` (saved for
    backward) and ``transient`` (alive only during the forward, at its peak) are those of
    one (micro-)batch of ``batch // microbatches`` images."""

    activations: int
    transient: int
    weights: int
    grads: int
    optimizer_state: int
    data: int  # the training set kept on the device, one eval batch, the step's input batch
    workspace: int  # WORKSPACE_FIXED_BYTES + ALLOCATOR_MARGIN_PERCENT of the activations
    batch: int = 1
    microbatches: int = 1
    per_image: int = 0  # saved bytes per image
    saved_fixed: int = 0  # saved bytes whatever the batch
    transient_per_image: int = 0
    transient_fixed: int = 0
    input_per_image: int = 0  # the step's input batch, per image (in ``data``)

    @property
    def total(self) -> int:
        return (self.activations + self.transient + self.weights + self.grads
                + self.optimizer_state + self.data + self.workspace)

    @property
    def per_image_bytes(self) -> int:
        """What one more image in a (micro-)batch adds to the peak (margin included)."""
        return self.per_image + _margin(self.per_image) + self.transient_per_image

    @property
    def fixed_bytes(self) -> int:
        """The peak with no image in the (micro-)batch: everything batch-independent."""
        return (self.weights + self.grads + self.optimizer_state + self.data
                + WORKSPACE_FIXED_BYTES + self.saved_fixed + _margin(self.saved_fixed)
                + self.transient_fixed)

    def fits(self, budget: int) -> bool:
        return self.total <= budget

    def with_microbatches(self, k: int) -> MemoryEstimate:
        """The same step in ``k`` gradient-accumulation passes of ``batch // k`` images."""
        if k < 1 or self.batch % k:
            raise ValueError(f"{k} micro-batches do not divide the batch of {self.batch}")
        m = self.batch // k
        # The margin per part, so that total = fixed_bytes + per_image_bytes × m exactly.
        return dataclasses.replace(
            self, activations=self.saved_fixed + self.per_image * m,
            transient=self.transient_fixed + self.transient_per_image * m,
            workspace=WORKSPACE_FIXED_BYTES + _margin(self.saved_fixed) + _margin(self.per_image) * m,
            microbatches=k)

    def at_batch(self, batch: int) -> MemoryEstimate:
        """The same step at ``batch`` images, in one pass (the input batch's bytes follow)."""
        data = self.data + (batch - self.batch) * self.input_per_image
        return dataclasses.replace(self, batch=batch, data=data).with_microbatches(1)

    def planned(self, budget: int) -> MemoryEstimate:
        """This step with the fewest micro-batches that fit ``budget`` (see ``microbatches``)."""
        return self.with_microbatches(microbatches(self.per_image_bytes, self.fixed_bytes,
                                                   self.batch, budget))

    def describe(self) -> str:
        g = GIB
        split = (f" in {self.microbatches} micro-batches of {self.batch // self.microbatches}"
                 if self.microbatches > 1 else "")
        return (f"peak {self.total / g:.2f} GiB at batch {self.batch}{split}: activations "
                f"{self.activations / g:.2f} ({self.per_image / 2 ** 20:.1f} MiB/image) + "
                f"{self.transient / g:.2f} transient, weights {self.weights / g:.2f}, grads "
                f"{self.grads / g:.2f}, optimizer {self.optimizer_state / g:.2f}, data "
                f"{self.data / g:.2f}, workspace {self.workspace / g:.2f}")


def _margin(nbytes: int) -> int:
    """The allocator's margin on ``nbytes`` of activations, rounded up (integer arithmetic:
    the planned sums are exact)."""
    return -(-nbytes * ALLOCATOR_MARGIN_PERCENT // 100)


def _param_bytes(model: nn.Module) -> tuple[int, int]:
    """(fp32 bytes of the trainable parameters, bytes of the rest: frozen ones and buffers)."""
    train = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    rest = sum(p.numel() * 4 for p in model.parameters() if not p.requires_grad)
    rest += sum(b.numel() * b.element_size() for b in model.buffers())
    return train, rest


def train_step_peak(model: ModelLike, batch: int, resolution: int, *, amp: str | None = None,
                    optimizer: str = "sgd", channels_last: bool = False, train_images: int = 0,
                    forward_passes: int = 1, channels: int = 3, data_bytes: int | None = None,
                    microbatches: int = 1, measure_on: str = "meta") -> MemoryEstimate:
    """The predicted peak of one training step of ``model`` at ``batch`` images.

    The loop zeroes the gradients after the forward, so at the forward's end the previous
    step's gradients, the saved tensors and the forward's transients are all alive; the
    backward frees saved tensors as it makes gradients, and its own transients (gradients of
    activations) are of the forward's order: the step's peak is taken as the forward's
    (checked against a CPU step's allocations in tests/test_memory.py).

    - activations and transient: ``forward_law`` on ``measure_on`` (meta by default). Under
      ``amp`` ("bf16" | "fp16") the saved tensors are mostly half width but not all (autocast
      keeps the loss and BN statistics in fp32), so the forward is *measured* with the model
      and input cast to the half type rather than scaled by a guessed ½. Autocast's
      half-width weight copies, saved for backward, are added (all parameters at 2 bytes: an
      upper bound, they are made for conv/linear weights). Not caught: autocast runs
      layer_norm and softmax in fp32, so an attention net's saved bytes are a few percent
      more than the cast forward's (-7% for hybrid_supernet_cifar against CPU autocast).
    - weights and gradients in fp32 (autocast keeps the master weights fp32), optimizer
      state per ``OPTIMIZER_STATE`` (SGD momentum 1×, AdamW 2×).
    - ``forward_passes`` > 1: a step of several subnets (``harness.supernet.sandwich``). Each
      subnet's backward runs before the next one's forward, which frees its saved tensors,
      so the activations peak at one pass's (the largest subnet: the model itself), not their
      sum; the step holds the largest's gradient out of ``.grad`` meanwhile: one more copy.
    - data: ``data_bytes`` if given, else ``train_images`` fp32 images with int64 labels (the
      loop keeps the whole training set on the device); plus the step's input batch (fp32,
      twice with channels_last: the loop's NHWC copy beside the gathered batch).
    - workspace: ``WORKSPACE_FIXED_BYTES`` + ``ALLOCATOR_MARGIN_PERCENT`` of the activations.
    """
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"optimizer {optimizer!r}: expected one of {sorted(OPTIMIZER_STATE)}")
    if amp is not None and amp not in HALF_WIDTH:
        raise ValueError(f"amp={amp!r}: expected one of {sorted(HALF_WIDTH)} or None")
    dtype = HALF_WIDTH[amp] if amp is not None else torch.float32
    m = _prepared(model, dtype, channels_last, measure_on)  # built once: counted and measured
    law = _law(m, resolution, channels, dtype, channels_last, measure_on)
    params, rest = _param_bytes(m)
    weight_casts = params // 2 if amp is not None else 0
    image = channels * resolution * resolution * 4
    if data_bytes is None:
        data_bytes = train_images * (image + 8)
    input_per_image = image * (2 if channels_last else 1) + 8
    full = MemoryEstimate(
        activations=0, transient=0, weights=params + rest,
        grads=params * (2 if forward_passes > 1 else 1),
        optimizer_state=params * OPTIMIZER_STATE[optimizer],
        data=data_bytes + batch * input_per_image, workspace=0, batch=batch,
        per_image=law.saved.per_image, saved_fixed=law.saved.fixed + weight_casts,
        transient_per_image=law.transient.per_image, transient_fixed=law.transient.fixed,
        input_per_image=input_per_image)
    return full.with_microbatches(microbatches)


def job_peak(job: Any) -> MemoryEstimate:
    """The predicted peak of a ``harness.runs.jobs.TrainJob``'s step, on the GPU it is planned
    for (its recipe's ``amp`` applies, whatever ``job.device``): its model (built on meta, as
    ``harness.costs.job_work`` counts it), its recipe's batch, optimizer and layout, its
    training set on the device and one eval batch, and its step function's passes
    (``forward_passes``)."""
    images, labels = job.train_set
    _, channels, resolution, _ = images.shape
    cfg = job.cfg
    test_x, test_y = job.test_set
    eval_n = min(cfg.eval_batch_size, len(test_x))
    # Logical sizes (numel), not storages: a placeholder set is one image expanded.
    data = (images.numel() * images.element_size() + labels.numel() * labels.element_size()
            + eval_n * (test_x[0].numel() * test_x.element_size() + test_y.element_size()))
    return train_step_peak(job.model_fn, cfg.batch_size, resolution, amp=cfg.amp,
                           optimizer=cfg.optimizer, channels_last=cfg.channels_last,
                           forward_passes=getattr(job.step_fn, "forward_passes", 1),
                           channels=channels, data_bytes=data)


# ------------------------------------------------------------------ fitting the device


def device_budget(device: str | torch.device) -> int:
    """Bytes a step may use on ``device``: the GPU's total memory on CUDA, else the planning
    budget (an 80 GB H100: what the full profile is planned for)."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[1])
    return PLANNING_BUDGET_BYTES


def microbatches(per_image_bytes: int, fixed_bytes: int, batch: int, budget: int) -> int:
    """The least k dividing ``batch`` with fixed + per-image × batch/k ≤ ``budget``: the
    fewest gradient-accumulation passes (fewer, larger micro-batches keep the device busy).
    Raises ValueError when even micro-batches of one image do not fit."""
    if batch < 1:
        raise ValueError(f"batch {batch}: must be >= 1")
    for k in range(1, batch + 1):
        if batch % k == 0 and fixed_bytes + per_image_bytes * (batch // k) <= budget:
            return k
    raise ValueError(
        f"does not fit even one image at a time: {fixed_bytes / GIB:.2f} GiB fixed + "
        f"{per_image_bytes / GIB:.2f} GiB per image > budget {budget / GIB:.2f} GiB")

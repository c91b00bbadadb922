"""The sandwich rule with gradient-conflict measurement and projection (NASViT, ICLR 2022).

Usable on its own supernet: ``Sandwich(SandwichConfig(project=True))`` is a ``step_fn`` of
``harness.train`` (the loop calls its ``start`` before the first forward and stores its
``record()`` with the run). claims/README.md section 5; the official code is
facebookresearch/NASViT (its sandwich step, read for reference).

Each step:

1. the largest subnet (the supernet) runs forward and backward on the labels (cross-entropy
   with the recipe's label smoothing); its gradient g₁ is taken out of ``.grad``;
2. the smallest and ``n_random`` random subnets (seeded) run forward and backward on the
   largest's *detached* soft predictions (in-place distillation), accumulating g₂ in ``.grad``;
3. per parameter tensor, every ``log_every`` steps, cos(g₁, g₂) is measured (and overall),
   with both norms: conflict shares leave out tensors whose two gradients are both below
   ``GRAD_NORM_FLOOR`` (zero in exact arithmetic, e.g. attention key biases: their cosine is
   float noise);
4. with ``project``: if ⟨g₁, g₂⟩ < 0 then g₁ ← g₁ − (⟨g₁, g₂⟩/‖g₂‖²)·g₂ (``project_conflict_``),
   so the subnets' gradient wins; the update is g₁ + g₂, written into ``.grad``.

Where this differs from the official code, and why: there the supernet learns from two
pretrained ResNeXt teachers' soft labels; here from the labels (no pretrained teacher exists at
smoke scale). Its released default (``proj_student=True``) adds g₁ + g₂ without projecting; the
projecting branch clamps the coefficient −⟨g₁, g₂⟩/‖g₂‖² to [0, 2]. This is the rule as the
paper and claims/README.md state it, unclamped. With the labels as the supernet's only signal,
in-place distillation can hold a projected supernet at chance: early on the subnets' gradient
pulls every output toward the (uniform) teacher and the projection lets it win; seen at AdamW
lr 0.01 on the smoke task (loss stuck at ln 10), not at 0.003 nor without distillation.

Memory: one extra gradient copy (g₁, moved out of ``.grad`` rather than copied). With an
fp16 GradScaler both gradients carry the same scale: cosines and the projection are
scale-free, and the loop unscales the sum once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from harness.models.supernet import Supernet, largest, sample
from harness.train import RunStart, StepContext

ProjectionRule = Callable[[Tensor, Tensor], Tensor]

# A tensor whose two gradients are both below this fraction of their step's whole gradient
# norm (‖g₁,t‖ < F·‖g₁‖ and ‖g₂,t‖ < F·‖g₂‖) is left out of conflict shares: its cosine is
# float32 rounding, not a conflict. The case: an attention key bias, whose gradient is zero in
# exact arithmetic (softmax ignores the shift q·b it adds to a row of scores). Relative, not
# absolute, so it is scale-free like the cosine (an fp16 GradScaler multiplies both gradients
# before they are measured; the lr and loss scale do not matter). How chosen: in sandwich steps
# 0-10 of hybrid_supernet_tiny (8 and 16 px) and hybrid_supernet_cifar (32 px) the key biases'
# norms were 1e-13-1e-12 of the step's norm (rounding, ~1e-7 of the q/k weight gradients),
# the smallest genuine tensors' (query biases near init) 7e-7-1e-5 for the larger of the two.
# 1e-8 sits 4 orders above the noise and ~70x below the smallest genuine gradient; a genuine
# tensor under it would carry < 1e-8 of either update, so leaving it out changes no conclusion.
GRAD_NORM_FLOOR = 1e-8


def project_conflict_(g1: Tensor, g2: Tensor) -> Tensor:
    """NASViT's projection, in place on ``g1``: if ⟨g₁, g₂⟩ < 0, remove from g₁ its component
    along g₂ (g₁ ← g₁ − ⟨g₁, g₂⟩/‖g₂‖² · g₂); otherwise leave g₁ exactly as it is. ``g2`` is
    not changed. Returns whether it projected (a 0-dim bool tensor: no GPU sync)."""
    a, b = g1.flatten(), g2.flatten()
    dot, norm2 = torch.dot(a, b), torch.dot(b, b)
    conflict = dot < 0
    # ‖g₂‖² under- or overflows in float32 for tiny or huge g₂ (1e-27 squared is 0): then the
    # coefficient comes from float64, chosen without a host sync; in range, the float32 one.
    # Out of range, the whole step coef·g₂ is taken in float64 and rounded once: the
    # coefficient alone can overflow float32 (g₂ = [0, 1.2e-38] against g₁ = [0, -4] needs
    # -3.4e38), though coef·g₂ is an ordinary number.
    # A coefficient that is itself subnormal (g₁ = [1.2e-38, 0] against g₂ = [-814, -814]
    # gives -2.4e-42) keeps only a few bits in float32: float64 too.
    tiny = torch.finfo(norm2.dtype).tiny
    zero = torch.zeros_like(dot)
    # No conflict (or g₂ = 0, whence ⟨g₁, g₂⟩ = 0): coefficient 0, g₁ − 0·g₂ is g₁ bit for bit.
    coef = torch.where(conflict, dot / norm2, zero)
    in_range = (torch.isfinite(norm2) & (norm2 >= tiny) & torch.isfinite(dot)
                & ((coef.abs() >= tiny) | ~conflict))
    a64, b64 = a.double(), b.double()
    wide = torch.where(conflict, torch.dot(a64, b64) / torch.dot(b64, b64), zero.double())
    step = torch.where(in_range, coef * g2, (wide * g2.double()).to(g2.dtype))
    g1.sub_(step)
    return conflict


def combined_update(g1: Tensor, g2: Tensor, rule: ProjectionRule = project_conflict_,
                    project: bool = True) -> Tensor:
    """g₁ (projected when ``project``) + g₂, on copies: the law-checking form of the step."""
    a = g1.clone()
    if project:
        rule(a, g2)
    return a + g2


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Cross-entropy against soft targets (the teacher's probabilities), batch mean."""
    return -(target_probs * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


@dataclass(frozen=True)
class SandwichConfig:
    n_random: int = 2  # random subnets per step, besides the largest and the smallest
    project: bool = False  # NASViT's conflict-aware projection; False: naive sandwich
    distill: bool = True  # in-place distillation of the smaller subnets
    log_every: int = 5  # steps between cosine measurements (and the first step)

    def __post_init__(self) -> None:
        if self.n_random < 0:
            raise ValueError(f"n_random={self.n_random}: must be >= 0")
        if isinstance(self.log_every, bool) or self.log_every < 1:
            raise ValueError(f"log_every={self.log_every!r}: must be a positive step count")


@dataclass
class Sandwich:
    """The sandwich step as a ``step_fn`` of ``harness.train``. Picklable before ``start``.

    ``record()`` gives ``{"conflict": {...}}``: the logged steps, the overall cosine per
    logged step, each tensor's cosine per logged step (None where g₁ or g₂ is zero), the
    tensor names, per logged step (‖g₁‖, ‖g₂‖) over all tensors and each tensor's (‖g₁,t‖,
    ‖g₂,t‖) (None where its cosine is), which ``summarize_conflicts`` compares with
    ``GRAD_NORM_FLOOR``."""

    cfg: SandwichConfig
    rule: ProjectionRule = project_conflict_
    names: list[str] = field(default_factory=list, init=False)
    steps: list[int] = field(default_factory=list, init=False)
    cos: list[float] = field(default_factory=list, init=False)
    tensor_cos: list[list[float | None]] = field(default_factory=list, init=False)
    norms: list[list[float]] = field(default_factory=list, init=False)  # [‖g₁‖, ‖g₂‖]
    tensor_norms: list[list[list[float] | None]] = field(default_factory=list, init=False)
    _params: list[nn.Parameter] = field(default_factory=list, init=False, repr=False)
    _gen: torch.Generator | None = field(default=None, init=False, repr=False)

    @property
    def forward_passes(self) -> int:
        """Forward/backward passes a step runs (the largest, the smallest and the random
        subnets; harness.costs counts each as the full net's, an upper bound)."""
        return 2 + self.cfg.n_random

    def start(self, run: RunStart) -> None:
        if not isinstance(run.model, Supernet):
            raise TypeError(f"the sandwich rule trains a Supernet, not a "
                            f"{type(run.model).__name__}")
        named = [(n, p) for n, p in run.model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        # Its own stream: the subnets drawn do not depend on the loop's shuffling.
        self._gen = torch.Generator().manual_seed(10_007 * run.seed + 1)

    def __call__(self, model: Supernet, batch: tuple[Tensor, Tensor], ctx: StepContext) -> Tensor:
        x, y = batch
        space = model.cfg
        model.set_arch(largest(space))
        with ctx.autocast():
            logits = ctx.forward(x)
            loss = F.cross_entropy(logits, y, label_smoothing=ctx.cfg.label_smoothing)
        ctx.backward(loss)
        teacher = logits.detach().float().softmax(1)
        g1 = [p.grad for p in self._params]  # moved out, not copied: the one extra copy
        for p in self._params:
            p.grad = None
        others = [sample(space, "smallest")] + [sample(space, "random", self._gen)
                                                for _ in range(self.cfg.n_random)]
        for arch in others:
            model.set_arch(arch)
            with ctx.autocast():
                out = ctx.forward(x)
                sub_loss = (soft_cross_entropy(out, teacher) if self.cfg.distill else
                            F.cross_entropy(out, y, label_smoothing=ctx.cfg.label_smoothing))
            ctx.backward(sub_loss)
        model.set_arch(largest(space))
        log = ctx.step % self.cfg.log_every == 0
        if log:
            self._measure(ctx.step, g1)
        for p, a in zip(self._params, g1, strict=True):
            if a is None:
                continue  # only the subnets reached it: the update is g₂
            if p.grad is None:
                p.grad = a  # only the supernet reached it: the update is g₁
                continue
            if self.cfg.project:
                self.rule(a, p.grad)
            p.grad.add_(a)
        return loss.detach()

    @torch.no_grad()
    def _measure(self, step: int, g1: list[Tensor | None]) -> None:
        dots, n1, n2, per, norms = 0.0, 0.0, 0.0, [], []
        for p, a in zip(self._params, g1, strict=True):
            b = p.grad
            if a is None or b is None:
                per.append(None)
                norms.append(None)
                continue
            a64, b64 = a.double().flatten(), b.double().flatten()
            d, s1, s2 = (float(v) for v in (a64 @ b64, a64 @ a64, b64 @ b64))
            dots, n1, n2 = dots + d, n1 + s1, n2 + s2
            ok = s1 > 0 and s2 > 0
            per.append(d / math.sqrt(s1 * s2) if ok else None)
            norms.append([math.sqrt(s1), math.sqrt(s2)] if ok else None)
        self.steps.append(step)
        self.cos.append(dots / math.sqrt(n1 * n2) if n1 > 0 and n2 > 0 else math.nan)
        self.tensor_cos.append(per)
        self.norms.append([math.sqrt(n1), math.sqrt(n2)])
        self.tensor_norms.append(norms)

    def record(self) -> dict[str, Any]:
        return {"conflict": {"names": self.names, "steps": self.steps, "cos": self.cos,
                             "tensor_cos": self.tensor_cos, "norms": self.norms,
                             "tensor_norms": self.tensor_norms, "project": self.cfg.project}}


# ----------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class ConflictSummary:
    """A run's conflicts: the share of (logged step, tensor) pairs with cos(g₁, g₂) < 0 among
    those where both gradients are non-zero and not both below the norm floor; the share of
    logged steps whose overall cosine is negative; and the mean overall cosine. ``pairs``
    counted, ``below_floor`` left out by the floor."""

    tensor_share: float
    step_share: float
    mean_cos: float
    pairs: int
    below_floor: int = 0


def below_floor(norms: Sequence[float], totals: Sequence[float], floor: float) -> bool:
    """Whether both of a tensor's gradient norms are below ``floor`` times their step's."""
    return all(n < floor * t for n, t in zip(norms, totals, strict=True))


def counted_cosines(conflict: dict[str, Any], floor: float = GRAD_NORM_FLOOR
                    ) -> list[list[float | None]]:
    """``tensor_cos`` with None also where both gradients are below ``floor`` (relative to
    their step's norms, see ``GRAD_NORM_FLOOR``): the cosines conflict shares count."""
    if "tensor_norms" not in conflict:  # counting them all would bring the noise back
        raise ValueError("conflict record without gradient norms (written before the norm "
                         "floor): retrain it to summarise its conflicts")
    return [[c if c is not None and not below_floor(n, totals, floor) else None
             for c, n in zip(cos, norms, strict=True)]
            for cos, norms, totals in zip(conflict["tensor_cos"], conflict["tensor_norms"],
                                          conflict["norms"], strict=True)]


def summarize_conflicts(conflict: dict[str, Any], floor: float = GRAD_NORM_FLOOR
                        ) -> ConflictSummary:
    values = [c for row in counted_cosines(conflict, floor) for c in row if c is not None]
    left_out = sum(c is not None for row in conflict["tensor_cos"] for c in row) - len(values)
    overall = [c for c in conflict["cos"] if c is not None and math.isfinite(c)]
    if not values or not overall:
        return ConflictSummary(math.nan, math.nan, math.nan, 0, left_out)
    return ConflictSummary(sum(c < 0 for c in values) / len(values),
                           sum(c < 0 for c in overall) / len(overall),
                           sum(overall) / len(overall), len(values), left_out)


# ------------------------------------------------------------------ evaluating subnets


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: Tensor, batch_size: int, batches: int) -> None:
    """Reset every BN's running statistics and re-estimate them (cumulative average) on the
    first ``batches`` batches of ``images`` in train mode: a subnet's own statistics (the
    supernet's running ones mix every subnet that ran). Leaves the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(batches):
        chunk = images[i * batch_size:(i + 1) * batch_size]
        if len(chunk) == 0:
            break
        model(chunk)
    model.eval()

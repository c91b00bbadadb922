"""Dynamic sparse training (SET, RigL) with In-Time Over-Parameterization bookkeeping.

Usable on its own model: ``DynamicSparse(SparseConfig(0.9, growth="gradient"))`` is an
``after_step`` hook of ``harness.train`` (the loop calls its ``start`` before the first
forward and stores its ``record()`` with the run). Liu et al., "Do We Actually Need Dense
Over-Parameterization? In-Time Over-Parameterization in Sparse Training", ICML 2021; the
official code is Shiweiliu/In-Time-Over-Parameterization (claims/README.md section 3).

- Masks cover the weights of conv and linear layers; biases and norms stay dense. The first
  conv and the classifier follow ``ends``: kept dense (the default, as is usual) or masked
  like the rest.
- Sparsity over layers: ERK (Erdős–Rényi-kernel, with the cap that makes over-full layers
  dense and re-solves for the rest) or uniform.
- Every ``update_interval`` steps until ``stop_fraction`` of training: prune the fraction
  p_t of each layer's active weights with the smallest magnitude, p_t = p0·(1 + cos(π t /
  t_stop))/2, and regrow as many among the inactive ones: at random (SET) or where the dense
  gradient of that step is largest (RigL; read at update steps only). Regrown weights start at
  zero with zero optimizer state (``shaped_state``: SGD's momentum, AdamW's two moments, any
  per-weight tensor). After every optimizer step weights and that state are masked.
- Per-layer active counts are fixed integers: density is exact after every update.
- ITOP rate R_s = weights ever active / weights of the sparse layers, from an "ever active"
  mask OR-ed at the start and after each update; "reliably explored": weights grown at one
  update that survive the next one's pruning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

DISTRIBUTIONS = ("erk", "uniform")
GROWTH = ("random", "gradient")  # SET, RigL
ENDS = ("dense", "sparse")  # the first conv and the classifier


@dataclass(frozen=True)
class SparseConfig:
    sparsity: float  # fraction of the sparse layers' weights that are zero, in [0, 1)
    distribution: str = "erk"
    growth: str = "random"  # "random" (SET) or "gradient" (RigL)
    update_interval: int = 100  # ΔT, optimizer steps between mask updates
    prune_fraction: float = 0.5  # p0, decayed by cosine to 0 at the stop step
    stop_fraction: float = 0.75  # no updates after this fraction of training (RigL's 3/4)
    static: bool = False  # a fixed random mask: no updates
    ends: str = "dense"

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity={self.sparsity!r}: must be in [0, 1)")
        if isinstance(self.update_interval, bool) or int(self.update_interval) != \
                self.update_interval or self.update_interval <= 0:
            raise ValueError(f"update_interval={self.update_interval!r}: must be a positive "
                             f"number of steps")
        if not 0 < self.prune_fraction <= 1:
            raise ValueError(f"prune_fraction={self.prune_fraction!r}: must be in (0, 1]")
        if not 0 < self.stop_fraction <= 1:
            raise ValueError(f"stop_fraction={self.stop_fraction!r}: must be in (0, 1]")
        for name, value, known in (("distribution", self.distribution, DISTRIBUTIONS),
                                   ("growth", self.growth, GROWTH), ("ends", self.ends, ENDS)):
            if value not in known:
                raise ValueError(f"{name}={value!r}: unknown; choose one of {', '.join(known)}")

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity


# ------------------------------------------------------------------ which weights, how dense


def maskable(model: nn.Module, ends: str = "dense") -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of the conv and linear layers to mask, in module order. ``ends="dense"``
    leaves the first conv and the last linear (the classifier) out."""
    layers = [(f"{name}.weight" if name else "weight", m.weight) for name, m in
              model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if ends == "dense" and layers:
        first_conv = next((i for i, (n, p) in enumerate(layers) if p.dim() == 4), None)
        last_linear = max((i for i, (n, p) in enumerate(layers) if p.dim() == 2), default=None)
        layers = [x for i, x in enumerate(layers) if i not in (first_conv, last_linear)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no maskable layer (conv or linear weights"
                         f"{' besides the first conv and the classifier' if ends == 'dense' else ''})")
    return layers


def erk_scores(shapes: Sequence[Sequence[int]]) -> list[float]:
    """ERK's raw density per layer: sum of the dimensions over their product (for a conv:
    (c_out + c_in + k_h + k_w) / (c_out · c_in · k_h · k_w))."""
    return [sum(s) / math.prod(s) for s in shapes]


def erk_densities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """Per-layer densities ε·score, with ε solved so the layers hold ``density`` of their
    weights in all. A layer whose density would exceed 1 is made dense, and ε is solved again
    for the rest, until none does."""
    sizes = [math.prod(s) for s in shapes]
    scores = erk_scores(shapes)
    dense: set[int] = set()
    while True:
        rest = [i for i in range(len(shapes)) if i not in dense]
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        weight = sum(scores[i] * sizes[i] for i in rest)
        eps = budget / weight if weight > 0 else 0.0
        over = [i for i in rest if eps * scores[i] > 1]
        if not over:
            return [1.0 if i in dense else eps * scores[i] for i in range(len(shapes))]
        dense.update(over)


def layer_densities(shapes: Sequence[Sequence[int]], cfg: SparseConfig) -> list[float]:
    if cfg.distribution == "uniform":
        return [cfg.density] * len(shapes)
    return erk_densities(shapes, cfg.density)


def active_counts(shapes: Sequence[Sequence[int]], densities: Sequence[float]) -> list[int]:
    """Active weights per layer: the density rounded to whole weights, at least one."""
    return [max(1, min(math.prod(s), round(d * math.prod(s)))) for s, d in zip(shapes, densities,
                                                                              strict=True)]


def prune_fraction(step: int, cfg: SparseConfig, stop_step: int) -> float:
    """p_t = p0·(1 + cos(π t / t_stop)) / 2: p0 at the start, 0 at the stop step."""
    return cfg.prune_fraction * (1 + math.cos(math.pi * min(step, stop_step) / stop_step)) / 2


def shaped_state(optimizer: torch.optim.Optimizer | None, p: Tensor) -> list[Tensor]:
    """The per-weight optimizer state of ``p``: every tensor in ``optimizer.state[p]`` shaped
    like ``p``, whatever its name (SGD's ``momentum_buffer``; AdamW's ``exp_avg`` and
    ``exp_avg_sq``; ``max_exp_avg_sq``, RMSprop's ``square_avg``...). Empty before the first
    step (the state is created lazily) and without an optimizer.

    Scalar state is left out on purpose: Adam's ``step`` is one count per tensor, shared by
    all its weights for the bias correction, so it cannot be reset for some weights without
    resetting it for the surviving ones too. A regrown weight thus restarts from zero moments
    under its tensor's step count (no fresh bias correction of its own)."""
    if optimizer is None:
        return []
    return [v for v in optimizer.state.get(p, {}).values()
            if isinstance(v, Tensor) and v.shape == p.shape]


# ------------------------------------------------------------------------------ the hook


@dataclass
class DynamicSparse:
    """SET/RigL dynamic sparse training (or a static mask) as an ``after_step`` hook.

    Picklable before ``start``: a job carries it to another process, where ``start`` binds
    it to that run's model and optimizer and draws the initial mask from the run's seed."""

    cfg: SparseConfig
    names: list[str] = field(default_factory=list, init=False)
    curve: list[tuple[int, float]] = field(default_factory=list, init=False)  # (step, R_s)
    _params: list[nn.Parameter] = field(default_factory=list, init=False, repr=False)
    _counts: list[int] = field(default_factory=list, init=False, repr=False)
    masks: list[Tensor] = field(default_factory=list, init=False, repr=False)
    ever: list[Tensor] = field(default_factory=list, init=False, repr=False)
    _grown: list[Tensor] = field(default_factory=list, init=False, repr=False)
    _reliable: list[Tensor] = field(default_factory=list, init=False, repr=False)
    _optimizer: torch.optim.Optimizer | None = field(default=None, init=False, repr=False)
    _gen: torch.Generator | None = field(default=None, init=False, repr=False)
    _stop: int = field(default=0, init=False, repr=False)
    updates: int = field(default=0, init=False)

    # ---------------------------------------------------------------- binding and the start

    def start(self, run) -> None:
        """Bind to the run (``train.RunStart``), draw the initial masks, zero what they drop."""
        if self._params:
            raise ValueError("DynamicSparse is bound to another run")
        layers = maskable(run.model, self.cfg.ends)
        self.names = [n for n, _ in layers]
        self._params = [p for _, p in layers]
        shapes = [tuple(p.shape) for p in self._params]
        self._counts = active_counts(shapes, self.densities_for(shapes))
        self._optimizer = run.optimizer
        self._stop = max(1, round(self.cfg.stop_fraction * run.total_steps))
        self._gen = torch.Generator().manual_seed(1_000_003 * run.seed + 17)
        self.masks = [self._random_mask(p, k) for p, k in zip(self._params, self._counts,
                                                               strict=True)]
        self.ever = [m.clone() for m in self.masks]
        self._grown = [torch.zeros_like(m) for m in self.masks]
        self._reliable = [torch.zeros_like(m) for m in self.masks]
        self.apply_masks()
        self.curve = [(0, self.rate())]

    def densities_for(self, shapes: Sequence[Sequence[int]]) -> list[float]:
        return layer_densities(shapes, self.cfg)

    def _random_mask(self, p: Tensor, k: int) -> Tensor:
        order = torch.randperm(p.numel(), generator=self._gen)[:k]
        mask = torch.zeros(p.numel(), dtype=torch.bool)
        mask[order] = True
        return mask.view_as(p).to(p.device)

    # ------------------------------------------------------------------------ every step

    def __call__(self, state) -> None:
        step = state.step + 1  # optimizer steps taken so far
        if not self.cfg.static and step % self.cfg.update_interval == 0 and step < self._stop:
            self.update(step)
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the masked weights and all their optimizer state (after every optimizer step,
        so also right after an update: this is what clears the pruned weights' state). The
        optimizer step fills the inactive entries from the dense gradient; left there, they
        would be a regrown weight's head start."""
        for p, m in zip(self._params, self.masks, strict=True):
            p.mul_(m)
            off = ~m
            for s in shaped_state(self._optimizer, p):
                s.masked_fill_(off, 0)

    def _momentum(self, p: Tensor) -> Tensor | None:
        """SGD's momentum of ``p`` alone (kept for callers that read it; the masks reset every
        ``shaped_state``)."""
        state = self._optimizer.state.get(p, {}) if self._optimizer is not None else {}
        return state.get("momentum_buffer")

    # ------------------------------------------------------------------------- an update

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Prune p_t of each layer's active weights by magnitude, regrow as many elsewhere."""
        frac = prune_fraction(step, self.cfg, self._stop)
        for i, (p, k) in enumerate(zip(self._params, self._counts, strict=True)):
            n = min(round(frac * k), p.numel() - k)  # never more than there is room to grow
            if n == 0:  # nothing pruned: last update's growth survives, nothing new grows
                self._reliable[i] |= self._grown[i]
                self._grown[i] = torch.zeros_like(self._grown[i])
                continue
            kept = self.prune(p, self.masks[i], n)
            grown = self.grow(p, kept, n)
            self._reliable[i] |= self._grown[i] & kept  # grown last time, survived this prune
            self._grown[i] = grown
            self.masks[i] = kept | grown
            self.reset_grown(p, grown)  # the pruned ones: ``apply_masks``, which follows
            self.ever[i] |= self.masks[i]
        self.updates += 1
        self.curve.append((step, self.rate()))

    def prune(self, p: Tensor, mask: Tensor, n: int) -> Tensor:
        """``mask`` without its ``n`` active weights of smallest magnitude."""
        score = torch.where(mask, p.abs(), torch.full_like(p, math.inf)).flatten()
        drop = torch.topk(score, n, largest=False).indices
        kept = mask.flatten().clone()
        kept[drop] = False
        return kept.view_as(mask)

    def grow(self, p: Tensor, kept: Tensor, n: int) -> Tensor:
        """``n`` new weights among those ``kept`` leaves inactive: random (SET) or of largest
        dense-gradient magnitude (RigL, this step's gradient)."""
        if self.cfg.growth == "gradient":
            if p.grad is None:
                raise ValueError("gradient growth (RigL) needs this step's gradient; call the "
                                 "hook after the optimizer step, before the next zero_grad")
            score = p.grad.abs().float().flatten()
        else:
            score = torch.rand(p.numel(), generator=self._gen).to(p.device)
        score = torch.where(kept.flatten(), torch.full_like(score, -math.inf), score)
        new = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
        new[torch.topk(score, n).indices] = True
        return new.view_as(kept)

    def reset_grown(self, p: Tensor, grown: Tensor) -> None:
        """New weights start at zero, and so does every per-weight optimizer state of theirs
        (momentum, both Adam moments, ...; not the tensor's scalar ``step``, see
        ``shaped_state``)."""
        p.masked_fill_(grown, 0.0)
        for s in shaped_state(self._optimizer, p):
            s.masked_fill_(grown, 0)

    # ------------------------------------------------------------------------ measures

    def rate(self) -> float:
        """The ITOP rate R_s: weights ever active over the sparse layers' weights."""
        return sum(int(e.sum()) for e in self.ever) / sum(p.numel() for p in self._params)

    def reliable_rate(self) -> float:
        """Weights grown at an update that survived the next one, over the layers' weights."""
        return sum(int(r.sum()) for r in self._reliable) / sum(p.numel() for p in self._params)

    def density(self) -> float:
        return sum(int(m.sum()) for m in self.masks) / sum(p.numel() for p in self._params)

    def record(self) -> dict:
        return {"sparse": {
            "rs": self.rate(), "rs_curve": [list(x) for x in self.curve],
            "reliable": self.reliable_rate(), "density": self.density(),
            "layer_densities": [int(m.sum()) / m.numel() for m in self.masks],
            "updates": self.updates}}

"""Tucker-2 decomposition of convolutions, rank selection, layer selection by a random-tensor
error, and pruning before decomposing. Usable on its own model.

Kim et al., "Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile
Applications", ICLR 2016 (Tucker-2 with VBMF ranks); the compression talk's public YOLOv5
project adds the random-tensor layer test and pruning (claims/README.md section 4).

- ``tucker2(conv, ranks)``: W (T, S, k, k) ≈ core ×₀ U_out ×₁ U_in via tensorly's
  ``partial_tucker`` on the channel modes; the conv becomes 1×1 (S → R_in, weight U_inᵀ),
  k×k (R_in → R_out, weight core, the original stride, padding and dilation), 1×1 (R_out → T,
  weight U_out, the original bias). Grouped and depthwise convs are left alone.
- Ranks: ``vbmf_rank`` (Nakajima et al.'s analytic empirical VBMF on each unfolding, the noise
  variance at its objective's global minimum: ``vbmf_fit``) or
  ``energy_rank`` (the smallest rank keeping a fraction of the singular values' energy).
- ``layer_error``: ‖y − ỹ‖ / ‖y‖ on a seeded random input shaped for the layer.
- ``decompose_model``: decompose where the error is under a threshold; a new model and a
  per-layer report. ``prune_then_decompose``: L1-unstructured pruning (``torch.nn.utils.prune``)
  with a per-layer binary search for the largest ratio whose decomposition stays under it.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from scipy.optimize import minimize_scalar
from torch import Tensor

# ---------------------------------------------------------------------------- Tucker-2


def _check_conv(conv: nn.Module) -> nn.Conv2d:
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"Tucker-2 needs an nn.Conv2d, got {type(conv).__name__}")
    return conv


def decomposable(conv: nn.Module) -> str | None:
    """None when ``conv`` can be decomposed, else why not."""
    if not isinstance(conv, nn.Conv2d):
        return f"not a Conv2d ({type(conv).__name__})"
    if conv.groups != 1:
        return f"grouped conv (groups={conv.groups}): channel modes are block-diagonal"
    if conv.out_channels < 2 or conv.in_channels < 2:
        return "a single input or output channel: nothing to factor"
    return None


def pointwise(conv: nn.Conv2d) -> str | None:
    """Why a model walk leaves a 1×1 conv alone (Tucker-2 there only factors a matrix into
    three layers; the published project skips them too), else None."""
    if tuple(conv.kernel_size) == (1, 1):
        return "1×1 conv: a matrix, left to the k×k convs (as the published project does)"
    return None


def tucker2_factors(weight: Tensor, ranks: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """(core (R_out, R_in, k, k), U_out (T, R_out), U_in (S, R_in)) of a conv weight."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    t, s = weight.shape[:2]
    r_out, r_in = ranks
    if not (1 <= r_out <= t and 1 <= r_in <= s):
        raise ValueError(f"ranks {ranks} outside [1, {t}] × [1, {s}] for a weight of shape "
                         f"{tuple(weight.shape)}")
    # fp64 where the weight lives: a GPU's cuSOLVER takes the SVDs that dominate the full
    # profile's decompositions (hundreds per network), the CPU takes them elsewhere.
    w = weight.detach().to(torch.float64)
    with tl.backend_context("pytorch"), warnings.catch_warnings():  # local, not global
        # a rank above an unfolding's own rank is valid (it reconstructs exactly); tensorly
        # warns that it truncates the SVD there
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
        (core, (u_out, u_in)), _ = partial_tucker(w, rank=[r_out, r_in], modes=[0, 1],
                                                   init="svd", n_iter_max=100, tol=1e-8)
    return core, u_out, u_in


def tucker2(conv: nn.Conv2d, ranks: tuple[int, int]) -> nn.Sequential:
    """``conv`` as a 1×1 → k×k → 1×1 chain of Tucker-2 ranks (R_out, R_in)."""
    conv = _check_conv(conv)
    why = decomposable(conv)
    if why:
        raise ValueError(f"cannot decompose this conv: {why}")
    core, u_out, u_in = tucker2_factors(conv.weight, ranks)
    r_out, r_in = ranks
    like = dict(dtype=conv.weight.dtype, device=conv.weight.device)
    first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False, **like)
    middle = nn.Conv2d(r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                       dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode, **like)
    last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None, **like)
    with torch.no_grad():
        first.weight.copy_(u_in.T.reshape(r_in, conv.in_channels, 1, 1))
        middle.weight.copy_(core)
        last.weight.copy_(u_out.reshape(conv.out_channels, r_out, 1, 1))
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last)


def reconstruct(core: Tensor, u_out: Tensor, u_in: Tensor) -> Tensor:
    """W̃ = core ×₀ U_out ×₁ U_in."""
    return torch.einsum("abhw,ta,sb->tshw", core, u_out, u_in)


# ---------------------------------------------------------------------------- ranks


def unfold(weight: Tensor, mode: int) -> Tensor:
    """The mode-``mode`` unfolding of a conv weight: (size of that mode, everything else)."""
    return weight.detach().movedim(mode, 0).reshape(weight.shape[mode], -1)


@dataclass(frozen=True)
class VBMFObjective:
    """Nakajima et al.'s objective Ω(σ²) of one matrix (the free energy over the noise variance,
    per row of the shorter side L; the matrix is L × M, L ≤ M) and the admissible interval
    [``lower``, ``upper``] that holds its minimiser. Callable on an array of σ², vectorised:
    the global search evaluates it on a dense grid."""

    s: np.ndarray  # singular values, descending
    rows: int  # L, the shorter side
    cols: int  # M
    residual: float  # ‖Y‖² beyond the singular values (rounding only, for a full SVD)
    lower: float
    upper: float

    @property
    def alpha(self) -> float:
        return self.rows / self.cols

    @property
    def tau_bar(self) -> float:
        return 2.5129 * math.sqrt(self.alpha)

    @property
    def x_bar(self) -> float:
        """A singular value γ is kept when γ² / (M σ²) exceeds this."""
        return (1 + self.tau_bar) * (1 + self.alpha / self.tau_bar)

    @classmethod
    def of(cls, matrix: Tensor | np.ndarray) -> VBMFObjective:
        y = np.asarray(matrix.detach().cpu().double() if isinstance(matrix, Tensor) else matrix,
                       dtype=float)
        if y.shape[0] > y.shape[1]:
            y = y.T
        rows, cols = y.shape  # rows ≤ cols
        s = np.linalg.svd(y, compute_uv=False)
        alpha = rows / cols
        tau_bar = 2.5129 * math.sqrt(alpha)
        x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
        total = float((y ** 2).sum())
        h_cap = min(math.ceil(rows / (1 + alpha)) - 1, len(s) - 1)
        lower = max(s[h_cap] ** 2 / (cols * x_bar) if h_cap >= 0 else 0.0,
                    float(np.mean(s[h_cap:] ** 2)) / cols if h_cap >= 0 else 0.0, 1e-300)
        return cls(s=s, rows=rows, cols=cols,
                   residual=max(total - float((s ** 2).sum()), 0.0), lower=lower,
                   upper=total / (rows * cols))

    def __call__(self, sigma2: float | np.ndarray) -> np.ndarray:
        sigma2 = np.asarray(sigma2, dtype=float)
        alpha, x_bar = self.alpha, self.x_bar
        x = self.s ** 2 / (self.cols * sigma2[..., None])
        big = x > x_bar
        # each branch on values valid for it (masked out after): no warnings, no NaN
        xb = np.where(big, x, x_bar)
        tau = 0.5 * (xb - (1 + alpha) + np.sqrt(np.maximum((xb - (1 + alpha)) ** 2 - 4 * alpha,
                                                            0.0)))
        kept = xb - tau + np.log((tau + 1) / xb) + alpha * np.log(tau / alpha + 1)
        xs = np.maximum(np.where(big, 1.0, x), np.finfo(float).tiny)  # a zero σ: log(0)
        terms = np.where(big, kept, xs - np.log(xs)).sum(-1)
        return (terms + self.residual / (self.cols * sigma2)
                + (self.rows - len(self.s)) * np.log(sigma2)) / self.rows

    def rank_at(self, sigma2: float) -> int:
        """The singular values above the threshold √(M σ² x̄) (no floor of 1)."""
        return int((self.s > math.sqrt(self.cols * sigma2 * self.x_bar)).sum())

    def breakpoints(self) -> np.ndarray:
        """The σ² inside the interval where a singular value crosses the threshold: Ω is
        smooth between them, and its local minima sit about one per rank near the threshold."""
        b = self.s ** 2 / (self.cols * self.x_bar)
        return b[(b > self.lower) & (b < self.upper)]


@dataclass(frozen=True)
class VBMFFit:
    rank: int  # singular values above the threshold at ``sigma2``, at least 1
    sigma2: float  # the noise variance at Ω's global minimum over the admissible interval
    omega: float  # Ω there


def vbmf_fit(matrix: Tensor | np.ndarray, grid: int = 256, refine: int = 8) -> VBMFFit:
    """The analytic empirical VBMF of ``matrix`` (Nakajima, Sugiyama, Babacan, Tomioka, JMLR
    2013) at the global minimum of Ω(σ²). Ω has several local minima near the threshold (about
    one per rank there), so one bounded Brent search can stop at the wrong rank: Ω is evaluated
    on ``grid`` log-spaced σ² plus every breakpoint (vectorised, cheap beside the SVD), and
    Brent (in log σ², so the tolerance is relative: conv weights have σ² ~ 1e-4) refines the
    ``refine`` lowest grid minima between their neighbours; the lowest point found wins."""
    omega = VBMFObjective.of(matrix)
    if omega.upper <= omega.lower:  # no admissible σ² (a zero or degenerate matrix)
        return VBMFFit(1, omega.upper, math.nan)
    t = np.unique(np.concatenate([np.linspace(math.log(omega.lower), math.log(omega.upper),
                                              grid), np.log(omega.breakpoints())]))
    values = omega(np.exp(t))
    padded = np.concatenate([[np.inf], values, [np.inf]])
    minima = np.flatnonzero((values <= padded[:-2]) & (values <= padded[2:]))
    best_t, best = float(t[values.argmin()]), float(values.min())
    for i in minima[np.argsort(values[minima], kind="stable")][:refine]:
        lo, hi = t[max(i - 1, 0)], t[min(i + 1, len(t) - 1)]
        if hi <= lo:
            continue
        res = minimize_scalar(lambda u: float(omega(math.exp(u))), bounds=(lo, hi),
                              method="bounded", options=dict(xatol=1e-9))
        if res.fun < best:
            best_t, best = float(res.x), float(res.fun)
    sigma2 = math.exp(best_t)
    return VBMFFit(max(1, omega.rank_at(sigma2)), sigma2, best)


def vbmf_rank(matrix: Tensor | np.ndarray) -> int:
    """Rank of ``matrix`` by the analytic empirical variational Bayesian matrix factorisation
    (Nakajima et al., JMLR 2013; Kim et al. 2016 use it for Tucker-2), with the noise variance
    estimated at Ω's global minimum (``vbmf_fit``); at least 1."""
    return vbmf_fit(matrix).rank


def energy_rank(matrix: Tensor, keep: float) -> int:
    """The smallest rank whose singular values keep ``keep`` of the squared-norm energy."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep={keep!r}: must be in (0, 1]")
    s = torch.linalg.svdvals(matrix.detach().double())
    energy = torch.cumsum(s ** 2, 0) / (s ** 2).sum().clamp_min(1e-300)
    return max(1, min(len(s), int((energy < keep - 1e-12).sum()) + 1))


def tucker2_ranks(weight: Tensor, rule: str = "vbmf", keep: float = 0.9) -> tuple[int, int]:
    """(R_out, R_in) from the two channel unfoldings, each within [1, full rank]."""
    if rule == "vbmf":
        return vbmf_rank(unfold(weight, 0)), vbmf_rank(unfold(weight, 1))
    if rule == "energy":
        return energy_rank(unfold(weight, 0), keep), energy_rank(unfold(weight, 1), keep)
    raise ValueError(f"rank rule {rule!r}: unknown; choose vbmf or energy")


# ---------------------------------------------------------------------- the layer test


def layer_error(original: nn.Module, replacement: nn.Module, in_channels: int, size: int,
                seed: int = 0, batch: int = 8) -> float:
    """‖y − ỹ‖ / ‖y‖ of the two modules on one seeded random input (batch, C, size, size)."""
    gen = torch.Generator().manual_seed(seed)
    p = next(original.parameters())
    x = torch.randn(batch, in_channels, size, size, generator=gen).to(p.device, p.dtype)
    with torch.no_grad():
        y, y_hat = original(x), replacement(x)
    return float(torch.linalg.vector_norm(y - y_hat) / torch.linalg.vector_norm(y).clamp_min(
        torch.finfo(y.dtype).tiny))


def _input_sizes(model: nn.Module, resolution: int, in_channels: int) -> dict[str, int]:
    """Each conv's input map side at ``resolution`` (one forward pass on zeros)."""
    sizes: dict[str, int] = {}

    def seen(name: str):
        def hook(module, inputs, output) -> None:  # must return None: it would replace output
            sizes.setdefault(name, inputs[0].shape[-1])
        return hook

    hooks = [m.register_forward_hook(seen(n)) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d)]
    p = next(model.parameters())
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_channels, resolution, resolution, device=p.device,
                          dtype=p.dtype))
    model.train(was)
    for h in hooks:
        h.remove()
    return sizes


@dataclass(frozen=True)
class DecomposeSettings:
    threshold: float  # keep a decomposition only where the layer error is below this
    rank_rule: str = "vbmf"  # or "energy"
    keep: float = 0.9  # the energy rule's kept fraction
    seed: int = 0  # of the random-tensor test

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"threshold={self.threshold!r}: must be > 0")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def decompose_model(model: nn.Module, settings: DecomposeSettings, resolution: int,
                    in_channels: int = 3, only: Callable[[str], bool] | None = None,
                    force: bool = False, prune: bool = False,
                    memo: dict | None = None) -> tuple[nn.Module, pd.DataFrame]:
    """A copy of ``model`` with each conv replaced by its Tucker-2 chain where the layer error
    is under the threshold (every decomposable conv when ``force``; only those ``only``
    accepts when given). With ``prune``, each conv is first L1-pruned at the largest ratio
    (binary search) whose decomposition still keeps the error, against the unpruned conv,
    under the threshold: pruned weights decompose to lower ranks. The report has one row per
    conv: prune ratio, ranks, parameters before and after, error, and the decision with its
    reason. ``model`` is left untouched. ``memo``: a dict shared by calls on the same model
    and settings, so a (layer, prune ratio) decomposed by one call is reused by the next
    (decompose-all, selective and the pruning search all decompose the unpruned layer)."""
    new = copy.deepcopy(model)
    sizes = _input_sizes(new, resolution, in_channels)
    rows = []
    for name, conv in [(n, m) for n, m in new.named_modules() if isinstance(m, nn.Conv2d)]:
        before = sum(p.numel() for p in conv.parameters())
        row = dict(layer=name, shape=tuple(conv.weight.shape), prune_ratio=0.0,
                   params_before=before,
                   params_after=before, rank_out=None, rank_in=None, error=math.nan,
                   decomposed=False, reason="")
        why = (decomposable(conv) or pointwise(conv)
               or (None if only is None or only(name) else "not selected"))
        if why:
            rows.append({**row, "reason": why})
            continue
        size = sizes[name]

        def attempt(ratio: float, conv=conv, size=size, name=name):
            key = (name, ratio)
            if memo is not None and key in memo:
                ranks, chain, err = memo[key]
                return ranks, copy.deepcopy(chain), err
            source = l1_prune(conv, ratio) if ratio > 0 else conv
            ranks = tucker2_ranks(source.weight, settings.rank_rule, settings.keep)
            chain = tucker2(source, ranks)
            err = layer_error(conv, chain, conv.in_channels, size, settings.seed)
            if memo is not None:
                memo[key] = (ranks, copy.deepcopy(chain), err)
            return ranks, chain, err

        ratio = (largest_ratio(lambda r: attempt(r)[2], settings.threshold)
                 if prune else 0.0)
        ranks, chain, err = attempt(ratio)
        after = sum(p.numel() for p in chain.parameters())
        keep = force or err < settings.threshold
        row.update(prune_ratio=ratio, rank_out=ranks[0], rank_in=ranks[1], error=err,
                   decomposed=keep,
                   params_after=after if keep else before,
                   reason=("forced" if force else f"error {err:.4f} < {settings.threshold:g}")
                   if keep else f"error {err:.4f} ≥ {settings.threshold:g}")
        if keep:
            _set_module(new, name, chain)
        rows.append(row)
    return new, pd.DataFrame(rows)


# ----------------------------------------------------------- pruning, then decomposition


def l1_prune(conv: nn.Conv2d, ratio: float) -> nn.Conv2d:
    """A copy of ``conv`` with the ``ratio`` smallest-magnitude weights zeroed
    (``torch.nn.utils.prune.l1_unstructured``, made permanent)."""
    from torch.nn.utils import prune

    if not 0 <= ratio < 1:
        raise ValueError(f"ratio={ratio!r}: must be in [0, 1)")
    pruned = copy.deepcopy(conv)
    if ratio > 0:
        prune.l1_unstructured(pruned, "weight", amount=ratio)
        prune.remove(pruned, "weight")
    return pruned


def largest_ratio(error_at: Callable[[float], float], threshold: float, low: float = 0.0,
                  high: float = 0.95, steps: int = 8) -> float:
    """Binary search for the largest ratio in [low, high] with ``error_at(ratio)`` under
    ``threshold``, assuming the error grows with the ratio; ``low`` when even it fails."""
    if error_at(high) < threshold:
        return high
    if not error_at(low) < threshold:
        return low
    for _ in range(steps):
        mid = (low + high) / 2
        if error_at(mid) < threshold:
            low = mid
        else:
            high = mid
    return low

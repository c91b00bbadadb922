"""Adaptive Gradient Clipping (AGC), unit-wise, as in NFNets.

Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without
Normalization", ICML 2021, https://arxiv.org/abs/2102.06171 (section 3, eq. 3).

For each unit i (one output row: ``W[i]`` of a ``[out, in, kh, kw]`` conv or ``[out, in]``
linear weight; a whole tensor for biases and gains, ndim <= 1)::

    G_i <- lam * (||W_i||* / ||G_i||) * G_i   if ||G_i|| / ||W_i||* > lam,  else G_i unchanged
    ||W_i||* = max(||W_i||, eps),  eps = 1e-3

Usage (the final classifier is not clipped, as in the paper)::

    params = parameters_to_clip(model, exclude=[classifier_of(model)])
    loss.backward()
    clip_grads_(params, clipping=0.01)
    optimizer.step()

With mixed precision AGC must see the *unscaled* gradients, since the ratio ||G||/||W|| is
meaningless on loss-scaled ones::

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)          # first
    clip_grads_(params, clipping=0.01)  # then AGC
    scaler.step(optimizer)
    scaler.update()

``check_agc_invariants`` (tensors) and ``check_model_agc`` (a model's AGC step, classifier
excluded) are the executable form of the claim ``agc.rule`` (claims/README.md section 2): they run any
clip implementation and list the rule's violations, so the tests and the claim check can show
that ``clip_grads_`` passes and the known-bad variants fail.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

__all__ = [
    "DEFAULT_EPS",
    "check_agc_invariants",
    "check_model_agc",
    "classifier_of",
    "clip_grads_",
    "parameters_to_clip",
    "random_agc_case",
    "unitwise_norm",
]

DEFAULT_EPS = 1e-3

ClipFn = Callable[[list[nn.Parameter], float, float], None]

# Norms of half/bfloat16 gradients are accumulated in float32: a sum of squares of fp16 values
# overflows at 256, and the clip factor needs more than 8 bits of mantissa.
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Tensors up to this many elements are concatenated with others of the same fan-in.
_BATCH_MAX_NUMEL = 1 << 16

_Item = tuple[Tensor, Tensor, int, int]  # weight, grad, units, fan-in


def _units(x: Tensor) -> int:
    """Number of AGC units of a tensor: output rows for ndim >= 2, else the whole tensor."""
    return x.shape[0] if x.ndim >= 2 else 1


def unitwise_norm(x: Tensor) -> Tensor:
    """Frobenius norm per unit: over dims 1.. for ndim >= 2 (keepdim), whole tensor otherwise.

    The result broadcasts against ``x``: ``[out, 1, ..., 1]`` or a 0-d tensor.
    """
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def clip_grads_(
    parameters: Tensor | Iterable[Tensor], clipping: float, eps: float = DEFAULT_EPS
) -> None:
    """Clip gradients in place with unit-wise AGC (see the module docstring for the rule).

    Parameters without a gradient are skipped. Units whose ratio is at most ``clipping`` are
    left bit-for-bit unchanged (they are multiplied by exactly 1). Vectorised: small tensors
    with the same (device, dtype, fan-in) are concatenated and handled by one kernel per step,
    large ones get their own kernels without copies, and the clip factors of all units come
    from one set of elementwise kernels; no host-device synchronisation. A unit with a
    non-finite gradient stays non-finite, so an inf check after AGC still sees it.
    """
    if clipping < 0 or eps < 0:
        raise ValueError(f"clipping and eps must be >= 0, got {clipping=} {eps=}")
    if isinstance(parameters, Tensor):
        parameters = [parameters]

    # (device, dtype) -> segments; a segment is a list of (weight, grad, units) whose unit norms
    # come from one norm kernel. Dicts keep insertion order, so results do not depend on hashing.
    groups: dict[tuple[torch.device, torch.dtype], dict[object, list[_Item]]] = {}
    seen: set[int] = set()
    for p in parameters:
        g = p.grad
        if g is None or p.numel() == 0 or id(p) in seen:
            continue
        seen.add(id(p))  # a tensor listed twice must not be clipped twice
        if g.is_sparse:
            raise ValueError("AGC does not support sparse gradients")
        u = _units(p)
        fan_in = p.numel() // u
        # Small tensors are batched by fan-in (copying them is cheaper than a launch); a large
        # one is a segment of its own, so nothing big is ever copied.
        key: object = fan_in if p.numel() <= _BATCH_MAX_NUMEL else id(p)
        groups.setdefault((g.device, g.dtype), {}).setdefault(key, []).append(
            (p.detach(), g, u, fan_in)
        )

    for (_, dtype), segments in groups.items():
        acc = torch.float32 if dtype in _LOW_PRECISION else dtype
        w_norms, g_norms, g_mats = [], [], []
        for items in segments.values():
            if len(items) == 1:
                w, g, u, f = items[0]
                w_mat, g_mat = w.reshape(u, f), g.reshape(u, f)  # views unless non-contiguous
                g_mats.append(None)  # scaled in place below, whatever its layout
            else:
                w_mat = torch.cat([w.reshape(u, f) for w, _, u, f in items])
                g_mat = torch.cat([g.reshape(u, f) for _, g, u, f in items])
                g_mats.append(g_mat)
            w_norms.append(torch.linalg.vector_norm(w_mat, dim=1, dtype=acc))
            g_norms.append(torch.linalg.vector_norm(g_mat, dim=1, dtype=acc))

        w_norm, g_norm = torch.cat(w_norms), torch.cat(g_norms)
        max_norm = w_norm.clamp_min_(eps).mul_(clipping)
        # Clip where ||G|| > lam*||W||*. There g_norm > 0, so the floor on the divisor only keeps
        # the unselected lanes (0/0) free of NaN; everywhere else the factor is exactly 1.
        tiny = torch.finfo(acc).tiny
        scale = torch.where(g_norm > max_norm, max_norm / g_norm.clamp_min(tiny), 1.0)

        sizes = [sum(u for _, _, u, _ in items) for items in segments.values()]
        for s, g_mat, items in zip(scale.split(sizes), g_mats, segments.values(), strict=True):
            # Products are computed in `acc` and rounded once to the gradient's dtype.
            if g_mat is None:
                g = items[0][1]
                g.mul_(s.view([-1] + [1] * (g.ndim - 1)) if g.ndim >= 2 else s.view(()))
            else:
                g_mat.mul_(s.unsqueeze(1))
                grads = [g for _, g, _, _ in items]
                chunks = g_mat.split([u for _, _, u, _ in items])
                views = [c.view_as(g) for c, g in zip(chunks, grads, strict=True)]
                torch._foreach_copy_(grads, views)


def classifier_of(model: nn.Module) -> nn.Module:
    """The final classifier: the last ``nn.Linear`` in module order."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear to treat as the classifier")
    return last


def parameters_to_clip(
    model: nn.Module, exclude: Sequence[str | nn.Module] = ()
) -> list[nn.Parameter]:
    """All parameters of ``model`` except those of the excluded modules.

    ``exclude`` holds submodules, or their qualified names as in ``named_modules`` ("fc",
    "head.fc"). Unknown names and foreign modules raise ``ValueError`` rather than silently
    clipping the layer the caller meant to protect.
    """
    if isinstance(exclude, str | nn.Module):  # a bare "fc" would otherwise exclude "f", "c"
        exclude = (exclude,)
    modules = dict(model.named_modules())
    ids_of_modules = {id(m) for m in modules.values()}
    skipped: set[int] = set()
    for item in exclude:
        if isinstance(item, str):
            if item not in modules:
                names = [n for n in modules if n][-8:]
                raise ValueError(
                    f"exclude: {type(model).__name__} has no submodule {item!r} "
                    f"(last module names: {names})"
                )
            mod = modules[item]
        elif isinstance(item, nn.Module):
            if id(item) not in ids_of_modules:
                raise ValueError(f"exclude: {type(item).__name__} is not a submodule of the model")
            mod = item
        else:
            raise TypeError(f"exclude items must be str or nn.Module, got {type(item).__name__}")
        skipped.update(id(p) for p in mod.parameters())
    return [p for p in model.parameters() if id(p) not in skipped]


# --------------------------------------------------------------------------------------------
# The property suite of claim `agc.rule`


def check_agc_invariants(
    clip_fn: ClipFn,
    weights: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    clipping: float,
    eps: float = DEFAULT_EPS,
    *,
    rtol: float | None = None,
) -> list[str]:
    """Run ``clip_fn(params, clipping, eps)`` on copies of the tensors; list the rule's violations.

    Per unit, with norms computed in float64:

    * ``bound``: ||G'_i|| / ||W_i||* <= lam, to ``rtol``;
    * ``untouched``: units with ratio <= lam are bit-for-bit unchanged;
    * ``magnitude``: clipped units have norm lam * ||W_i||* (this is what catches a missing
      eps floor: a zero weight must still allow a gradient of norm lam * eps);
    * ``direction``: clipped units keep their direction (cosine 1);
    * ``finite``: no NaN/inf appears; weights, shapes and dtypes are unchanged.

    Units within ``rtol`` of the threshold may be either clipped or not (rounding decides).
    ``rtol`` defaults to 64 ulps of the gradient dtype, far below the error of any wrong rule.
    An empty list means the implementation passed.
    """
    params = [nn.Parameter(w.detach().clone()) for w in weights]
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.detach().clone()
    try:
        clip_fn(params, clipping, eps)
    except Exception as e:  # a crash is a violation too, and the report should say which
        return [f"clip_fn raised {type(e).__name__}: {e}"]
    names = [f"tensor {i} {tuple(w.shape)}" for i, w in enumerate(weights)]
    return _violations(names, params, weights, grads, set(), clipping, eps, rtol)


def check_model_agc(
    clip_step: Callable[[nn.Module, float, float], None],
    model: nn.Module,
    clipping: float,
    eps: float = DEFAULT_EPS,
    *,
    exclude: Sequence[str | nn.Module] | None = None,
    rtol: float | None = None,
) -> list[str]:
    """Check a training loop's AGC step on a model whose ``.grad`` are populated.

    ``clip_step(model, clipping, eps)`` clips the model's gradients in place (as the loop
    does). Parameters of ``exclude`` (default: ``classifier_of(model)``) must come back
    bit-for-bit untouched; every other parameter must satisfy ``check_agc_invariants``.
    The model's gradients are left as ``clip_step`` made them.
    """
    if exclude is None:
        exclude = [classifier_of(model)]
    keep = {id(p) for p in parameters_to_clip(model, exclude)}
    named = list(model.named_parameters())
    weights = [p.detach().clone() for _, p in named]
    grads = [None if p.grad is None else p.grad.detach().clone() for _, p in named]
    try:
        clip_step(model, clipping, eps)
    except Exception as e:
        return [f"clip_step raised {type(e).__name__}: {e}"]
    excluded = {i for i, (_, p) in enumerate(named) if id(p) not in keep}
    params = [p for _, p in named]
    return _violations([n for n, _ in named], params, weights, grads, excluded, clipping, eps, rtol)


def _violations(
    names: Sequence[str],
    params: Sequence[Tensor],
    weights: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    excluded: Collection[int],
    lam: float,
    eps: float,
    rtol: float | None,
) -> list[str]:
    """Compare parameters after clipping with the weights and grads they had before."""
    out: list[str] = []
    for i, (name, p, w, g) in enumerate(zip(names, params, weights, grads, strict=True)):
        if not torch.equal(p.detach(), w):
            out.append(f"{name}: weights modified")
        if g is None:
            if p.grad is not None:
                out.append(f"{name}: a gradient appeared where there was none")
            continue
        after = p.grad
        if after is None or after.shape != g.shape or after.dtype != g.dtype:
            out.append(f"{name}: gradient removed or its shape/dtype changed")
        elif i in excluded:
            if not torch.equal(after, g):
                out.append(f"{name}: excluded tensor (classifier) was modified")
        else:
            out += _unit_violations(name, w, g, after, lam, eps, rtol)
    return out


def unit_checks(
    w: Tensor, g: Tensor, after: Tensor, lam: float, eps: float, rtol: float
) -> dict[str, Tensor]:
    """Per unit, whether each invariant holds (a bool tensor per check on the inputs' device),
    with the numbers a report needs. Everything is built from the inputs, never on the host,
    so the checks run where the gradients live (a test runs them on the meta device)."""
    u = _units(w)
    g_rows, a_rows = g.reshape(u, -1), after.reshape(u, -1)
    w64, g64, a64 = (t.reshape(u, -1).double() for t in (w, g, after))
    w_star = torch.linalg.vector_norm(w64, dim=1).clamp_min(eps)
    g_norm = torch.linalg.vector_norm(g64, dim=1)
    a_norm = torch.linalg.vector_norm(a64, dim=1)
    ratio, ratio_after = g_norm / w_star, a_norm / w_star
    target = lam * w_star  # the norm of a clipped unit
    # Per-unit equality as torch.equal (NaN is never equal), computed on the device instead
    # of one host round trip per unit.
    unchanged = (a_rows == g_rows).all(1)
    cosine = (a64 * g64).sum(1) / (a_norm * g_norm).clamp_min(torch.finfo(torch.float64).tiny)
    clipped_ok = ((a_norm - target).abs() <= rtol * target) & ((target == 0) | (cosine >= 1 - rtol))
    under = ratio <= lam * (1 - rtol)
    over = ratio > lam * (1 + rtol)
    return {
        "finite": torch.isfinite(a64).all(1) | ~torch.isfinite(g64).all(1),
        "bound": ratio_after <= lam * (1 + rtol),
        "untouched": ~under | unchanged,
        "magnitude": ~over | ((a_norm - target).abs() <= rtol * target),
        "direction": ~over | (target == 0) | (cosine >= 1 - rtol),
        # At the threshold rounding may go either way, but the unit must be one or the other.
        "threshold": under | over | unchanged | clipped_ok,
        # not checks: what a violation report shows
        "_w_star": w_star, "_ratio": ratio, "_ratio_after": ratio_after, "_cosine": cosine,
    }


def _unit_violations(
    name: str, w: Tensor, g: Tensor, after: Tensor, lam: float, eps: float, rtol: float | None
) -> list[str]:
    """Violations of the per-unit invariants for one tensor (see ``check_agc_invariants``)."""
    if rtol is None:
        rtol = 64 * torch.finfo(g.dtype).eps
    checks = unit_checks(w, g, after, lam, eps, rtol)
    u = _units(w)
    out = []
    for check, ok in checks.items():
        if check.startswith("_"):
            continue
        bad = (~ok).nonzero().flatten().tolist()
        if bad:
            j = bad[0]
            out.append(
                f"{name}: {check} violated in {len(bad)}/{u} units; e.g. unit {j}: "
                f"|W|*={checks['_w_star'][j].item():.4g} (eps {eps:g}), ratio before "
                f"{checks['_ratio'][j].item():.4g}, after {checks['_ratio_after'][j].item():.4g}, "
                f"lam {lam:g}, cos {checks['_cosine'][j].item():.6f}"
            )
    return out


def random_agc_case(
    seed: int, *, dtype: torch.dtype = torch.float32
) -> tuple[list[Tensor], list[Tensor]]:
    """Seeded stress input for ``check_agc_invariants``: conv, linear, bias and scalar tensors.

    Each unit gets its own weight and gradient scale, log-uniform over 1e-5..1e2 with some
    exactly-zero units, so every case mixes clipped, unclipped and eps-floored units.
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3, 3, 3), (5, 4, 1, 1), (6, 4), (6,), ()]

    def tensor(shape: tuple[int, ...]) -> Tensor:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        u = x.shape[0] if x.ndim >= 2 else 1
        scale = 10.0 ** (torch.rand(u, generator=gen, dtype=torch.float64) * 7 - 5)
        scale[torch.rand(u, generator=gen) < 0.15] = 0.0
        return (x.reshape(u, -1) * scale[:, None]).reshape(shape).to(dtype)

    weights = [tensor(s) for s in shapes]
    grads = [tensor(s) for s in shapes]
    return weights, grads

"""Known-bad AGC implementations, as published: the ``agc.rule`` suite must reject each.

The claim and the tests both import them from here, so the harness keeps proving that
``check_agc_invariants`` tells them from ``clip_grads_``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.agc.rule import DEFAULT_EPS, unitwise_norm


def inverted_trigger_agc(parameters, clipping: float, eps: float = DEFAULT_EPS) -> None:
    """nfnets-pytorch (Feb 2021), as quoted in the seed: ``where(grad_norm < max_norm, ...)``.

    The trigger is inverted: small gradients are scaled *up* to lam*||W||, large ones kept.
    """
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p.detach()).clamp_min(eps) * clipping
        grad_norm = unitwise_norm(p.grad)
        clipped = p.grad * (max_norm / grad_norm.clamp_min(1e-6))
        p.grad.copy_(torch.where(grad_norm < max_norm, clipped, p.grad))


def dim0_linear_agc(parameters, clipping: float, eps: float = DEFAULT_EPS) -> None:
    """The same repo's ``unitwise_norm``: dim 0 for 2-D (``nn.Linear``) weights, the wrong axis."""

    def norm(x: torch.Tensor) -> torch.Tensor:
        if x.ndim in (2, 3):
            return torch.linalg.vector_norm(x, dim=0, keepdim=True)  # per input column
        return unitwise_norm(x)

    for p in parameters:
        if p.grad is None:
            continue
        max_norm = norm(p.detach()).clamp_min(eps) * clipping
        grad_norm = norm(p.grad)
        clipped = p.grad * (max_norm / grad_norm.clamp_min(1e-6))
        p.grad.copy_(torch.where(grad_norm > max_norm, clipped, p.grad))


def no_eps_floor_agc(parameters, clipping: float, eps: float = DEFAULT_EPS) -> None:
    """Composer's early AGC: no eps floor, so zero-initialised parameters never move."""
    del eps  # ignored: that is the bug
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p.detach()) * clipping
        grad_norm = unitwise_norm(p.grad)
        clipped = p.grad * (max_norm / grad_norm.clamp_min(1e-6))
        p.grad.copy_(torch.where(grad_norm > max_norm, clipped, p.grad))


KNOWN_BAD: dict[str, Callable[..., None]] = {
    "inverted_trigger": inverted_trigger_agc,
    "dim0_linear_norm": dim0_linear_agc,
    "no_eps_floor": no_eps_floor_agc,
}

"""Bugs seen in public dynamic-sparse-training code, as working variants of ``DynamicSparse``:
the property tests (``tests/sparse``) and ``itop.rate_definition`` must catch each one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from harness.sparse.masks import DynamicSparse, erk_scores


class MomentumKept(DynamicSparse):
    """Masks the weights but not their momentum, and leaves a regrown weight's momentum as it
    was: a regrown weight starts with a kick from gradients it never should have had."""

    @torch.no_grad()
    def apply_masks(self) -> None:
        for p, m in zip(self._params, self.masks, strict=True):
            p.mul_(m)

    def reset_grown(self, p, grown) -> None:
        p.masked_fill_(grown, 0.0)


class ReselectsActive(DynamicSparse):
    """Growth picks the largest scores among all weights, active ones included: picks that
    land on active weights add nothing, so the density drifts below its target."""

    def grow(self, p, kept, n):
        score = (p.grad.abs().float() if self.cfg.growth == "gradient" and p.grad is not None
                 else torch.rand(p.shape, generator=self._gen).to(p.device)).flatten()
        new = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
        new[torch.topk(score, n).indices] = True
        return new.view_as(kept) & ~kept


def uncapped_erk_densities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """ERK solved once, without making over-full layers dense: densities above 1 (which a
    mask then clips, so the network holds fewer weights than its target)."""
    sizes = [math.prod(s) for s in shapes]
    scores = erk_scores(shapes)
    eps = density * sum(sizes) / sum(sc * n for sc, n in zip(scores, sizes, strict=True))
    return [eps * sc for sc in scores]


class UncappedERK(DynamicSparse):
    def densities_for(self, shapes):
        if self.cfg.distribution == "uniform":
            return super().densities_for(shapes)
        return uncapped_erk_densities(shapes, self.cfg.density)


class WrongDenominator(DynamicSparse):
    """R_s over every parameter of the model (biases, norms, dense ends), not over the
    weights of the sparse layers."""

    def start(self, run) -> None:
        self._all = sum(p.numel() for p in run.model.parameters())
        super().start(run)

    def rate(self) -> float:
        return sum(int(e.sum()) for e in self.ever) / self._all


KNOWN_BAD = {"momentum_kept": MomentumKept, "reselects_active": ReselectsActive,
             "uncapped_erk": UncappedERK, "wrong_denominator": WrongDenominator}

"""Wrong projections, as working drop-in rules for ``Sandwich(rule=...)``: the property tests
(``tests/supernet``) and ``nasvit.projection_rule`` must catch each one.
"""

from __future__ import annotations

import torch
from torch import Tensor


def wrong_sign_(g1: Tensor, g2: Tensor) -> Tensor:
    """Adds the conflicting component instead of removing it: g₁ ← g₁ + ⟨g₁, g₂⟩/‖g₂‖² · g₂,
    which doubles the conflict."""
    dot = torch.dot(g1.flatten(), g2.flatten())
    if dot < 0:
        g1.add_(dot / g2.flatten().dot(g2.flatten()) * g2)
    return dot < 0


def projects_g2_(g1: Tensor, g2: Tensor) -> Tensor:
    """Projects the subnets' gradient off the supernet's (g₂ ← g₂ − ⟨g₁, g₂⟩/‖g₁‖² · g₁),
    the roles swapped: the supernet wins, and g₂ is changed in place."""
    dot = torch.dot(g1.flatten(), g2.flatten())
    if dot < 0:
        g2.sub_(dot / g1.flatten().dot(g1.flatten()) * g1)
    return dot < 0


def always_projects_(g1: Tensor, g2: Tensor) -> Tensor:
    """Projects whatever the sign: removes g₁'s component along g₂ even when they agree."""
    n2 = g2.flatten().dot(g2.flatten())
    if n2 > 0:
        g1.sub_(torch.dot(g1.flatten(), g2.flatten()) / n2 * g2)
    return n2 > 0


KNOWN_BAD = {"wrong_sign": wrong_sign_, "projects_g2": projects_g2_,
             "always_projects": always_projects_}

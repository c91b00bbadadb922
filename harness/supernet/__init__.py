"""Weight-sharing supernets and gradient conflicts (NASViT, Gong et al., ICLR 2022), the study
and the claims' verdicts.

- ``sandwich``: the method: the sandwich rule with in-place distillation as a ``step_fn`` of
  the training loop, cos(g₁, g₂) per tensor and overall, the projection rule, BN recalibration
  of a subnet (the supernets themselves are models: ``harness.models.supernet``);
- ``known_bad``: wrong projections, for the property tests and ``nasvit.projection_rule``;
- ``study``: the law suite, the grid of sandwich and standalone runs, tables and plots;
- ``verdicts``: the claims' rules, pure functions of the runs tables.
"""

from harness.supernet.sandwich import (  # noqa: F401
    GRAD_NORM_FLOOR,
    Sandwich,
    SandwichConfig,
    combined_update,
    counted_cosines,
    project_conflict_,
    recalibrate_bn,
    summarize_conflicts,
)

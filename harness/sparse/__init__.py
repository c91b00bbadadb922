"""Dynamic sparse training and In-Time Over-Parameterization (Liu et al., ICML 2021), its
study and its claims' verdicts.

- ``masks``: the method: masks over conv/linear weights, ERK or uniform densities, SET/RigL
  prune-and-grow updates, the ITOP rate R_s, as a hook of the training loop (re-exported);
- ``known_bad``: the published implementation bugs, for the property tests to catch;
- ``study``: the grid of dense, static, SET and RigL runs, its tables and plots;
- ``verdicts``: the claims' rules, pure functions of the runs table.
"""

from harness.sparse.masks import (  # noqa: F401
    DISTRIBUTIONS,
    ENDS,
    GROWTH,
    DynamicSparse,
    SparseConfig,
    active_counts,
    erk_densities,
    layer_densities,
    maskable,
    prune_fraction,
)

"""Tucker-2 decomposition and pruning of convolutions (Kim et al. 2016; the compression talk's
YOLOv5 project) and, as it lands, its study, the deployment timings and the claims' verdicts.

- ``tucker``: the method: ``tucker2``, VBMF / energy ranks, the random-tensor layer error,
  ``decompose_model`` with its per-layer report, L1 pruning and the per-layer ratio search;
- ``deploy``: what compression buys at deployment (pruned sizes and time, depthwise vs
  standard conv, lower precision, decomposed networks), as ratios timed in one run.
"""

from harness.decompose.tucker import (  # noqa: F401
    DecomposeSettings,
    decomposable,
    decompose_model,
    energy_rank,
    l1_prune,
    largest_ratio,
    layer_error,
    reconstruct,
    tucker2,
    tucker2_factors,
    tucker2_ranks,
    vbmf_fit,
    vbmf_rank,
)

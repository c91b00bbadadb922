"""Model scaling (Dollár, Singh, Girshick, CVPR 2021), its studies and its claims' verdicts.

- ``strategies``: the method: d, w, r, dw, dr, wr, dwr and fast compound (dWr) scaling with
  pycls rounding, equal-flops scaling, and the complexity laws (re-exported here);
- ``study``: populations of scaled networks: complexity, runtime, accuracy, law checks;
- ``verdicts``: the trained claims' rules, pure functions of the measured numbers.
"""

from harness.scaling.strategies import (  # noqa: F401
    DWR_ALPHA,
    STRATEGIES,
    LawReport,
    check_complexity_laws,
    complexity_exponents,
    complexity_law_report,
    predicted_complexity_ratio,
    scale,
    scale_to_flops,
    scaling_exponents,
    scaling_factors,
)

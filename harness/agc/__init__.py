"""Adaptive gradient clipping (Brock et al. 2021), its study and its claims' verdicts.

- ``rule``: the method, ``clip_grads_``, and its invariant checker (re-exported here);
- ``known_bad``: published implementations that break the rule, for the suite to catch;
- ``study``: the training hook, the rule suite, the batch × method × λ grid, tables, timing;
- ``verdicts``: the claims' rules, pure functions of the runs table.
"""

from harness.agc.rule import (  # noqa: F401
    DEFAULT_EPS,
    check_agc_invariants,
    check_model_agc,
    classifier_of,
    clip_grads_,
    parameters_to_clip,
    random_agc_case,
    unitwise_norm,
)

"""Models built from configs and looked up by name (timm-style registry).

``build(name, **overrides)`` builds any registered model; ``list_models(pattern)`` lists them.
``config_of(name)``, ``build_config(cfg)`` and ``measure_config(cfg)`` work on configs (what
scaling changes); shared blocks live in ``layers``.
"""

from harness.models import anynet, effnet, nf_resnet, supernet, vgg  # noqa: F401  (registers models)
from harness.models._registry import build, list_models, register_model
from harness.models.configs import Config, analytic_complexity, build_config, config_of, measure_config

__all__ = ["Config", "analytic_complexity", "build", "build_config", "config_of", "list_models",
           "measure_config", "register_model"]

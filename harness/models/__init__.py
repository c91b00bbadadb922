"""Models built from configs and looked up by name (timm-style registry).

``build(name, **overrides)`` builds any registered model; ``list_models(pattern)`` lists them.
"""

from harness.models import anynet, effnet, nf_resnet  # noqa: F401  (registers models)
from harness.models._registry import build, list_models, register_model

__all__ = ["build", "list_models", "register_model"]

"""One lookup from a model's name or config to its network and its complexity.

Scaling works on configs (dataclasses), not on modules: ``config_of`` gives a registered
model's config, ``build_config`` builds any family's config, ``measure_config`` counts it on the
meta device (nothing is allocated) and ``analytic_complexity`` counts it in closed form, pycls
style. The model families below know nothing of scaling; scaling imports these.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn as nn

from harness.complexity import Complexity, measure
from harness.models import anynet, effnet
from harness.models.anynet import AnyNetConfig
from harness.models.effnet import EffNetConfig

Config = AnyNetConfig | EffNetConfig
# Each family's network class builds from its config and counts it in closed form
# (``Net.complexity(cfg)``, pycls style).
_NETWORKS: dict[type, type[anynet.AnyNet] | type[effnet.EffNet]] = {
    AnyNetConfig: anynet.AnyNet, EffNetConfig: effnet.EffNet}


def config_of(name: str, **overrides) -> Config:
    """The config of registered model ``name`` (AnyNet or EffNet family), with ``overrides``."""
    for family in (anynet, effnet):
        if name in family.MODEL_CFGS:
            return dataclasses.replace(family.MODEL_CFGS[name], **overrides)
    known = sorted([*anynet.MODEL_CFGS, *effnet.MODEL_CFGS])
    raise ValueError(f"no config for model {name!r}; known: {', '.join(known)}")


def build_config(cfg: Config) -> nn.Module:
    """Build the model for any family's config (on the current default device)."""
    return _network(cfg)(cfg)


@functools.lru_cache(maxsize=2048)
def measure_config(cfg: Config) -> Complexity:
    """Build ``cfg`` on ``meta`` and measure it at its resolution (hooks, nothing allocated).
    Cached: configs are frozen and a ``Complexity`` is immutable, and the same members are
    measured by several claims and their price."""
    with torch.device("meta"):
        model = build_config(cfg)
    return measure(model, cfg.resolution, cfg.in_channels)


def analytic_complexity(cfg: Config) -> Complexity:
    """pycls-style analytic complexity of any family's config (no model built)."""
    return _network(cfg).complexity(cfg)


def _network(cfg: Config) -> type[anynet.AnyNet] | type[effnet.EffNet]:
    try:
        return _NETWORKS[type(cfg)]
    except KeyError:
        raise TypeError(f"no model family for a {type(cfg).__name__}") from None

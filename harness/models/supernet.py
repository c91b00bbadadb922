"""Weight-sharing supernets: one set of weights, many subnets (AlphaNet/AttentiveNAS, NASViT).

Gong et al., "NASViT: Neural Architecture Search for Efficient Vision Transformers with
Gradient Conflict-Aware Supernet Training", ICLR 2022 (official code facebookresearch/NASViT,
built on AttentiveNAS); Wang et al., "AlphaNet", ICML 2021. claims/README.md section 5.

A ``SupernetConfig`` is a stem and a list of stages, each a ``StageSpace`` of choices:

- ``conv`` stages: residual blocks (3×3 conv-BN-ReLU-3×3 conv-BN, projection shortcut on the
  stage's first block), elastic depth and width;
- ``transformer`` stages (LeViT/NASViT spirit): a 3×3 conv-BN-GELU embedding that downsamples,
  then pre-norm transformer blocks on the tokens, elastic depth, width, heads (of ``head_dim``
  channels each) and MLP ratio. Each residual branch is scaled per channel by a *switchable*
  scale: one vector per width choice, the one of the active width used, initialised to
  ``layer_scale_init`` (small).

A subnet (``Arch``: one ``StageArch`` per stage) is active after ``Supernet.set_arch``: every
elastic layer uses the leading slice of its weights (the first channels, heads, hidden units,
blocks), so all subnets share them. ``extract`` gives a standalone network of one subnet with
the inherited weights (a supernet of a one-choice space: same code, same outputs), and
``build_subnet`` the same architecture freshly initialised, to train alone.

Complexity: ``subnet_complexity`` counts an extracted subnet on ``meta`` with the hook counter
(pycls conventions: conv and linear multiply-adds) and adds the attention's two matmuls per
block (q·kᵀ and attn·v, N²·heads·head_dim each), which are neither conv nor linear.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from harness.complexity import Complexity, measure
from harness.models._registry import register_model

__all__ = ["Arch", "MODEL_CFGS", "StageArch", "StageSpace", "Supernet", "SupernetConfig",
           "build_subnet", "extract", "largest", "middle", "random_arch", "restrict", "sample",
           "smallest", "subnet_complexity", "validate"]

KINDS = ("conv", "transformer")
SPECS = ("largest", "smallest", "random")


@dataclass(frozen=True)
class StageSpace:
    """One stage's choices; each tuple ascending. ``heads``/``mlp_ratios``: transformer only."""

    kind: str  # "conv" | "transformer"
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    heads: tuple[int, ...] = ()
    mlp_ratios: tuple[float, ...] = ()
    stride: int = 2  # of the stage's first block (conv) or embedding (transformer)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"stage kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        choices = [("widths", self.widths), ("depths", self.depths)]
        if self.kind == "transformer":
            choices += [("heads", self.heads), ("mlp_ratios", self.mlp_ratios)]
        elif self.heads or self.mlp_ratios:
            raise ValueError("a conv stage has no heads or MLP ratios")
        for name, values in choices:
            if not values or min(values) <= 0 or list(values) != sorted(set(values)):
                raise ValueError(f"{self.kind} stage {name}={values!r}: need distinct "
                                 f"positive choices in ascending order")
        if self.stride not in (1, 2):
            raise ValueError(f"stride={self.stride}: must be 1 or 2")


@dataclass(frozen=True)
class SupernetConfig:
    stem: int  # width of the (fixed) 3×3 stem conv
    stages: tuple[StageSpace, ...]
    num_classes: int = 10
    in_channels: int = 3
    resolution: int = 32
    stem_stride: int = 1
    head_dim: int = 8  # channels per attention head
    layer_scale_init: float = 0.1  # the switchable scales start here (small)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a supernet needs at least one stage")
        if self.stem <= 0 or self.head_dim <= 0 or self.resolution < 1:
            raise ValueError(f"stem={self.stem}, head_dim={self.head_dim}, resolution="
                             f"{self.resolution}: must be positive")


@dataclass(frozen=True)
class StageArch:
    """One stage of a subnet. ``heads``/``mlp_ratio`` are 0 for a conv stage."""

    depth: int
    width: int
    heads: int = 0
    mlp_ratio: float = 0.0


Arch = tuple[StageArch, ...]


# --------------------------------------------------------------------------- the space


def _pick(space: StageSpace, i: int) -> StageArch:
    """The stage's i-th choice of every dimension (i = 0 smallest, -1 largest)."""
    if space.kind == "conv":
        return StageArch(space.depths[i], space.widths[i])
    return StageArch(space.depths[i], space.widths[i], space.heads[i], space.mlp_ratios[i])


def largest(cfg: SupernetConfig) -> Arch:
    return tuple(_pick(s, -1) for s in cfg.stages)


def smallest(cfg: SupernetConfig) -> Arch:
    return tuple(_pick(s, 0) for s in cfg.stages)


def middle(cfg: SupernetConfig) -> Arch:
    """Each dimension's middle choice (the lower of two middles): a mid-size subnet."""
    def mid(values):
        return values[(len(values) - 1) // 2]

    return tuple(StageArch(mid(s.depths), mid(s.widths), mid(s.heads) if s.heads else 0,
                           mid(s.mlp_ratios) if s.mlp_ratios else 0.0) for s in cfg.stages)


def random_arch(cfg: SupernetConfig, generator: torch.Generator) -> Arch:
    """Every dimension of every stage drawn uniformly from its choices (seeded)."""
    def draw(values):
        return values[int(torch.randint(len(values), (), generator=generator))]

    return tuple(StageArch(draw(s.depths), draw(s.widths), draw(s.heads) if s.heads else 0,
                           draw(s.mlp_ratios) if s.mlp_ratios else 0.0) for s in cfg.stages)


def sample(cfg: SupernetConfig, spec: str, generator: torch.Generator | None = None) -> Arch:
    """The subnet ``spec`` names: "largest", "smallest" or "random" (needs ``generator``)."""
    if spec == "largest":
        return largest(cfg)
    if spec == "smallest":
        return smallest(cfg)
    if spec == "random":
        if generator is None:
            raise ValueError("a random subnet needs a seeded torch.Generator")
        return random_arch(cfg, generator)
    raise ValueError(f"unknown subnet spec {spec!r}; use one of {', '.join(SPECS)}")


def validate(cfg: SupernetConfig, arch: Arch) -> Arch:
    """``arch`` when it lies in ``cfg``'s space; else a ValueError naming what is outside."""
    arch = tuple(arch)
    if len(arch) != len(cfg.stages):
        raise ValueError(f"subnet has {len(arch)} stages, the supernet {len(cfg.stages)}")
    for i, (a, s) in enumerate(zip(arch, cfg.stages, strict=True)):
        if not isinstance(a, StageArch):
            raise ValueError(f"stage {i}: {a!r} is not a StageArch")
        fields = [("depth", a.depth, s.depths), ("width", a.width, s.widths)]
        if s.kind == "transformer":
            fields += [("heads", a.heads, s.heads), ("mlp_ratio", a.mlp_ratio, s.mlp_ratios)]
        elif a.heads or a.mlp_ratio:
            raise ValueError(f"stage {i} is a conv stage: heads={a.heads}, mlp_ratio="
                             f"{a.mlp_ratio} must be 0")
        for name, value, choices in fields:
            if value not in choices:
                raise ValueError(f"stage {i} ({s.kind}): {name}={value!r} is outside the "
                                 f"supernet's choices {choices}")
    return arch


def restrict(cfg: SupernetConfig, arch: Arch) -> SupernetConfig:
    """The one-choice space of ``arch``: its supernet is the standalone subnet."""
    validate(cfg, arch)
    stages = tuple(replace(s, widths=(a.width,), depths=(a.depth,),
                           heads=(a.heads,) if s.heads else (),
                           mlp_ratios=(a.mlp_ratio,) if s.mlp_ratios else ())
                   for s, a in zip(cfg.stages, arch, strict=True))
    return replace(cfg, stages=stages)


# ----------------------------------------------------------------------- elastic layers
#
# Subclasses of the torch layers, so the complexity counter sees them; each uses the leading
# slice of its weights: ``active_out`` outputs, as many inputs as the input has.


class ElasticConv2d(nn.Conv2d):
    def __init__(self, w_in: int, w_out: int, k: int, stride: int = 1) -> None:
        super().__init__(w_in, w_out, k, stride=stride, padding=(k - 1) // 2, bias=False)
        self.active_out = w_out

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight[:self.active_out, :x.shape[1]]
        return F.conv2d(x, w, None, self.stride, self.padding)


class ElasticBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average (BN recalibration)
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c],
                            self.bias[:c], self.training, momentum, self.eps)


class ElasticLinear(nn.Linear):
    def __init__(self, w_in: int, w_out: int, bias: bool = True) -> None:
        super().__init__(w_in, w_out, bias=bias)
        self.active_out = w_out

    def forward(self, x: Tensor) -> Tensor:
        b = self.bias[:self.active_out] if self.bias is not None else None
        return F.linear(x, self.weight[:self.active_out, :x.shape[-1]], b)


class ElasticLayerNorm(nn.LayerNorm):
    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[-1]
        return F.layer_norm(x, (c,), self.weight[:c], self.bias[:c], self.eps)


class SwitchableScale(nn.Module):
    """A per-channel scale for each width choice; the active width's one is used."""

    def __init__(self, widths: tuple[int, ...], init: float) -> None:
        super().__init__()
        self.scales = nn.ParameterDict({f"w{w}": nn.Parameter(torch.full((w,), init))
                                        for w in widths})
        self.active = f"w{widths[-1]}"

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scales[self.active]


# ------------------------------------------------------------------------------ blocks


class ResBlock(nn.Module):
    def __init__(self, w_in: int, w_out: int, stride: int, project: bool) -> None:
        super().__init__()
        self.conv1 = ElasticConv2d(w_in, w_out, 3, stride)
        self.bn1 = ElasticBatchNorm2d(w_out)
        self.conv2 = ElasticConv2d(w_out, w_out, 3)
        self.bn2 = ElasticBatchNorm2d(w_out)
        self.proj = ElasticConv2d(w_in, w_out, 1, stride) if project else None
        self.proj_bn = ElasticBatchNorm2d(w_out) if project else None

    def set_width(self, width: int) -> None:
        for conv in (self.conv1, self.conv2, self.proj):
            if conv is not None:
                conv.active_out = width

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        skip = self.proj_bn(self.proj(x)) if self.proj is not None else x
        return F.relu(out + skip)


class TransformerBlock(nn.Module):
    """Pre-norm: x + s₁ ⊙ attn(LN x), then x + s₂ ⊙ MLP(LN x); s₁, s₂ switchable scales."""

    def __init__(self, space: StageSpace, head_dim: int, layer_scale_init: float) -> None:
        super().__init__()
        w, qkv = space.widths[-1], space.heads[-1] * head_dim
        hidden = round(space.widths[-1] * space.mlp_ratios[-1])
        self.head_dim = head_dim
        self.norm1 = ElasticLayerNorm(w)
        self.q, self.k, self.v = (ElasticLinear(w, qkv) for _ in range(3))
        self.proj = ElasticLinear(qkv, w)
        self.scale1 = SwitchableScale(space.widths, layer_scale_init)
        self.norm2 = ElasticLayerNorm(w)
        self.fc1 = ElasticLinear(w, hidden)
        self.fc2 = ElasticLinear(hidden, w)
        self.scale2 = SwitchableScale(space.widths, layer_scale_init)
        self.heads = space.heads[-1]

    def set_arch(self, a: StageArch) -> None:
        self.heads = a.heads
        for lin in (self.q, self.k, self.v):
            lin.active_out = a.heads * self.head_dim
        self.proj.active_out = self.fc2.active_out = a.width
        self.fc1.active_out = round(a.width * a.mlp_ratio)
        self.scale1.active = self.scale2.active = f"w{a.width}"

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        h = self.norm1(x)
        q, k, v = (lin(h).view(b, n, self.heads, self.head_dim).transpose(1, 2)
                   for lin in (self.q, self.k, self.v))
        attn = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(-1)
        x = x + self.scale1(self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1)))
        return x + self.scale2(self.fc2(F.gelu(self.fc1(self.norm2(x)))))


class ConvStage(nn.Module):
    def __init__(self, w_in: int, space: StageSpace) -> None:
        super().__init__()
        w = space.widths[-1]
        self.blocks = nn.ModuleList(
            ResBlock(w_in if i == 0 else w, w, space.stride if i == 0 else 1, project=i == 0)
            for i in range(space.depths[-1]))
        self.depth = len(self.blocks)

    def set_arch(self, a: StageArch) -> None:
        self.depth = a.depth
        for blk in self.blocks:
            blk.set_width(a.width)

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks[:self.depth]:
            x = blk(x)
        return x


class TransformerStage(nn.Module):
    def __init__(self, w_in: int, space: StageSpace, head_dim: int, scale_init: float) -> None:
        super().__init__()
        self.embed = ElasticConv2d(w_in, space.widths[-1], 3, space.stride)
        self.embed_bn = ElasticBatchNorm2d(space.widths[-1])
        self.blocks = nn.ModuleList(TransformerBlock(space, head_dim, scale_init)
                                    for _ in range(space.depths[-1]))
        self.depth = len(self.blocks)

    def set_arch(self, a: StageArch) -> None:
        self.embed.active_out = a.width
        self.depth = a.depth
        for blk in self.blocks:
            blk.set_arch(a)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.embed_bn(self.embed(x)))
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        for blk in self.blocks[:self.depth]:
            t = blk(t)
        return t.transpose(1, 2).reshape(b, c, h, w)


# ----------------------------------------------------------------------------- the net


class Supernet(nn.Module):
    def __init__(self, cfg: SupernetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = ElasticConv2d(cfg.in_channels, cfg.stem, 3, cfg.stem_stride)
        self.stem_bn = ElasticBatchNorm2d(cfg.stem)
        stages, w_in = [], cfg.stem
        for s in cfg.stages:
            stages.append(ConvStage(w_in, s) if s.kind == "conv"
                          else TransformerStage(w_in, s, cfg.head_dim, cfg.layer_scale_init))
            w_in = s.widths[-1]
        self.stages = nn.ModuleList(stages)
        self.head_norm = ElasticLayerNorm(w_in) if cfg.stages[-1].kind == "transformer" else None
        self.fc = ElasticLinear(w_in, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        self.arch: Arch = largest(cfg)

    def set_arch(self, arch: Arch) -> None:
        """Make ``arch`` the active subnet (checked against the space)."""
        self.arch = validate(self.cfg, arch)
        for stage, a in zip(self.stages, self.arch, strict=True):
            stage.set_arch(a)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        for stage in self.stages:
            x = stage(x)
        x = x.mean((2, 3))
        if self.head_norm is not None:
            x = self.head_norm(x)
        return self.fc(x)


def extract(net: Supernet, arch: Arch) -> Supernet:
    """A standalone network of subnet ``arch`` with the weights (and BN statistics) it
    inherits from ``net``: the leading slice of every shared tensor."""
    sub = Supernet(restrict(net.cfg, arch)).to(next(net.parameters()).device)
    full = net.state_dict()
    state = {}
    for name, t in sub.state_dict().items():
        src = full[name]
        state[name] = src[tuple(slice(0, n) for n in t.shape)].clone() if t.dim() else src.clone()
    sub.load_state_dict(state)
    return sub


def subnet_complexity(cfg: SupernetConfig, arch: Arch) -> Complexity:
    """Flops (multiply-adds), params and acts of subnet ``arch``: the hook counter on the
    extracted subnet (built on ``meta``) plus the attention matmuls."""
    one = restrict(cfg, arch)
    with torch.device("meta"):
        net = Supernet(one)
    cx = measure(net, cfg.resolution, cfg.in_channels)
    return dataclasses.replace(cx, flops=cx.flops + attention_flops(cfg, arch))


def attention_flops(cfg: SupernetConfig, arch: Arch) -> int:
    """q·kᵀ and attn·v per transformer block: 2·N²·heads·head_dim multiply-adds (N tokens)."""
    h = (cfg.resolution - 1) // cfg.stem_stride + 1
    total = 0
    for s, a in zip(cfg.stages, arch, strict=True):
        h = (h - 1) // s.stride + 1
        if s.kind == "transformer":
            total += a.depth * 2 * (h * h) ** 2 * a.heads * cfg.head_dim
    return total


# ------------------------------------------------------------------------ the registry

MODEL_CFGS = {
    # Smoke, 16 px: a CNN (three residual stages) and a hybrid (one conv stage, then two
    # transformer stages on 8×8 and 4×4 tokens) of similar size (tests/models pin it).
    "cnn_supernet_tiny": SupernetConfig(stem=8, resolution=16, stages=(
        StageSpace("conv", widths=(8, 12), depths=(1, 2), stride=1),
        StageSpace("conv", widths=(16, 24, 32), depths=(1, 2)),
        StageSpace("conv", widths=(24, 32, 40), depths=(1, 2)))),
    "hybrid_supernet_tiny": SupernetConfig(stem=8, resolution=16, stages=(
        StageSpace("conv", widths=(8, 12), depths=(1, 2), stride=1),
        StageSpace("transformer", widths=(16, 24, 32), depths=(1, 2), heads=(2, 3, 4),
                   mlp_ratios=(1.0, 2.0, 3.0)),
        StageSpace("transformer", widths=(24, 32, 48), depths=(1, 2), heads=(3, 4, 6),
                   mlp_ratios=(1.0, 2.0, 3.0)))),
    # Full, CIFAR 32 px.
    "cnn_supernet_cifar": SupernetConfig(stem=24, resolution=32, stages=(
        StageSpace("conv", widths=(24, 32), depths=(1, 2), stride=1),
        StageSpace("conv", widths=(32, 48, 64), depths=(1, 2, 3)),
        StageSpace("conv", widths=(64, 96, 128), depths=(1, 2, 3)),
        StageSpace("conv", widths=(96, 128, 144), depths=(1, 2)))),
    "hybrid_supernet_cifar": SupernetConfig(stem=24, resolution=32, head_dim=16, stages=(
        StageSpace("conv", widths=(24, 32), depths=(1, 2), stride=1),
        StageSpace("conv", widths=(32, 48, 64), depths=(1, 2, 3)),
        StageSpace("transformer", widths=(64, 96, 128), depths=(1, 2, 3), heads=(2, 3, 4),
                   mlp_ratios=(1.0, 2.0, 3.0)),
        StageSpace("transformer", widths=(128, 160, 192), depths=(1, 2), heads=(4, 5, 6),
                   mlp_ratios=(1.0, 2.0, 3.0)))),
}


def _create(name: str, **overrides) -> Supernet:
    return Supernet(replace(MODEL_CFGS[name], **overrides))


def build_subnet(name: str, arch: Arch, **overrides) -> Supernet:
    """Subnet ``arch`` of registered supernet ``name`` as a standalone network, freshly
    initialised (to train alone)."""
    return Supernet(restrict(replace(MODEL_CFGS[name], **overrides), arch))


@register_model
def cnn_supernet_tiny(**overrides) -> Supernet:
    """A CNN supernet (elastic depth and width) for CPU smoke runs, 16 px."""
    return _create("cnn_supernet_tiny", **overrides)


@register_model
def hybrid_supernet_tiny(**overrides) -> Supernet:
    """A conv + transformer supernet (elastic depth, width, heads, MLP ratio), 16 px."""
    return _create("hybrid_supernet_tiny", **overrides)


@register_model
def cnn_supernet_cifar(**overrides) -> Supernet:
    """A CNN supernet for CIFAR (32 px)."""
    return _create("cnn_supernet_cifar", **overrides)


@register_model
def hybrid_supernet_cifar(**overrides) -> Supernet:
    """A conv + transformer supernet for CIFAR (32 px)."""
    return _create("hybrid_supernet_cifar", **overrides)

"""Model scaling strategies of Dollár, Singh & Girshick, "Fast and Accurate Model Scaling" (2021).

https://arxiv.org/abs/2103.06877; rounding as in pycls ``pycls/models/scaler.py``.

Scaling a network's flops by ``s`` multiplies depth d, width w and resolution r by

    d' = s^e_d · d,   w' = s^(e_w/2) · w,   r' = s^(e_r/2) · r,   e_d + e_w + e_r = 1,

so that f ∝ d·w²·r² grows by s. Per conv layer p ∝ d·w² and a ∝ d·w·r², hence

    f ∝ s,   p ∝ s^(e_d + e_w),   a ∝ s^(e_d + e_w/2 + e_r).

Strategies: simple "d", "w", "r"; compound "dw", "dr", "wr", "dwr" (equal exponents); and fast
compound scaling, e_d = e_r = (1-α)/2, e_w = α, as "fast" with an explicit α or "dWr" (α = 0.8).
Fast scaling gives p ∝ s^((1+α)/2) and a ∝ s^((2-α)/2): α = 1 is "w", α = 0 is "dr",
α = 1/3 is "dwr".

Worked example (the paper's; tested): RegNetY-4GF (depths [2, 6, 12, 2], widths
[128, 192, 512, 1088], group width 64, 224 px) scaled 4× with dWr gives d×4^0.1, w×4^0.4,
r×4^0.05 → depths [2, 7, 14, 2], widths [224, 336, 896, 1904], group width 112, 240 px:
15.61 GF, 68.1M params, 26.5M acts (base: 3.97 GF, 20.6M, 12.3M).

``check_complexity_laws(base, scale(base, s, strategy), s, strategy)`` returns the ways a
scaled network breaks these laws beyond what pycls's rounding explains ([] if none);
``complexity_law_report`` gives the numbers behind that verdict.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import numpy as np

from harness.complexity import Complexity
from harness.models.anynet import AnyNetConfig
from harness.models.configs import Config, measure_config
from harness.models.effnet import EffNetConfig
from harness.models.layers import adjust_block_compatibility

__all__ = [
    "DWR_ALPHA",
    "STRATEGIES",
    "LawReport",
    "check_complexity_laws",
    "complexity_exponents",
    "complexity_law_report",
    "predicted_complexity_ratio",
    "scale",
    "scaling_exponents",
    "scaling_factors",
]


DWR_ALPHA = 0.8  # the paper's recommended fast compound scaling, "dWr"
# Every strategy usable without an alpha; "fast" (needs alpha) is accepted too.
STRATEGIES: tuple[str, ...] = ("d", "w", "r", "dw", "dr", "wr", "dwr", "dWr")
_ALL = (*STRATEGIES, "fast")


# --------------------------------------- validation --------------------------------------- #


def _check(strategy: str, s: float | None = None, alpha: float | None = None) -> float | None:
    """Validate arguments; return the effective alpha (None for non-fast strategies)."""
    if strategy not in _ALL:
        raise ValueError(f"unknown scaling strategy {strategy!r}; allowed: {', '.join(_ALL)}")
    if s is not None and (
        isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s) or s <= 0
    ):
        raise ValueError(f"scale factor s must be a finite number > 0, got {s!r}")
    if strategy == "fast":
        if alpha is None:
            raise ValueError("strategy 'fast' needs alpha in [0, 1] (e.g. alpha=0.8 is 'dWr')")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        return float(alpha)
    if alpha is not None:
        raise ValueError(
            f"alpha={alpha!r} given with strategy {strategy!r}; only 'fast' takes alpha "
            f"('dWr' fixes alpha={DWR_ALPHA})"
        )
    return DWR_ALPHA if strategy == "dWr" else None


# --------------------------------------- exponents --------------------------------------- #


def scaling_exponents(strategy: str, alpha: float | None = None) -> tuple[float, float, float]:
    """(e_d, e_w, e_r) with e_d + e_w + e_r = 1: d' = s^e_d·d, w' = s^(e_w/2)·w, r' = s^(e_r/2)·r.

    >>> scaling_exponents("dwr")
    (0.3333333333333333, 0.3333333333333333, 0.3333333333333333)
    >>> scaling_exponents("fast", alpha=0.8) == scaling_exponents("dWr")
    True
    """
    a = _check(strategy, alpha=alpha)
    if a is not None:  # fast compound scaling
        return ((1 - a) / 2, a, (1 - a) / 2)
    dims = {c: 1.0 if c in strategy else 0.0 for c in "dwr"}
    n = sum(dims.values())
    return (dims["d"] / n, dims["w"] / n, dims["r"] / n)


def scaling_factors(
    strategy: str, s: float, alpha: float | None = None
) -> tuple[float, float, float]:
    """Unrounded multipliers (s_d, s_w, s_r) of depth, width and resolution; s_d·s_w²·s_r² = s."""
    _check(strategy, s, alpha)
    e_d, e_w, e_r = scaling_exponents(strategy, alpha)
    return (s**e_d, s ** (e_w / 2), s ** (e_r / 2))


def complexity_exponents(strategy: str, alpha: float | None = None) -> tuple[float, float, float]:
    """(e_f, e_p, e_a) of the closed forms f ∝ s^e_f, p ∝ s^e_p, a ∝ s^e_a.

    Written out from the closed forms (claims/README.md §1), not derived from ``scaling_exponents``, so
    the law check stays an independent test of the scaler.
    """
    a = _check(strategy, alpha=alpha)
    if a is not None:
        return (1.0, (1 + a) / 2, (2 - a) / 2)
    return {
        "d": (1.0, 1.0, 1.0),
        "w": (1.0, 1.0, 0.5),
        "r": (1.0, 0.0, 1.0),
        "dw": (1.0, 1.0, 0.75),
        "dr": (1.0, 0.5, 1.0),
        "wr": (1.0, 0.5, 0.75),
        "dwr": (1.0, 2 / 3, 5 / 6),
    }[strategy]


def predicted_complexity_ratio(
    strategy: str, s: float, alpha: float | None = None
) -> tuple[float, float, float]:
    """Closed-form (flops, params, acts) ratios of a network scaled by s: (s, s^e_p, s^e_a)."""
    _check(strategy, s, alpha)
    return tuple(s**e for e in complexity_exponents(strategy, alpha))


# ---------------------------------------- rounding ---------------------------------------- #


def _round_width(w: float) -> int:
    # Multiples of 8 keep channel counts friendly to vectorised kernels (pycls's choice).
    return max(1, round(w / 8)) * 8


def _round_group(g: float) -> int:
    g = max(1, round(g))
    return g if g <= 2 else 4 if g <= 5 else round(g / 8) * 8


def scale(
    config: Config,
    s: float,
    strategy: str,
    alpha: float | None = None,
    *,
    scale_groups: bool = True,
) -> Config:
    """A copy of ``config`` with flops scaled by about ``s`` using ``strategy``.

    Rounding as pycls: depths max(1, round(d·s_d)); stage widths (and EffNet stem/head widths;
    pycls leaves the AnyNet stem alone) max(1, round(w·s_w/8))·8; group widths g·s_w rounded
    (kept if ≤ 2, 4 if 3–5, else a multiple of 8) then made compatible with the widths;
    resolution round(r·s_r/4)·4. Group widths scale with w unless ``scale_groups=False``
    (the law check assumes they do); EffNet's depthwise convs keep g = 1.

    >>> from harness.models import config_of
    >>> c = scale(config_of("regnety_4gf"), 4, "dWr")
    >>> c.depths, c.widths, c.group_widths[0], c.resolution
    ((2, 7, 14, 2), (224, 336, 896, 1904), 112, 240)
    """
    s_d, s_w, s_r = scaling_factors(strategy, s, alpha)
    ds = [max(1, round(d * s_d)) for d in config.depths]
    ws = [_round_width(w * s_w) for w in config.widths]
    res = max(4, round(config.resolution * s_r / 4) * 4)  # max: keep at least one 4 px input
    if isinstance(config, AnyNetConfig):
        s_g = s_w if scale_groups else 1.0
        gs = [_round_group(g * s_g) for g in config.group_widths]
        ws, bs, gs = adjust_block_compatibility(ws, config.bottleneck_ratios, gs)
        return dataclasses.replace(
            config,
            depths=tuple(ds),
            widths=tuple(ws),
            group_widths=tuple(gs),
            bottleneck_ratios=tuple(bs),
            resolution=res,  # pycls keeps the AnyNet stem width (the worked example needs it)
        )
    if isinstance(config, EffNetConfig):
        # Depthwise convs have group width 1 whatever the width; only w·exp_ratio must be whole.
        ws, _, _ = adjust_block_compatibility(ws, config.exp_ratios, [1] * len(ws))
        return dataclasses.replace(
            config,
            depths=tuple(ds),
            widths=tuple(ws),
            stem_width=_round_width(config.stem_width * s_w),
            head_width=_round_width(config.head_width * s_w),
            resolution=res,
        )
    raise TypeError(f"cannot scale a {type(config).__name__}; expected AnyNetConfig/EffNetConfig")


# ---------------------------------------- configs ---------------------------------------- #


def scale_to_flops(base: Config, s: float, strategy: str, alpha: float | None = None,
                   steps: int = 24) -> Config:
    """``base`` scaled by ``strategy`` to the flops nearest ``s`` times its own.

    Rounding (widths, groups, depths, resolution) moves a small network's flops far from the
    nominal ``s`` (e.g. dWr of a 3 MF net at s=4 lands at 2.6x), so comparing strategies at
    "the same s" would compare unequal budgets. This searches the nominal factor over a
    geometric grid from s/2 to 2s (``steps`` points per octave, ``s`` itself included) and keeps
    the rounded network whose flops ratio is closest to ``s`` in log distance; ties go to the
    nominal factor nearest ``s``. Never further from ``s`` than ``scale(base, s, ...)``.
    """
    target = math.log(s)
    base_flops = measure_config(base).flops
    best, best_key = base, math.inf
    for i in sorted(range(-steps, steps + 1), key=abs):
        cfg = scale(base, s * 2 ** (i / steps), strategy, alpha)
        key = abs(math.log(measure_config(cfg).flops / base_flops) - target)
        if key < best_key - 1e-12:
            best, best_key = cfg, key
    return best


# ------------------------------------ checking the laws ------------------------------------ #
#
# The closed forms hold per conv layer: a layer repeated n times at width w and resolution r
# costs f = n·k²·c_in·c_out·h·w/groups with c ∝ w and h ∝ r. A whole network also has layers
# whose count or width does not scale (the stem, the first block of each stage, the
# classifier), so its totals follow s^e only approximately. The check therefore has two steps,
# both independent of ``scaling_exponents`` (exponents come from ``complexity_exponents``):
#
# 1. every scaled size (stage depth, stage width, group width, EffNet stem/head width,
#    resolution) lies within pycls's rounding error of its ideal value d·s^e_d, w·s^(e_w/2),
#    r·s^(e_r/2);
# 2. the measured totals lie between the per-layer law evaluated at the lower and at the upper
#    ends of those intervals. Every term of the law is non-decreasing in every size, so this
#    band is exactly what rounding can explain.
#
# pycls's rules put every size on a lattice near its ideal value x (no tie-breaking assumed):
#   depth  max(1, round(x))          an integer in [x - 1/2, x + 1/2], at least 1
#   width  max(1, round(x/8))·8      a multiple of 8 in [x - 4, x + 4], at least 8; then block
#          compatibility rounds v = int(w·b) to a multiple of m = g (lcm(g, b) for integer
#          b > 1), at least m, and sets w = int(v/b); m is the scaled net's own group width
#   group  g1 = max(1, round(x)); kept if <= 2, 4 if 3-5, else a multiple of 8 in
#          [g1 - 4, g1 + 4]; then clipped to w·b
#   res    round(x/4)·4              a multiple of 4 in [x - 2, x + 2]; a map after total
#          stride S has side ceil(r/S) (nested 'same'-padded strides compose to one ceil)
# The intervals below are the lowest and highest lattice points these rules allow.


def _lattice(x: float, q: int, least: int) -> tuple[int, int]:
    """Lowest and highest multiple of ``q`` within q/2 of ``x``, each at least ``least``."""
    eps = 1e-9 * max(1.0, abs(x))  # x may differ from the scaler's by an ulp; ties allow both
    lo = q * math.ceil((x - eps - q / 2) / q)
    hi = q * math.floor((x + eps + q / 2) / q)
    return max(least, lo), max(least, hi)


def _group_range(x: float) -> tuple[int, int]:
    outs = []
    for g1 in _lattice(x, 1, 1):
        if g1 <= 2:
            outs.append(g1)
        elif g1 <= 5:
            outs.append(4)
        else:
            outs += _lattice(g1, 8, 0)
    return min(outs), max(outs)


def _width_range(x: float, b: float, m: int) -> tuple[int, int]:
    w_lo, w_hi = _lattice(x, 8, 8)
    v_lo, v_hi = int(max(1, w_lo * b)), int(max(1, w_hi * b))
    k_lo, k_hi = _lattice(v_lo / m, 1, 1)[0], _lattice(v_hi / m, 1, 1)[1]
    return int(k_lo * m / b), int(k_hi * m / b)


@dataclasses.dataclass(frozen=True)
class _Sizes:
    """Real-valued sizes at which the per-layer law is evaluated."""

    depths: tuple[float, ...]
    widths: tuple[float, ...]
    groups: tuple[float, ...]  # AnyNet group widths (unused for EffNet)
    stem: float
    head: float
    res: float
    ideal: bool = False  # True: nothing rounded (derived sizes, map sides r/S)

    def side(self, stride: int) -> float:
        return self.res / stride if self.ideal else float(math.ceil(self.res / stride))

    def derived(self, x: float, floor: bool) -> float:
        """A size the models derive as round(x) (int(x) when ``floor``); both are monotone."""
        return x if self.ideal else float(int(x) if floor else int(round(x)))


def _law_totals(cfg: Config, q: _Sizes) -> tuple[float, float, float]:
    """Per-layer law summed over the network of ``cfg``'s structure at sizes ``q``.

    At integer sizes this is the pycls count of the network itself. Every term is
    non-decreasing in every size, so lower/upper sizes give lower/upper totals.
    """
    tot = [0.0, 0.0, 0.0]

    def conv(k, c_in, c_out, h, *, per_group=None, bias=False, n=1.0):
        cpg = c_in if per_group is None else per_group  # c_in / groups
        tot[0] += n * (k * k * cpg * c_out * h * h + (c_out * h * h if bias else 0))
        tot[1] += n * (k * k * cpg * c_out + (c_out if bias else 0))
        tot[2] += n * c_out * h * h

    def bn(c, n=1.0):
        tot[1] += n * 2 * c

    def se(w, w_se, n):
        if w_se > 0:
            conv(1, w, w_se, 1, bias=True, n=n)
            conv(1, w_se, w, 1, bias=True, n=n)

    anynet_cfg = isinstance(cfg, AnyNetConfig)
    stem_k = 7 if anynet_cfg and cfg.stem_type == "resnet" else 3
    conv(stem_k, cfg.in_channels, q.stem, q.side(2))
    bn(q.stem)
    stride = 2
    if anynet_cfg and cfg.stem_type == "resnet":
        stride = 4
        tot[2] += q.stem * q.side(4) ** 2  # max pool output
    w_in, w_in_int = q.stem, cfg.stem_width
    for i in range(len(cfg.depths)):
        d, w, st = q.depths[i], q.widths[i], cfg.strides[i]
        h_in, h_out = q.side(stride), q.side(stride * st)
        stride *= st
        # The first block exists at any depth; the other d - 1 blocks are identical.
        blocks = [(1.0, w_in, h_in, w_in_int != cfg.widths[i] or st != 1), (d - 1, w, h_out, False)]
        for n, c_in, h_a, proj in blocks:
            if n <= 0:
                continue
            if anynet_cfg:
                w_b = q.derived(w * cfg.bottleneck_ratios[i], floor=False)
                if proj:
                    conv(1, c_in, w, h_out, n=n)
                    bn(w, n)
                conv(1, c_in, w_b, h_a, n=n)
                bn(w_b, n)
                conv(3, w_b, w_b, h_out, per_group=min(q.groups[i], w_b), n=n)
                bn(w_b, n)
                se(w_b, q.derived(c_in * cfg.se_ratio, floor=False), n)
                conv(1, w_b, w, h_out, n=n)
                bn(w, n)
            else:
                e, k = cfg.exp_ratios[i], cfg.kernels[i]
                w_exp = q.derived(c_in * e, floor=True) if e != 1 else c_in
                if e != 1:
                    conv(1, c_in, w_exp, h_a, n=n)
                    bn(w_exp, n)
                conv(k, w_exp, w_exp, h_out, per_group=1, n=n)
                bn(w_exp, n)
                se(w_exp, q.derived(c_in * cfg.se_ratio, floor=True), n)
                conv(1, w_exp, w, h_out, n=n)
                bn(w, n)
        w_in, w_in_int = w, cfg.widths[i]
    if q.head > 0:
        conv(1, w_in, q.head, q.side(stride))
        bn(q.head)
        w_in = q.head
    tot[0] += w_in * cfg.num_classes + cfg.num_classes
    tot[1] += w_in * cfg.num_classes + cfg.num_classes
    tot[2] += cfg.num_classes
    return (tot[0], tot[1], tot[2])


@dataclasses.dataclass(frozen=True)
class _Bound:
    name: str
    ideal: float
    lo: float
    hi: float
    actual: int


def _size_bounds(base: Config, scaled: Config, s: float, exps) -> list[_Bound]:
    """Ideal value and rounding interval of every size that scaling changes."""
    e_d, e_w, e_r = exps
    s_d, s_w, s_r = s**e_d, s ** (e_w / 2), s ** (e_r / 2)
    out: list[_Bound] = []
    is_anynet = isinstance(base, AnyNetConfig)
    for i, (d, w) in enumerate(zip(base.depths, base.widths, strict=True)):
        out.append(_Bound(f"depth[{i}]", d * s_d, *_lattice(d * s_d, 1, 1), scaled.depths[i]))
        if is_anynet:
            b, g = scaled.bottleneck_ratios[i], scaled.group_widths[i]
            m = int(np.lcm(g, int(b))) if b > 1 else g
            x = base.group_widths[i] * s_w
            g_lo, g_hi = _group_range(x)
            g_lo = min(g_lo, int(max(1, _lattice(w * s_w, 8, 8)[0] * b)))  # clipped to w·b
            out.append(_Bound(f"group_width[{i}]", x, g_lo, g_hi, g))
        else:
            b = scaled.exp_ratios[i]
            m = int(b) if b > 1 else 1  # lcm(1, b): depthwise convs have group width 1
        out.append(_Bound(f"width[{i}]", w * s_w, *_width_range(w * s_w, b, m), scaled.widths[i]))
    for f in ("stem_width", "head_width"):
        x = getattr(base, f)
        if is_anynet:  # pycls scales neither the AnyNet stem nor its head conv
            out.append(_Bound(f, x, x, x, getattr(scaled, f)))
        else:
            out.append(_Bound(f, x * s_w, *_lattice(x * s_w, 8, 8), getattr(scaled, f)))
    x = base.resolution * s_r
    out.append(_Bound("resolution", x, *_lattice(x, 4, 4), scaled.resolution))
    return out


def _sizes(bounds: list[_Bound], n: int, pick: str) -> _Sizes:
    val = {b.name: getattr(b, pick) for b in bounds}
    return _Sizes(
        depths=tuple(val[f"depth[{i}]"] for i in range(n)),
        widths=tuple(val[f"width[{i}]"] for i in range(n)),
        groups=tuple(val.get(f"group_width[{i}]", 1) for i in range(n)),
        stem=val["stem_width"],
        head=val["head_width"],
        res=val["resolution"],
        ideal=pick == "ideal",
    )


def _exact_sizes(cfg: Config) -> _Sizes:
    n = len(cfg.depths)
    groups = cfg.group_widths if isinstance(cfg, AnyNetConfig) else (1,) * n
    return _Sizes(cfg.depths, cfg.widths, groups, cfg.stem_width, cfg.head_width, cfg.resolution)


@functools.lru_cache(maxsize=256)
def _measured(cfg: Config) -> Complexity:
    return measure_config(cfg)  # configs are frozen and hashable; bases recur across examples


@dataclasses.dataclass(frozen=True)
class LawReport:
    """How a scaled network's complexity compares with the scaling laws (ratios to the base)."""

    strategy: str
    s: float
    alpha: float | None
    measured: tuple[float, float, float]  # (f, p, a) of the scaled net / base, hook-counted
    closed_form: tuple[float, float, float]  # (s, s^e_p, s^e_a)
    ideal: tuple[float, float, float]  # per-layer law at unrounded sizes (no rounding at all)
    band: tuple[tuple[float, float], ...]  # per metric: what rounding can explain, [lo, hi]
    violations: tuple[str, ...]


def complexity_law_report(
    base: Config, scaled: Config, s: float, strategy: str, alpha: float | None = None
) -> LawReport:
    """Measure ``base`` and ``scaled`` (on meta) and check them against the scaling laws.

    ``closed_form`` vs ``ideal`` shows how far the network's fixed parts (stem, first blocks,
    classifier) bend the closed forms; ``measured`` must lie in ``band`` (rounding only).
    """
    e_f, e_p, e_a = complexity_exponents(strategy, alpha)
    _check(strategy, s, alpha)
    exps = (e_p - 2 * (e_f - e_a), 2 * (e_f - e_a), e_f - e_p)  # (e_d, e_w, e_r) from the laws
    violations: list[str] = []
    if type(base) is not type(scaled):
        raise TypeError(f"base is {type(base).__name__} but scaled is {type(scaled).__name__}")
    keep = {"depths", "widths", "group_widths", "stem_width", "head_width", "resolution"}
    for f in dataclasses.fields(base):
        if f.name not in keep and getattr(base, f.name) != getattr(scaled, f.name):
            was, now = getattr(base, f.name), getattr(scaled, f.name)
            violations.append(f"{f.name} changed: {was!r} -> {now!r}; scaling must keep it")
    if len(base.depths) != len(scaled.depths):
        raise ValueError(f"stage count differs: {len(base.depths)} vs {len(scaled.depths)}")

    bounds = _size_bounds(base, scaled, s, exps)
    for b in bounds:
        if not b.lo - 1e-9 <= b.actual <= b.hi + 1e-9:
            violations.append(
                f"{b.name} = {b.actual}, but the law gives {b.ideal:.2f} and rounding allows "
                f"[{b.lo:.2f}, {b.hi:.2f}] ({strategy}, s={s:g}, e_d/e_w/e_r="
                f"{exps[0]:.3g}/{exps[1]:.3g}/{exps[2]:.3g})"
            )

    m_base, m_scaled = _measured(base), _measured(scaled)
    base_t = (m_base.flops, m_base.params, m_base.acts)
    for cfg, m, what in ((base, m_base, "base"), (scaled, m_scaled, "scaled")):
        law = _law_totals(cfg, _exact_sizes(cfg))
        got = (m.flops, m.params, m.acts)
        if any(not math.isclose(x, y, rel_tol=1e-9) for x, y in zip(law, got, strict=True)):
            violations.append(f"per-layer law model gives {law} for the {what} net, measured {got}")

    def ratio(totals) -> tuple[float, float, float]:
        return tuple(x / y for x, y in zip(totals, base_t, strict=True))

    n = len(base.depths)
    measured = m_scaled.ratio(m_base)
    lo, hi = (ratio(_law_totals(scaled, _sizes(bounds, n, end))) for end in ("lo", "hi"))
    band = tuple(zip(lo, hi, strict=True))
    for name, r, (r_lo, r_hi) in zip(("flops", "params", "acts"), measured, band, strict=True):
        if not r_lo * (1 - 1e-9) <= r <= r_hi * (1 + 1e-9):
            violations.append(
                f"{name} ratio {r:.4f} is outside [{r_lo:.4f}, {r_hi:.4f}], the band rounding "
                f"explains for {strategy} at s={s:g}"
            )
    return LawReport(
        strategy=strategy,
        s=s,
        alpha=alpha,
        measured=measured,
        closed_form=predicted_complexity_ratio(strategy, s, alpha),
        ideal=ratio(_law_totals(scaled, _sizes(bounds, n, "ideal"))),
        band=band,
        violations=tuple(violations),
    )


def check_complexity_laws(
    base: Config, scaled: Config, s: float, strategy: str, alpha: float | None = None
) -> list[str]:
    """Violations of the scaling laws by ``scaled`` (= ``base`` scaled by s); [] if none.

    See ``complexity_law_report`` for the numbers behind the verdict.
    """
    return list(complexity_law_report(base, scaled, s, strategy, alpha).violations)

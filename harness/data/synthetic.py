"""Datasets and a device-resident batch iterator.

Three things live here:

* ``synthetic_dataset`` -- a procedurally generated image-classification task for the CPU
  "smoke" profile (no downloads, bit-identical for a given seed, any resolution);
* ``load_cifar`` / ``resolve_data_root`` -- CIFAR-10/100 from torchvision's on-disk python
  pickle format, with a ``DatasetMissing`` error that says exactly what to put where;
* ``batches`` -- an airbench-style iterator over tensors that already live on the target
  device, with optional random-crop + flip augmentation done on tensors.

How the synthetic data is generated
-----------------------------------
Every sample is first drawn as a *continuous description* (a few dozen float/int latents) and
only then rendered at the requested resolution, so the very same scene can be rendered at 24,
32, 40 or 48 px. Image coordinates are ``(x, y)`` in ``[-1, 1]`` (image width = 2 units);
"cycles/width" below means cycles across the whole image.

Latents of one sample, drawn in this order from a local ``torch.Generator``:

1. **label** ``y`` uniform over ``num_classes`` (default 10, at most 16). It is the
   combination of two latent factors: target *shape* ``y // 2`` (``_SHAPES``: disk, triangle,
   square, ring, cross, then pentagon, half-disk, hexagon for more than 10 classes) and stripe
   *orientation* ``y % 2``.
2. **background**: uniform random RGB colour + linear gradient (slope U(-0.25, 0.25) per unit
   and channel, in x and y) + one low-frequency plane wave (0.5-2 cycles/width per axis,
   random phase, amplitude U(0, 0.15) times a random per-channel colour direction).
3. **clutter behind**: two flat, uniformly coloured shapes of random type (from the target
   shape vocabulary, at least the first five), centre U(-0.8, 0.8)^2, radius U(0.12, 0.32),
   random rotation.
4. **decoy**: one more random shape (centre U(-0.65, 0.65)^2, radius U(0.22, 0.38)) filled with
   a checkerboard (3-7 cycles/width, random orientation, two random colours >= 0.45 apart), so
   the target is not simply "the only textured thing".
5. **target**: shape given by the label, centre U(-0.4, 0.4)^2, radius U(0.38, 0.55), random
   rotation, filled with a sinusoidal grating between two random colours (pushed >= 0.5 apart
   in RGB along their difference, then clipped to [0, 1], so ~8% of pairs end up closer):
   frequency U(4.5, 10.5) cycles/width, random phase, wave vector at ``90 deg * (y % 2)`` +
   U(-20, 20) deg in the image frame (vertical vs horizontal stripes). The label thus needs the
   *shape of the striped object* combined with the *orientation of its stripes*; colour,
   position and size carry no information. Both factors are invariant under horizontal flips
   and small translations, so flip/crop augmentation preserves labels.
6. **occluder**: one small flat shape (radius U(0.1, 0.18), centre U(-0.7, 0.7)^2) drawn in
   front of the target.

Rendering (``_render_chunk``, vectorised over samples): layers are composited back to front
(background, clutter, decoy, target, occluder) with *analytic anti-aliasing*: each shape has a
signed distance function and its pixel coverage is a linear ramp of the distance over one pixel
(the usual approximation of the area-averaged coverage), and each texture's amplitude is
multiplied by ``|sinc(2 f_x / R) sinc(2 f_y / R)|`` (``f_x``, ``f_y``: the wave vector's
components in cycles/width, ``R``: the grid size in pixels, ``sinc(t) = sin(pi t) / (pi t)``).
That is the response of a *two*-pixel-wide box filter: twice the argument of one pixel's own
box filter, ``sinc(f / R)``, so textures fade to their mean already at the Nyquist frequency
(``R / 2`` cycles/width) instead of aliasing, e.g. 10.5 cycles/width keeps 14% of its contrast
at 24 px and 43% at 32 px (one pixel's box would keep 71% and 83%). So a pixel approximates a
(slightly blurred) area average of the continuous scene at any resolution, and the stripes
are legible at 32-48 px and partly lost at 24 px, which makes resolution scaling meaningful.
``supersample=k > 1`` additionally renders on a ``k``-times finer grid and average-pools.
Finally i.i.d. Gaussian pixel noise (std ``noise``, default 0.04, drawn from a stream derived
from seed, split, chunk and resolution) is added, values are clipped to [0, 1] and normalised
per channel with fixed constants (``SYNTH_STATS[difficulty]``; for "hard" ``SYNTH_MEAN`` /
``SYNTH_STD``), giving float32
``[N, 3, R, R]`` images and int64 ``[N]`` labels.

Determinism: samples are generated in fixed-size chunks of ``_CHUNK`` samples; chunk ``k`` of
split ``s`` (0 = train, 1 = test) uses its own generator seeded from a hash of ``(seed, s, k)``.
So train and test are disjoint streams of the same distribution, results are bit-identical
across calls (for a given torch build: vectorised sin/cos may differ in the last ulp between
builds or CPU instruction sets), and the first ``n`` samples do not depend on
``train_size``/``test_size``. The global RNG is never touched.

Why it rewards capacity: finding the striped object among same-shaped clutter, a checkered
decoy and an occluder, then recognising its rotated, scaled shape, is hard for a small CNN.
Validation (4000 train / 2000 test images at 32 px, 5 epochs, batch 64, one CPU thread): a
3-conv ~20K-parameter CNN reached 27-30% test accuracy and a 4-conv ~240K-parameter CNN 42-57%
(chance 10%) over four data/training seeds, with AdamW or SGD+Nesterov, with or without
crop/flip augmentation. Resolution matters through the stripes: the large CNN's accuracy was
40% at 24 px vs 53-57% at 32-48 px (stripe-orientation accuracy 85% vs 98-99.5%).

Difficulty levels
-----------------
``difficulty="hard"`` (the default; ``DataSpec.difficulty`` likewise) is everything above. The
residual AnyNet / EfficientNet models of the scaling claims stay at chance on it within a smoke
budget (``anynet_tiny_y``, cifar stem, 4000 images, 5 epochs: ~11%, loss ~2.3).

``difficulty="medium"`` draws exactly the same latents (so sample ``i`` has the same label,
target shape, rotation and stripe orientation and phase as at "hard"), then (``_easier``,
``_render_chunk``):

* renders no clutter, decoy or occluder (their latents are still sampled, just not rendered):
  background and target only;
* scales the target radius by 1.1 (U(0.418, 0.605)) and its centre by 0.75 (U(-0.3, 0.3)^2);
* pulls the background halfway towards mid-grey: colour ``0.5 + 0.5 (c - 0.5)``, gradient
  slopes and wave amplitude halved;
* pushes the stripe colours >= 0.8 apart (same rule as above, applied to the "hard" pair;
  clipping leaves ~36% of pairs closer, median distance 0.8 instead of 0.65);
* halves the stripe frequency: U(2.25, 5.25) cycles/width. The stripes are then legible at
  16 px (the smoke resolution of the trained scaling claims) and fade below it, as the hard
  stripes do at 24 px, so resolution scaling still changes what a network can see.

Anti-aliasing and noise are those of "hard"; the normalisation constants are its own
(``SYNTH_STATS["medium"]``: the muted background varies less). Labels stay flip- and
crop-invariant.

The sizing runs behind "medium" are in ``docs/data.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.data.splits import DatasetSplits

# --------------------------------------------------------------------------------------------
# Synthetic dataset
# --------------------------------------------------------------------------------------------

# Per-channel mean/std of the [0, 1] images, measured once on synthetic_dataset() (seed 0,
# 32 px, 5000 train images: mean ~(0.500, 0.501, 0.494), std ~0.287). Fixed constants so that
# normalisation does not depend on the seed, split sizes or resolution.
SYNTH_MEAN = (0.50, 0.50, 0.49)
SYNTH_STD = (0.29, 0.29, 0.29)
# Normalisation constants per difficulty, measured the same way ("medium": mean ~(0.500, 0.500,
# 0.497), std ~0.173: its muted background varies less).
SYNTH_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "hard": (SYNTH_MEAN, SYNTH_STD),
    "medium": ((0.50, 0.50, 0.50), (0.17, 0.17, 0.17)),
}

_CHUNK = 256
DIFFICULTIES = ("hard", "medium")
_SHAPES = ("disk", "triangle", "square", "ring", "cross", "pentagon", "half_disk", "hexagon")
_N_DISTRACT_BACK = 2
# "medium" difficulty (see the module docstring): no clutter, decoy or occluder, and
_MEDIUM_RADIUS = 1.1  # a 10% larger target
_MEDIUM_CENTRE = 0.75  # nearer the image centre
_MEDIUM_BG_MUTE = 0.5  # on a background pulled halfway towards mid-grey
_MEDIUM_STRIPE_DIST = 0.8  # with stripe colours >= 0.8 apart (hard: 0.5)
_MEDIUM_FREQ = 0.5  # and stripes half as fine, so they stay legible at 16 px


def _split_seed(seed: int, split: int, chunk: int, extra: int = 0) -> int:
    # splitmix64-style mixing so neighbouring (seed, split, chunk) give unrelated streams.
    z = (seed * 0x9E3779B97F4A7C15 + split * 0xBF58476D1CE4E5B9 + chunk * 0x94D049BB133111EB
         + extra * 0xD6E8FEB86659FD93 + 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 31
    return z & 0x7FFFFFFFFFFFFFFF


def _uniform(g: torch.Generator, n: int, lo: float, hi: float, *shape: int) -> Tensor:
    return torch.rand((n, *shape), generator=g) * (hi - lo) + lo


def _draw_object(g: torch.Generator, n: int, r_lo: float, r_hi: float, extent: float,
                 n_shapes: int) -> dict:
    """Continuous description of one object per sample (centre, radius, rotation, shape, colour).

    Centres are uniform in ``[-extent, extent]^2``; radii (object units -> image units) uniform
    in ``[r_lo, r_hi]``.
    """
    return {
        "cx": _uniform(g, n, -extent, extent),
        "cy": _uniform(g, n, -extent, extent),
        "r": _uniform(g, n, r_lo, r_hi),
        "rot": _uniform(g, n, 0.0, 2 * math.pi),
        "shape": torch.randint(0, n_shapes, (n,), generator=g),
        "color": torch.rand((n, 3), generator=g),
    }


def _two_colours(g: torch.Generator, n: int, min_dist: float) -> tuple[Tensor, Tensor]:
    """Two random colours per sample, pushed apart to at least ``min_dist`` (L2 in RGB)."""
    a = torch.rand((n, 3), generator=g)
    b = torch.rand((n, 3), generator=g)
    return a, _push_apart(a, b, min_dist)


def _push_apart(a: Tensor, b: Tensor, min_dist: float) -> Tensor:
    """``b`` moved away from ``a`` along ``b - a`` where closer than ``min_dist`` (L2 in RGB);
    the clamp keeps it in gamut (so it may end up a little closer)."""
    d = b - a
    norm = d.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return torch.where(norm < min_dist, (a + d / norm * min_dist).clamp(0, 1), b)


def _draw_latents(seed: int, split: int, chunk: int, n: int, num_classes: int) -> dict:
    """All resolution-independent latents for one chunk of ``n`` samples."""
    g = torch.Generator().manual_seed(_split_seed(seed, split, chunk))
    # Clutter uses the targets' shape vocabulary (at least the first five shapes), so a shape on
    # its own never identifies the target.
    k = max(5, _n_target_shapes(num_classes))
    lat: dict = {}
    lat["y"] = torch.randint(0, num_classes, (n,), generator=g)
    # Background.
    lat["bg"] = torch.rand((n, 3), generator=g)
    lat["bg_grad"] = _uniform(g, n, -0.25, 0.25, 2, 3)  # d colour / d x, d colour / d y
    lat["bg_wave"] = torch.cat([_uniform(g, n, 0.5, 2.0, 2),  # freq x, freq y (cycles/width)
                                _uniform(g, n, 0, 2 * math.pi, 1),  # phase
                                _uniform(g, n, 0.0, 0.15, 1)], 1)  # amplitude
    lat["bg_wave_col"] = torch.rand((n, 3), generator=g) - 0.5
    # Clutter behind the target.
    lat["back"] = [_draw_object(g, n, 0.12, 0.32, 0.8, k) for _ in range(_N_DISTRACT_BACK)]
    # Checkerboard decoy.
    lat["decoy"] = _draw_object(g, n, 0.22, 0.38, 0.65, k)
    lat["decoy_tex"] = torch.cat([_uniform(g, n, 3.0, 7.0, 1),  # freq (cycles/width)
                                  _uniform(g, n, 0, 2 * math.pi, 1)], 1)  # orientation
    lat["decoy_cols"] = _two_colours(g, n, 0.45)
    # Target.
    tgt = _draw_object(g, n, 0.38, 0.55, 0.4, k)
    tgt["shape"] = lat["y"] // 2
    lat["target"] = tgt
    orient_class = lat["y"] % 2
    lat["tgt_tex"] = torch.stack([
        _uniform(g, n, 4.5, 10.5),  # freq (cycles per image width)
        # Wave vector near 0 deg (vertical stripes) or 90 deg (horizontal stripes): both
        # classes map to themselves under a horizontal flip, so flip augmentation is safe.
        orient_class.float() * (math.pi / 2)
        + _uniform(g, n, -math.radians(20), math.radians(20)),
        _uniform(g, n, 0, 2 * math.pi),  # phase
    ], 1)
    lat["tgt_cols"] = _two_colours(g, n, 0.5)
    # Small occluder in front of the target.
    lat["front"] = _draw_object(g, n, 0.1, 0.18, 0.7, k)
    return lat


def _n_target_shapes(num_classes: int) -> int:
    return (num_classes + 1) // 2


def _local(x: Tensor, y: Tensor, obj: dict) -> tuple[Tensor, Tensor]:
    """Coordinates in the object's frame (unit radius), shape [n, G, G].

    ``x`` is [1, 1, G] and ``y`` is [1, G, 1]: the rotation is affine, so each output is one
    broadcast add of a per-column and a per-row term (cheap; this dominates generation time).
    """
    cx, cy, r = obj["cx"].view(-1, 1, 1), obj["cy"].view(-1, 1, 1), obj["r"].view(-1, 1, 1)
    c = torch.cos(obj["rot"]).view(-1, 1, 1) / r
    s = torch.sin(obj["rot"]).view(-1, 1, 1) / r
    u = (c * x - (c * cx + s * cy)) + s * y
    v = (-s * x + (s * cx - c * cy)) + c * y
    return u, v


def _polygon_sdf(u: Tensor, v: Tensor, k: int) -> Tensor:
    # Regular k-gon with circumradius 1, one vertex up: max over the k edge half-planes. Exact
    # distance near edges (what anti-aliasing needs), an underestimate only near corners.
    d = None
    for i in range(k):
        a = math.pi / 2 + math.pi / k + 2 * math.pi * i / k
        di = u * math.cos(a) + v * math.sin(a)
        d = di if d is None else torch.maximum(d, di)
    return d - math.cos(math.pi / k)


def _shape_sdf_one(name: str, u: Tensor, v: Tensor) -> Tensor:
    """Signed distance (negative inside) of one shape type, in object units (radius ~1)."""
    if name == "disk":
        return torch.sqrt(u * u + v * v) - 0.9
    if name == "ring":
        return (torch.sqrt(u * u + v * v) - 0.72).abs() - 0.28
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) - 0.75
    if name == "cross":
        au, av = u.abs(), v.abs()
        return torch.minimum(torch.maximum(au - 1.0, av - 0.3), torch.maximum(au - 0.3, av - 1.0))
    if name == "triangle":
        return torch.maximum(-v, u.abs() * (math.sqrt(3) / 2) + v * 0.5) - 0.5
    if name == "half_disk":
        return torch.maximum(torch.sqrt(u * u + v * v) - 1.0, -0.2 - v)
    k = {"pentagon": 5, "hexagon": 6}[name]
    return _polygon_sdf(u, v, k)


def _shape_sdf(u: Tensor, v: Tensor, shape: Tensor) -> Tensor:
    """Signed distance [n, G, G] for per-sample shape ids (object units)."""
    out = torch.empty_like(u)
    for sid, name in enumerate(_SHAPES):
        idx = (shape == sid).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        d = _shape_sdf_one(name, u.index_select(0, idx), v.index_select(0, idx))
        out.index_copy_(0, idx, d)
    return out


def _coverage(u: Tensor, v: Tensor, obj: dict, pix: float) -> Tensor:
    """Fraction of each pixel covered by the object, [n, 1, G, G].

    Linear ramp of the signed distance over one pixel width: the standard analytic
    approximation of box-filtered (area-averaged) coverage, so edges are anti-aliased without
    rendering at a higher resolution.
    """
    d = _shape_sdf(u, v, obj["shape"]) * (obj["r"].view(-1, 1, 1) / pix)  # in pixels
    return (0.5 - d).clamp_(0.0, 1.0).unsqueeze(1)


def _render_chunk(lat: dict, resolution: int, supersample: int, noise: float,
                  noise_seed: int, difficulty: str = "hard") -> Tensor:
    """Render one chunk of latents to float images in [0, 1], shape [n, 3, R, R].

    ``difficulty="medium"`` renders ``_easier(lat)`` and leaves out the clutter, the decoy and
    the occluder (their latents are drawn all the same, so both levels share every scene)."""
    cluttered = difficulty == "hard"
    if not cluttered:
        lat = _easier(lat)
    n = lat["y"].shape[0]
    grid = resolution * supersample
    pix = 2.0 / grid  # (sub-)pixel width in image units
    coords = (torch.arange(grid, dtype=torch.float32) + 0.5) * pix - 1.0
    x = coords.view(1, 1, grid)  # varies along columns
    y = coords.view(1, grid, 1)  # varies along rows

    def per(t: Tensor) -> Tensor:
        return t.view(n, 1, 1)

    def col(c: Tensor) -> Tensor:
        return c.view(n, 3, 1, 1)

    # Background: colour + linear gradient + one low-frequency wave.
    gx, gy = lat["bg_grad"][:, 0], lat["bg_grad"][:, 1]
    img = (col(lat["bg"]) + col(gx) * x.unsqueeze(1)) + col(gy) * y.unsqueeze(1)
    w = lat["bg_wave"]
    wave = torch.sin((per(w[:, 0]) * math.pi * x + per(w[:, 2])) + per(w[:, 1]) * math.pi * y)
    img = img + col(lat["bg_wave_col"]) * (wave * per(w[:, 3])).unsqueeze(1)

    for obj in lat["back"] if cluttered else []:
        u, v = _local(x, y, obj)
        img = torch.lerp(img, col(obj["color"]), _coverage(u, v, obj, pix))
    if cluttered:
        img = _draw_decoy(img, lat, x, y, pix, per, col)

    # Target: oriented sinusoidal grating in the image frame.
    obj = lat["target"]
    u, v = _local(x, y, obj)
    f = per(lat["tgt_tex"][:, 0]) * math.pi
    th = per(lat["tgt_tex"][:, 1])
    ph = per(lat["tgt_tex"][:, 2])
    ct, st = torch.cos(th), torch.sin(th)
    att = _sinc(f / math.pi * pix * ct) * _sinc(f / math.pi * pix * st)
    t = torch.sin((f * ct * x + ph) + f * st * y) * (0.5 * att) + 0.5
    a, b = lat["tgt_cols"]
    fill = torch.lerp(col(a), col(b), t.unsqueeze(1))
    img = torch.lerp(img, fill, _coverage(u, v, obj, pix))

    if cluttered:
        obj = lat["front"]
        u, v = _local(x, y, obj)
        img = torch.lerp(img, col(obj["color"]), _coverage(u, v, obj, pix))
    return _finish(img, noise, noise_seed, supersample)


def _easier(lat: dict) -> dict:
    """The "medium" level's latents: a copy of ``lat`` with the target and background eased.

    The target's radius is scaled by ``_MEDIUM_RADIUS`` and its centre pulled towards the image
    centre by ``_MEDIUM_CENTRE``; the background colour, gradient and wave amplitude are pulled
    towards mid-grey by ``_MEDIUM_BG_MUTE``; the stripe colours are pushed apart to at least
    ``_MEDIUM_STRIPE_DIST``; the stripe frequency is scaled by ``_MEDIUM_FREQ``. Everything
    else (label, shape, rotation, stripe orientation and phase) is unchanged, so a medium scene
    is the matching hard scene, eased.
    """
    lat = dict(lat)
    tgt = dict(lat["target"])
    tgt["r"] = tgt["r"] * _MEDIUM_RADIUS
    tgt["cx"] = tgt["cx"] * _MEDIUM_CENTRE
    tgt["cy"] = tgt["cy"] * _MEDIUM_CENTRE
    lat["target"] = tgt
    keep = 1.0 - _MEDIUM_BG_MUTE
    lat["bg"] = 0.5 + (lat["bg"] - 0.5) * keep
    lat["bg_grad"] = lat["bg_grad"] * keep
    lat["bg_wave"] = torch.cat([lat["bg_wave"][:, :3], lat["bg_wave"][:, 3:] * keep], 1)
    a, b = lat["tgt_cols"]
    lat["tgt_cols"] = (a, _push_apart(a, b, _MEDIUM_STRIPE_DIST))
    lat["tgt_tex"] = torch.cat([lat["tgt_tex"][:, :1] * _MEDIUM_FREQ, lat["tgt_tex"][:, 1:]], 1)
    return lat


def _draw_decoy(img, lat, x, y, pix, per, col) -> Tensor:
    """Decoy: checkerboard = product of two orthogonal gratings, box-filter attenuated."""
    obj = lat["decoy"]
    u, v = _local(x, y, obj)
    f = per(lat["decoy_tex"][:, 0]) * math.pi  # radians per unit (cycles/width * 2pi / 2)
    th = per(lat["decoy_tex"][:, 1])
    ct, st = torch.cos(th), torch.sin(th)
    att = _sinc(f / math.pi * pix * ct) * _sinc(f / math.pi * pix * st)
    p1 = torch.sin(f * ct * x + f * st * y)
    p2 = torch.sin(-f * st * x + f * ct * y)
    t = torch.tanh((p1 * p2) * (3 * att))
    a, b = lat["decoy_cols"]
    fill = torch.lerp(col(a), col(b), (0.5 + 0.5 * t).unsqueeze(1))
    return torch.lerp(img, fill, _coverage(u, v, obj, pix))


def _finish(img: Tensor, noise: float, noise_seed: int, supersample: int) -> Tensor:
    if supersample > 1:
        img = F.avg_pool2d(img, supersample)
    if noise > 0:
        gn = torch.Generator().manual_seed(noise_seed)
        img = img + noise * torch.randn(img.shape, generator=gn)
    return img.clamp_(0.0, 1.0)


def _sinc(t: Tensor) -> Tensor:
    # Box-filter frequency response; |.| so that attenuation never flips the pattern's sign.
    return torch.sinc(t).abs()


@contextmanager
def _one_thread() -> Iterator[None]:
    # The per-chunk ops are small (~0.3M floats), so intra-op threads do not speed generation
    # up (measured: 2 threads no faster than 1), while on an oversubscribed CPU their barrier
    # spin-waits made it up to ~30x slower. Results are identical either way (elementwise ops).
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def _make_split(seed: int, split: int, size: int, num_classes: int, resolution: int,
                supersample: int, noise: float, difficulty: str) -> tuple[Tensor, Tensor]:
    images = torch.empty((size, 3, resolution, resolution), dtype=torch.float32)
    labels = torch.empty((size,), dtype=torch.int64)
    mean = torch.tensor(SYNTH_STATS[difficulty][0]).view(1, 3, 1, 1)
    std = torch.tensor(SYNTH_STATS[difficulty][1]).view(1, 3, 1, 1)
    for k, start in enumerate(range(0, size, _CHUNK)):
        # Always draw a full chunk so sample i is the same whatever the split size.
        lat = _draw_latents(seed, split, k, _CHUNK, num_classes)
        img = _render_chunk(lat, resolution, supersample, noise,
                            _split_seed(seed, split, k, extra=1000 + resolution), difficulty)
        stop = min(start + _CHUNK, size)
        images[start:stop] = ((img - mean) / std)[: stop - start]
        labels[start:stop] = lat["y"][: stop - start]
    return images, labels


def synthetic_dataset(num_classes: int = 10, resolution: int = 32, train_size: int = 5000,
                      test_size: int = 2000, seed: int = 0, *, noise: float = 0.04,
                      supersample: int = 1, difficulty: str = "hard") -> DatasetSplits:
    """Procedural "striped shape among clutter" classification task (see module docstring).

    ``difficulty``: "hard" (clutter, decoy and occluder) or "medium" (the same scenes without
    them, with a larger, more central, higher-contrast target on a muted background; see the
    module docstring), which residual nets learn on a CPU budget.
    ``supersample`` sets the anti-aliasing grid (sub-pixels per pixel side); ``noise`` is the
    per-pixel Gaussian noise std in [0, 1] image units (0 disables it).
    """
    if num_classes < 2 or num_classes > 2 * len(_SHAPES):
        raise ValueError(f"num_classes must be in [2, {2 * len(_SHAPES)}], got {num_classes}")
    if resolution < 4:
        raise ValueError(f"resolution must be >= 4, got {resolution}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; use one of {DIFFICULTIES}")
    if train_size < 0 or test_size < 0:
        raise ValueError(f"sizes must be >= 0, got train={train_size}, test={test_size}")
    with _one_thread():
        train = _make_split(seed, 0, train_size, num_classes, resolution, supersample, noise,
                            difficulty)
        test = _make_split(seed, 1, test_size, num_classes, resolution, supersample, noise,
                           difficulty)
    desc = (f"synthetic striped-shape task ({difficulty}): {num_classes} classes, "
            f"{resolution}px, train={train_size}, test={test_size}, seed={seed}, noise={noise}")
    return DatasetSplits(train, test, num_classes, resolution, desc)


# --------------------------------------------------------------------------------------------

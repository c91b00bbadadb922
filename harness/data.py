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
Every sample is first drawn as a *continuous description* (a handful of float/int latents per
sample) and only then rendered at the requested resolution, so the same sample can be rendered
at 24, 32, 40 or 48 px. Coordinates are ``(x, y)`` in ``[-1, 1]`` (image width = 2 units).

Latents of one sample (all drawn from a local ``torch.Generator``):

* **label** ``y`` uniform over ``num_classes`` (default 10). For ``num_classes <= 10`` the
  label maps to two latent factors: target *shape* ``s = y // 2`` (disk, triangle, square,
  ring, cross) and *stripe orientation class* ``o = y % 2``. More classes add more shapes
  (pentagon, hexagon, half-disk ...) cyclically; see ``_SHAPES``.
* **target object**: centre uniform in ``[-0.45, 0.45]^2``, radius uniform in
  ``[0.32, 0.5]``, rotation uniform; filled with a sinusoidal grating of orientation
  ``45 deg + 90 deg * o + U(-20, 20) deg`` (image frame), random phase, spatial frequency
  uniform in ``[4.5, 9]`` cycles per image width, between two random colours with a minimum
  contrast. The label therefore needs the *shape of the striped object* combined with the
  *orientation of its stripes*; neither colour nor position carries information.
* **clutter**: three flat-coloured distractor shapes (random shape type, colour, position,
  radius in ``[0.15, 0.4]``, rotation) drawn behind the target, one smaller flat distractor
  drawn in front of it (partial occlusion), and one *decoy* object of a random shape filled
  with a checkerboard (random frequency/orientation/colours) so that "the textured object" is
  not simply the only textured thing.
* **background**: a random colour plus a random linear gradient and a low-frequency sinusoid.
* **pixel noise**: i.i.d. Gaussian, std ``noise`` (default 0.04), drawn per resolution from a
  stream derived from (seed, split, chunk, resolution).

Rendering: shapes are hard masks evaluated on a supersampled grid of
``resolution * supersample`` pixels per side (pixel centres), composited back to front, then
box-filtered (``avg_pool2d``) to the requested resolution -- i.e. each output pixel is the
area average of the continuous scene (anti-aliased). Gratings and checkerboards are
additionally attenuated analytically by the box-filter response of one sub-pixel
(``sinc(f * w)``), so texture frequencies above what the resolution can carry fade to their
mean instead of aliasing: fine stripes are legible at 32-48 px and increasingly lost at 24 px,
which is what makes resolution scaling meaningful.

Images are finally normalised per channel with the fixed constants ``SYNTH_MEAN`` /
``SYNTH_STD`` (measured once on the default generator), giving float32 ``[N, 3, H, W]``;
labels are int64 ``[N]``.

Determinism: samples are generated in fixed-size chunks of ``_CHUNK`` samples; chunk ``k`` of
split ``split`` uses its own generator seeded from ``(seed, split, k)``. So the train and test
splits are disjoint streams, results are bit-identical across calls, and the first ``n``
samples do not depend on ``train_size``/``test_size``. The global RNG is never touched.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CIFAR_STATS",
    "DatasetMissing",
    "DatasetSplits",
    "SYNTH_MEAN",
    "SYNTH_STD",
    "batches",
    "load_cifar",
    "resolve_data_root",
    "synthetic_dataset",
]


@dataclass(frozen=True, eq=False)  # eq=False: tensor fields make == ambiguous
class DatasetSplits:
    """A train/test pair of ``(images float32 [N,3,H,W] normalised, labels int64 [N])``."""

    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    num_classes: int
    resolution: int
    description: str


# --------------------------------------------------------------------------------------------
# Synthetic dataset
# --------------------------------------------------------------------------------------------

# Measured once on synthetic_dataset(seed=0, noise default) at 32 px; fixed so that
# normalisation does not depend on split sizes or resolution.
SYNTH_MEAN = (0.5, 0.5, 0.5)
SYNTH_STD = (0.25, 0.25, 0.25)

_CHUNK = 256
_SHAPES = ("disk", "triangle", "square", "ring", "cross", "pentagon", "half_disk", "hexagon")
_N_DISTRACT_BACK = 3


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


def _draw_object(g: torch.Generator, n: int, r_lo: float, r_hi: float, c_lo: float) -> dict:
    """Continuous description of one object per sample (centre, radius, rotation, colour)."""
    return {
        "cx": _uniform(g, n, -c_lo, c_lo),
        "cy": _uniform(g, n, -c_lo, c_lo),
        "r": _uniform(g, n, r_lo, r_hi),
        "rot": _uniform(g, n, 0.0, 2 * math.pi),
        "shape": torch.randint(0, 5, (n,), generator=g),
        "color": torch.rand((n, 3), generator=g),
    }


def _two_colours(g: torch.Generator, n: int, min_dist: float) -> tuple[Tensor, Tensor]:
    """Two random colours per sample, pushed apart to at least ``min_dist`` (L2 in RGB)."""
    a = torch.rand((n, 3), generator=g)
    b = torch.rand((n, 3), generator=g)
    d = b - a
    norm = d.norm(dim=1, keepdim=True).clamp_min(1e-6)
    # Move b away from a along d when too close; clamp keeps it in gamut.
    b = torch.where(norm < min_dist, (a + d / norm * min_dist).clamp(0, 1), b)
    return a, b


def _draw_latents(seed: int, split: int, chunk: int, n: int, num_classes: int) -> dict:
    """All resolution-independent latents for one chunk of ``n`` samples."""
    g = torch.Generator().manual_seed(_split_seed(seed, split, chunk))
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
    lat["back"] = [_draw_object(g, n, 0.15, 0.4, 0.8) for _ in range(_N_DISTRACT_BACK)]
    # Checkerboard decoy.
    lat["decoy"] = _draw_object(g, n, 0.22, 0.38, 0.65)
    lat["decoy_tex"] = torch.cat([_uniform(g, n, 3.0, 7.0, 1),  # freq (cycles/width)
                                  _uniform(g, n, 0, 2 * math.pi, 1)], 1)  # orientation
    lat["decoy_cols"] = _two_colours(g, n, 0.45)
    # Target.
    tgt = _draw_object(g, n, 0.32, 0.5, 0.45)
    tgt["shape"] = _target_shape(lat["y"], num_classes)
    lat["target"] = tgt
    orient_class = lat["y"] % 2
    lat["tgt_tex"] = torch.cat([
        _uniform(g, n, 4.5, 9.0, 1),  # freq (cycles per image width)
        (math.pi / 4 + orient_class.float() * math.pi / 2
         + _uniform(g, n, -math.radians(20), math.radians(20))[:]).unsqueeze(1),
        _uniform(g, n, 0, 2 * math.pi, 1),  # phase
    ], 1)
    lat["tgt_cols"] = _two_colours(g, n, 0.5)
    # Small occluder in front of the target.
    lat["front"] = _draw_object(g, n, 0.1, 0.18, 0.7)
    return lat


def _target_shape(y: Tensor, num_classes: int) -> Tensor:
    return (y // 2) % len(_SHAPES)


def _local(x: Tensor, y: Tensor, obj: dict) -> tuple[Tensor, Tensor]:
    """Coordinates in the object's frame (unit radius), shape [n, G, G]."""
    cx = obj["cx"].view(-1, 1, 1)
    cy = obj["cy"].view(-1, 1, 1)
    r = obj["r"].view(-1, 1, 1)
    c = torch.cos(obj["rot"]).view(-1, 1, 1)
    s = torch.sin(obj["rot"]).view(-1, 1, 1)
    dx = (x - cx) / r
    dy = (y - cy) / r
    return c * dx + s * dy, -s * dx + c * dy


def _polygon(u: Tensor, v: Tensor, k: int) -> Tensor:
    # Regular k-gon with circumradius 1: inside iff the projection onto the nearest edge normal
    # is below the apothem.
    ang = torch.atan2(v, u)
    sector = 2 * math.pi / k
    a = torch.remainder(ang, sector) - sector / 2
    return torch.sqrt(u * u + v * v) * torch.cos(a) <= math.cos(math.pi / k)


def _shape_mask(u: Tensor, v: Tensor, shape: Tensor) -> Tensor:
    """Boolean coverage [n, G, G] for per-sample shape ids."""
    out = torch.zeros(u.shape, dtype=torch.bool)
    rr = u * u + v * v
    for sid, name in enumerate(_SHAPES):
        sel = shape == sid
        if not bool(sel.any()):
            continue
        us, vs, rs = u[sel], v[sel], rr[sel]
        if name == "disk":
            m = rs <= 0.85
        elif name == "triangle":
            m = _polygon(us, vs, 3)
        elif name == "square":
            m = _polygon(us, vs, 4)
        elif name == "ring":
            m = (rs <= 1.0) & (rs >= 0.3)
        elif name == "cross":
            m = ((us.abs() <= 0.3) & (vs.abs() <= 1.0)) | ((vs.abs() <= 0.3) & (us.abs() <= 1.0))
        elif name == "pentagon":
            m = _polygon(us, vs, 5)
        elif name == "half_disk":
            m = (rs <= 1.0) & (vs >= -0.2)
        else:  # hexagon
            m = _polygon(us, vs, 6)
        out[sel] = m
    return out


def _render_chunk(lat: dict, resolution: int, supersample: int, noise: float,
                  noise_seed: int) -> Tensor:
    """Render one chunk of latents to float images in [0, 1], shape [n, 3, R, R]."""
    n = lat["y"].shape[0]
    grid = resolution * supersample
    sub = 2.0 / grid  # sub-pixel width in image units
    coords = (torch.arange(grid, dtype=torch.float32) + 0.5) * sub - 1.0
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    x = x.unsqueeze(0)
    y = y.unsqueeze(0)

    def col(c: Tensor) -> Tensor:
        return c.view(n, 3, 1, 1)

    # Background: colour + linear gradient + one low-frequency wave.
    gx, gy = lat["bg_grad"][:, 0], lat["bg_grad"][:, 1]
    img = col(lat["bg"]) + col(gx) * x.unsqueeze(1) + col(gy) * y.unsqueeze(1)
    w = lat["bg_wave"]
    wave = torch.sin(math.pi * (w[:, 0].view(n, 1, 1) * x + w[:, 1].view(n, 1, 1) * y)
                     + w[:, 2].view(n, 1, 1)) * w[:, 3].view(n, 1, 1)
    img = img + col(lat["bg_wave_col"]) * wave.unsqueeze(1)

    def paste(img: Tensor, mask: Tensor, fill: Tensor) -> Tensor:
        m = mask.unsqueeze(1)
        return torch.where(m, fill, img)

    for obj in lat["back"]:
        u, v = _local(x, y, obj)
        img = paste(img, _shape_mask(u, v, obj["shape"]), col(obj["color"]))

    # Decoy: checkerboard product of two gratings, box-filter attenuated.
    obj = lat["decoy"]
    u, v = _local(x, y, obj)
    f = lat["decoy_tex"][:, 0].view(n, 1, 1) / 2.0  # cycles per unit
    th = lat["decoy_tex"][:, 1].view(n, 1, 1)
    p1 = torch.cos(th) * x + torch.sin(th) * y
    p2 = -torch.sin(th) * x + torch.cos(th) * y
    att = _sinc(f * sub * torch.cos(th)) * _sinc(f * sub * torch.sin(th))
    t = torch.sin(2 * math.pi * f * p1) * torch.sin(2 * math.pi * f * p2) * att
    a, b = lat["decoy_cols"]
    fill = col(a) + (col(b) - col(a)) * (0.5 + 0.5 * torch.tanh(3 * t)).unsqueeze(1)
    img = paste(img, _shape_mask(u, v, obj["shape"]), fill)

    # Target: oriented sinusoidal grating in the image frame.
    obj = lat["target"]
    u, v = _local(x, y, obj)
    f = lat["tgt_tex"][:, 0].view(n, 1, 1) / 2.0
    th = lat["tgt_tex"][:, 1].view(n, 1, 1)
    ph = lat["tgt_tex"][:, 2].view(n, 1, 1)
    att = _sinc(f * sub * torch.cos(th)) * _sinc(f * sub * torch.sin(th))
    t = 0.5 + 0.5 * torch.sin(2 * math.pi * f * (torch.cos(th) * x + torch.sin(th) * y) + ph) * att
    a, b = lat["tgt_cols"]
    fill = col(a) + (col(b) - col(a)) * t.unsqueeze(1)
    img = paste(img, _shape_mask(u, v, obj["shape"]), fill)

    obj = lat["front"]
    u, v = _local(x, y, obj)
    img = paste(img, _shape_mask(u, v, obj["shape"]), col(obj["color"]))

    if supersample > 1:
        img = F.avg_pool2d(img, supersample)
    if noise > 0:
        gn = torch.Generator().manual_seed(noise_seed)
        img = img + noise * torch.randn(img.shape, generator=gn)
    return img.clamp_(0.0, 1.0)


def _sinc(t: Tensor) -> Tensor:
    # Box-filter frequency response; |.| so that attenuation never flips the pattern's sign.
    return torch.sinc(t).abs()


def _make_split(seed: int, split: int, size: int, num_classes: int, resolution: int,
                supersample: int, noise: float) -> tuple[Tensor, Tensor]:
    images = torch.empty((size, 3, resolution, resolution), dtype=torch.float32)
    labels = torch.empty((size,), dtype=torch.int64)
    mean = torch.tensor(SYNTH_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SYNTH_STD).view(1, 3, 1, 1)
    for k, start in enumerate(range(0, size, _CHUNK)):
        # Always draw a full chunk so sample i is the same whatever the split size.
        lat = _draw_latents(seed, split, k, _CHUNK, num_classes)
        img = _render_chunk(lat, resolution, supersample, noise,
                            _split_seed(seed, split, k, extra=1000 + resolution))
        stop = min(start + _CHUNK, size)
        images[start:stop] = ((img - mean) / std)[: stop - start]
        labels[start:stop] = lat["y"][: stop - start]
    return images, labels


def synthetic_dataset(num_classes: int = 10, resolution: int = 32, train_size: int = 5000,
                      test_size: int = 2000, seed: int = 0, *, noise: float = 0.04,
                      supersample: int = 2) -> DatasetSplits:
    """Procedural "striped shape among clutter" classification task (see module docstring).

    ``supersample`` sets the anti-aliasing grid (sub-pixels per pixel side); ``noise`` is the
    per-pixel Gaussian noise std in [0, 1] image units (0 disables it).
    """
    if num_classes < 2 or num_classes > 2 * len(_SHAPES):
        raise ValueError(f"num_classes must be in [2, {2 * len(_SHAPES)}], got {num_classes}")
    if resolution < 4:
        raise ValueError(f"resolution must be >= 4, got {resolution}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    train = _make_split(seed, 0, train_size, num_classes, resolution, supersample, noise)
    test = _make_split(seed, 1, test_size, num_classes, resolution, supersample, noise)
    desc = (f"synthetic striped-shape task: {num_classes} classes, {resolution}px, "
            f"train={train_size}, test={test_size}, seed={seed}, noise={noise}")
    return DatasetSplits(train, test, num_classes, resolution, desc)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision's on-disk python-pickle format)
# --------------------------------------------------------------------------------------------

DATA_ENV_VAR = "CLAIMS_DATA"

# Per-channel mean/std of the training images in [0, 1] (the usual published values).
CIFAR_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True)
class _CifarLayout:
    pretty: str
    subdir: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    tarball: str


_CIFAR: dict[str, _CifarLayout] = {
    "cifar10": _CifarLayout(
        "CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch", "batches.meta", b"labels", b"label_names", 10, "cifar-10-python.tar.gz"),
    "cifar100": _CifarLayout(
        "CIFAR-100", "cifar-100-python", ("train",), "test", "meta", b"fine_labels",
        b"fine_label_names", 100, "cifar-100-python.tar.gz"),
}


class DatasetMissing(FileNotFoundError):
    """A dataset's files are not where they should be; the message says what to put where."""


class DatasetCorrupt(ValueError):
    """A dataset file exists but cannot be read or has the wrong content; names the file."""


def resolve_data_root(cli_value: str | None) -> Path | None:
    """Data root from ``--data-root`` if given, else ``$CLAIMS_DATA``, else ``None``."""
    for value in (cli_value, os.environ.get(DATA_ENV_VAR)):
        if value is not None and value.strip():
            return Path(value.strip()).expanduser()
    return None


def _missing_message(layout: _CifarLayout, root: Path | None, missing: list[str]) -> str:
    files = ", ".join((*layout.train_files, layout.test_file, layout.meta_file))
    url = f"https://www.cs.toronto.edu/~kriz/{layout.tarball}"
    if root is None:
        where = (f"No data root given: pass --data-root DIR or set ${DATA_ENV_VAR}=DIR, where "
                 f"DIR/{layout.subdir}/ holds {files}.")
        root_s = "DIR"
    else:
        where = (f"Missing under {root}: {', '.join(missing)}. Expected directory "
                 f"{root / layout.subdir} containing {files}.")
        root_s = str(root)
    return (f"{layout.pretty} not found. {where} These files come from the official "
            f"{layout.pretty} python tarball ({url}); extract it with "
            f"`tar xzf {layout.tarball} -C {root_s}`.")


def _read_batch(path: Path, layout: _CifarLayout) -> tuple[Tensor, Tensor]:
    """One pickle batch -> (uint8 [N,3,32,32], int64 [N]); DatasetCorrupt names the file."""
    try:
        with path.open("rb") as f:
            # The official files are Python-2 pickles of numpy arrays: encoding="bytes" keeps the
            # dict keys as bytes (b"data", b"labels"), as torchvision expects too.
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:  # any unpickling failure means the file is unusable
        raise DatasetCorrupt(f"{layout.pretty} file {path} is not a readable pickle: {e!r}") from e
    if not isinstance(obj, dict) or b"data" not in obj or layout.label_key not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DatasetCorrupt(f"{layout.pretty} file {path} should be a dict with keys b'data' and "
                             f"{layout.label_key!r}; got {keys}")
    try:
        data = torch.as_tensor(_to_numpy(obj[b"data"]))
        labels = torch.as_tensor(_to_numpy(obj[layout.label_key])).to(torch.int64)
    except Exception as e:
        raise DatasetCorrupt(f"{layout.pretty} file {path}: cannot convert data/labels: {e!r}") from e
    if data.dtype != torch.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetCorrupt(f"{layout.pretty} file {path}: b'data' must be uint8 [N, 3072], got "
                             f"{data.dtype} {list(data.shape)}")
    if labels.shape != (data.shape[0],):
        raise DatasetCorrupt(f"{layout.pretty} file {path}: {layout.label_key!r} has shape "
                             f"{list(labels.shape)}, expected [{data.shape[0]}]")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= layout.num_classes):
        raise DatasetCorrupt(f"{layout.pretty} file {path}: labels outside "
                             f"[0, {layout.num_classes})")
    # Rows are channel-major (1024 R, 1024 G, 1024 B), each 32x32 row-major.
    return data.view(-1, 3, 32, 32), labels


def _to_numpy(value: object):  # -> numpy.ndarray; numpy imported lazily (only needed here)
    import numpy as np

    return np.asarray(value)


def _read_meta(path: Path, layout: _CifarLayout) -> list[str]:
    try:
        with path.open("rb") as f:
            meta = pickle.load(f, encoding="bytes")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.names_key]]
    except Exception as e:
        raise DatasetCorrupt(f"{layout.pretty} file {path} is not a valid meta file with key "
                             f"{layout.names_key!r}: {e!r}") from e
    if len(names) != layout.num_classes:
        raise DatasetCorrupt(f"{layout.pretty} file {path}: {len(names)} class names, expected "
                             f"{layout.num_classes}")
    return names


def _normalise_uint8(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.to(torch.float32).div_(255.0) - m).div_(s)


def load_cifar(name: str, root: str | Path | None) -> DatasetSplits:
    """Load CIFAR-10 (``"cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) from ``root``.

    Layout (as torchvision writes it): ``root/cifar-10-batches-py/{data_batch_1..5, test_batch,
    batches.meta}`` or ``root/cifar-100-python/{train, test, meta}``. Images are returned as
    float32 [N,3,32,32] scaled to [0,1] and normalised per channel with ``CIFAR_STATS[name]``;
    labels int64. Raises ``DatasetMissing`` if files are absent and ``DatasetCorrupt`` if one is
    unreadable or malformed; never falls back to other data.
    """
    if name not in _CIFAR:
        raise ValueError(f"unknown CIFAR variant {name!r}; expected one of {sorted(_CIFAR)}")
    layout = _CIFAR[name]
    if root is None:
        raise DatasetMissing(_missing_message(layout, None, []))
    root = Path(root).expanduser()
    base = root / layout.subdir
    wanted = (*layout.train_files, layout.test_file, layout.meta_file)
    if not base.is_dir():
        missing = [f"{layout.subdir}/ (directory)"]
    else:
        missing = [f"{layout.subdir}/{f}" for f in wanted if not (base / f).is_file()]
    if missing:
        raise DatasetMissing(_missing_message(layout, root, missing))
    names = _read_meta(base / layout.meta_file, layout)
    parts = [_read_batch(base / f, layout) for f in layout.train_files]
    train_x = torch.cat([p[0] for p in parts])
    train_y = torch.cat([p[1] for p in parts])
    test_x, test_y = _read_batch(base / layout.test_file, layout)
    mean, std = CIFAR_STATS[name]
    desc = (f"{layout.pretty} from {base}: train={len(train_y)}, test={len(test_y)}, "
            f"{layout.num_classes} classes ({', '.join(names[:3])}, ...), normalised with "
            f"mean={mean} std={std}")
    return DatasetSplits(
        (_normalise_uint8(train_x, mean, std), train_y),
        (_normalise_uint8(test_x, mean, std), test_y),
        layout.num_classes, 32, desc)


# --------------------------------------------------------------------------------------------
# Batch iterator (airbench style: whole dataset is one tensor on the device)
# --------------------------------------------------------------------------------------------


def _rand_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def augment_batch(x: Tensor, generator: torch.Generator | None, pad: int = 2,
                  pad_mode: str = "reflect") -> Tensor:
    """Random crop (after ``pad`` px of ``pad_mode`` padding) + random horizontal flip.

    Works on any device with one gather, no Python loop over samples; randomness comes from
    ``generator`` (global RNG if ``None``) so it is reproducible.
    """
    n, _, h, w = x.shape
    gdev = _rand_device(generator)
    flip = (torch.rand(n, generator=generator, device=gdev) < 0.5).to(x.device)
    if pad > 0:
        off = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=gdev).to(x.device)
        xp = F.pad(x, (pad, pad, pad, pad), mode=pad_mode)
        rows = off[0].view(n, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
        cols = off[1].view(n, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
        idx = torch.arange(n, device=x.device).view(n, 1, 1)
        # Advanced indexing around a slice puts the indexed dims first: [n, h, w, c].
        x = xp[idx, :, rows, cols].permute(0, 3, 1, 2)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    return x.contiguous()


def batches(images: Tensor, labels: Tensor, batch_size: int, *, shuffle: bool,
            generator: torch.Generator | None, drop_last: bool, augment: bool = False,
            device: torch.device | str | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of ``(x, y)`` batches sliced from device-resident tensors.

    Put ``images``/``labels`` on the device once (or pass ``device`` to move them here; moving
    every epoch costs a copy). ``shuffle`` permutes with ``generator`` (global RNG if ``None``);
    ``augment`` applies ``augment_batch`` (2 px reflect-pad random crop + horizontal flip) with
    the same generator, so an epoch is fully determined by the generator's state.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in N")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is not None:
        images, labels = images.to(device), labels.to(device)
    n = images.shape[0]
    if shuffle:
        order = torch.randperm(n, generator=generator, device=_rand_device(generator))
        order = order.to(images.device)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            x, y = images[start:end], labels[start:end]
        else:
            idx = order[start:end]
            x, y = images[idx], labels[idx]
        if augment:
            x = augment_batch(x, generator)
        yield x, y

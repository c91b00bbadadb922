"""CIFAR-10/100 from torchvision's on-disk python pickle format, with errors that say exactly
what to put where (``DatasetMissing``) or what is wrong with a file (``DatasetCorrupt``)."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from harness.data.splits import DatasetSplits

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
CIFAR_CLASSES = {name: layout.num_classes for name, layout in _CIFAR.items()}


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
        data = torch.as_tensor(np.asarray(obj[b"data"]))
        labels = torch.as_tensor(np.asarray(obj[layout.label_key])).to(torch.int64)
    except Exception as e:
        raise DatasetCorrupt(
            f"{layout.pretty} file {path}: cannot convert data/labels to arrays: {e!r}") from e
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

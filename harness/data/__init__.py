"""Datasets: what a claim asks for (``DataSpec``) and the tensors it gets (``DatasetSplits``).

- ``synthetic``: the generated, capacity-rewarding task of the smoke profile (any resolution,
  bit-identical per seed; see its docstring and docs/data.md);
- ``cifar``: CIFAR-10/100 from torchvision's on-disk format, with clear missing/corrupt errors.

The batch iterator lives beside the training loop, in ``harness.batches``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

from harness.data.cifar import (  # noqa: F401
    CIFAR_CLASSES,
    CIFAR_STATS,
    DATA_ENV_VAR,
    DatasetCorrupt,
    DatasetMissing,
    load_cifar,
    resolve_data_root,
)
from harness.data.splits import DatasetSplits
from harness.data.synthetic import (  # noqa: F401
    DIFFICULTIES,
    SYNTH_MEAN,
    SYNTH_STATS,
    SYNTH_STD,
    synthetic_dataset,
)

# --------------------------------------------------------------------------------------------
# Data specs: what a claim asks for, independent of where the files are
# --------------------------------------------------------------------------------------------


SYNTHETIC_TRAIN_SIZE, SYNTHETIC_TEST_SIZE = 5000, 2000  # generated when a spec names no size
CIFAR_TRAIN_SIZE = 50_000  # CIFAR-10 and CIFAR-100 alike


@dataclass(frozen=True)
class DataSpec:
    """A dataset as a claim config names it; ``load_dataset`` turns it into tensors."""

    name: str  # "synthetic" | "cifar10" | "cifar100"
    train_size: int | None = None  # synthetic: how many; CIFAR: a prefix subset (None = all)
    test_size: int | None = None
    seed: int = 0  # synthetic only
    synthetic_classes: int = 10  # the generated task's; CIFAR has its own (``num_classes``)
    difficulty: str = "hard"  # synthetic only: "hard" or "medium" (see synthetic_dataset)

    @property
    def num_classes(self) -> int:
        """How many classes this data set has."""
        return CIFAR_CLASSES.get(self.name, self.synthetic_classes)

    @property
    def chance(self) -> float:
        """The accuracy of a guess: a net that learned nothing scores this."""
        return 1.0 / self.num_classes

    @property
    def train_count(self) -> int:
        """How many training images ``load_dataset`` gives for this spec."""
        if self.name == "synthetic":
            return self.train_size or SYNTHETIC_TRAIN_SIZE
        return min(self.train_size or CIFAR_TRAIN_SIZE, CIFAR_TRAIN_SIZE)

    def dry_run(self) -> DataSpec:
        """Tiny generated data: a dry run exercises the pipeline, not the dataset."""
        return DataSpec("synthetic", train_size=64, test_size=32, seed=self.seed,
                        difficulty=self.difficulty, synthetic_classes=self.num_classes)


def load_dataset(spec: DataSpec, resolution: int, data_root: str | Path | None,
                 download: bool = False) -> DatasetSplits:
    """The spec's data at ``resolution`` px. CIFAR is resampled (antialiased) when the
    resolution is not 32, as resolution scaling needs; generated data is rendered at it.
    ``download``: fetch missing CIFAR files (MD5-checked, atomic) into ``data_root``, or into
    ``download.default_data_root()`` when none is given; without it they must be there."""
    if spec.name == "synthetic":
        return synthetic_dataset(num_classes=spec.synthetic_classes, resolution=resolution,
                                 train_size=spec.train_size or SYNTHETIC_TRAIN_SIZE,
                                 test_size=spec.test_size or SYNTHETIC_TEST_SIZE, seed=spec.seed,
                                 difficulty=spec.difficulty)
    if spec.name not in ("cifar10", "cifar100"):
        raise ValueError(f"unknown dataset {spec.name!r}; use synthetic, cifar10 or cifar100")
    if download:
        from harness.data.download import default_data_root, fetch_cifar

        data_root = fetch_cifar(spec.name, Path(data_root) if data_root else default_data_root())
    data = load_cifar(spec.name, data_root)
    (xtr, ytr), (xte, yte) = data.train, data.test
    xtr, ytr = xtr[: spec.train_size], ytr[: spec.train_size]
    xte, yte = xte[: spec.test_size], yte[: spec.test_size]
    if resolution != data.resolution:
        def resize(x: Tensor) -> Tensor:
            return F.interpolate(x, size=(resolution, resolution), mode="bilinear",
                                 antialias=True, align_corners=False)
        xtr, xte = resize(xtr), resize(xte)
    return DatasetSplits((xtr, ytr), (xte, yte), data.num_classes, resolution,
                         f"{data.description} at {resolution}px, train={len(xtr)}, "
                         f"test={len(xte)}")

"""The tensors a dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True, eq=False)  # eq=False: tensor fields make == ambiguous
class DatasetSplits:
    """A train/test pair of ``(images float32 [N,3,H,W] normalised, labels int64 [N])``."""

    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    num_classes: int
    resolution: int
    description: str

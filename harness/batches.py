"""The training loop's batch iterator (airbench-style): tensors already on the device,
shuffled by a seeded generator, optional random-crop + flip augmentation on tensors."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

# Batch iterator (airbench style: whole dataset is one tensor on the device)
# --------------------------------------------------------------------------------------------


def _rand_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _to(t: Tensor, device: torch.device) -> Tensor:
    """One copy to ``device``; from pinned memory and non-blocking when that is a GPU, so the
    host can queue the next steps instead of waiting for the copy."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def draw_augmentation(n: int, generator: torch.Generator | None,
                      pad: int = 2) -> tuple[Tensor, Tensor | None]:
    """Per-sample horizontal flips (n,) and crop offsets (2, n) in [0, 2·pad], drawn from
    ``generator`` on its device (global RNG if ``None``), flips first."""
    gdev = _rand_device(generator)
    flip = torch.rand(n, generator=generator, device=gdev) < 0.5
    off = (torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=gdev)
           if pad > 0 else None)
    return flip, off


def crop_flip(x: Tensor, flip: Tensor, off: Tensor | None, pad: int = 2,
              pad_mode: str = "reflect") -> Tensor:
    """Random crop (after ``pad`` px of ``pad_mode`` padding) at offsets ``off`` and horizontal
    flip where ``flip``: one gather on ``x``'s device, no Python loop over samples."""
    n, _, h, w = x.shape
    if off is not None and pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad), mode=pad_mode)
        rows = off[0].view(n, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
        cols = off[1].view(n, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
        idx = torch.arange(n, device=x.device).view(n, 1, 1)
        # Advanced indexing around a slice puts the indexed dims first: [n, h, w, c].
        x = xp[idx, :, rows, cols].permute(0, 3, 1, 2)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    return x.contiguous()


def augment_batch(x: Tensor, generator: torch.Generator | None, pad: int = 2,
                  pad_mode: str = "reflect") -> Tensor:
    """Random crop + flip of one batch, drawn from ``generator`` (reproducible)."""
    flip, off = draw_augmentation(len(x), generator, pad)
    return crop_flip(x, _to(flip, x.device), None if off is None else _to(off, x.device), pad,
                     pad_mode)


def batches(images: Tensor, labels: Tensor, batch_size: int, *, shuffle: bool,
            generator: torch.Generator | None, drop_last: bool, augment: bool = False,
            device: torch.device | str | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of ``(x, y)`` batches sliced from device-resident tensors.

    Put ``images``/``labels`` on the device once (or pass ``device`` to move them here; moving
    every epoch costs a copy). ``shuffle`` permutes with ``generator`` (global RNG if ``None``);
    ``augment`` applies a 2 px reflect-pad random crop + horizontal flip drawn for the whole
    epoch after the permutation from the same generator, so an epoch is fully determined by
    the generator's state.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in N")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is not None:
        images, labels = images.to(device), labels.to(device)
    n = images.shape[0]
    # Every random draw of the epoch happens here, on the generator's device, and reaches the
    # data's device in one copy each: per-batch draws from a CPU generator would make every
    # step wait for a host-to-device copy.
    order = None
    if shuffle:
        order = _to(torch.randperm(n, generator=generator, device=_rand_device(generator)),
                    images.device)
    if augment:
        flip, off = draw_augmentation(n, generator)
        flip, off = _to(flip, images.device), _to(off, images.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            x, y = images[start:end], labels[start:end]
        else:
            idx = order[start:end]
            x, y = images[idx], labels[idx]
        if augment:
            x = crop_flip(x, flip[start:end], off[:, start:end])
        yield x, y

"""harness.batches: the loop's batch iterator (partition, determinism, augmentation)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.batches import augment_batch, batches

# --------------------------------------------------------------------------------------------
# Batch iterator
# --------------------------------------------------------------------------------------------


def _indexed(n: int, res: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    # Image i is constant i, so a batch's images can be traced back to their labels.
    labels = torch.arange(n)
    images = labels.float().view(n, 1, 1, 1).expand(n, 3, res, res).contiguous()
    return images, labels


def test_batches_cover_every_sample_once() -> None:
    x, y = _indexed(103)
    got = list(batches(x, y, 10, shuffle=True, generator=torch.Generator().manual_seed(0),
                       drop_last=False))
    assert [len(b[1]) for b in got] == [10] * 10 + [3]
    seen = torch.cat([b[1] for b in got])
    assert sorted(seen.tolist()) == list(range(103))
    assert not torch.equal(seen, torch.arange(103))  # actually shuffled
    for bx, by in got:
        assert torch.equal(bx[:, 0, 0, 0].long(), by)  # images stay paired with labels


def test_batches_drop_last_and_no_shuffle() -> None:
    x, y = _indexed(103)
    got = list(batches(x, y, 10, shuffle=False, generator=None, drop_last=True))
    assert [len(b[1]) for b in got] == [10] * 10
    assert torch.equal(torch.cat([b[1] for b in got]), torch.arange(100))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), bs=st.integers(1, 25), drop_last=st.booleans(),
       shuffle=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_batches_partition_property(n: int, bs: int, drop_last: bool, shuffle: bool,
                                    seed: int) -> None:
    x, y = _indexed(n, res=2)
    got = [b[1] for b in batches(x, y, bs, shuffle=shuffle,
                                 generator=torch.Generator().manual_seed(seed),
                                 drop_last=drop_last)]
    seen = torch.cat(got) if got else torch.empty(0, dtype=torch.int64)
    assert len(set(seen.tolist())) == len(seen)  # never repeats a sample
    if drop_last:
        assert all(len(b) == bs for b in got) and len(seen) == (n // bs) * bs
    else:
        assert len(seen) == n


def test_batches_deterministic_given_generator() -> None:
    x = torch.randn(50, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(50)

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        return list(batches(x, y, 16, shuffle=True, generator=g, drop_last=False, augment=True))

    a, b, c = epoch(7), epoch(7), epoch(8)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
               for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(a, c, strict=True))


def test_batches_state_advances_between_epochs() -> None:
    x, y = _indexed(40)
    g = torch.Generator().manual_seed(0)
    e1 = torch.cat([b[1] for b in batches(x, y, 8, shuffle=True, generator=g, drop_last=False)])
    e2 = torch.cat([b[1] for b in batches(x, y, 8, shuffle=True, generator=g, drop_last=False)])
    assert not torch.equal(e1, e2)


def test_augment_is_crop_and_flip_of_original() -> None:
    x = torch.randn(12, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    out = augment_batch(x, torch.Generator().manual_seed(3), pad=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    n_flipped = 0
    for i in range(len(x)):
        candidates = [(padded[i, :, r:r + 10, c:c + 10], flip)
                      for r in range(5) for c in range(5) for flip in (False, True)]
        matches = [flip for crop, flip in candidates
                   if torch.equal(out[i], crop.flip(2) if flip else crop)]
        assert matches, f"sample {i} is not a crop/flip of the input"
        n_flipped += matches[0]
    assert 0 < n_flipped < len(x)  # both branches exercised with this seed


def test_batches_augment_keeps_labels_and_device() -> None:
    x, y = _indexed(20)
    for bx, by in batches(x, y, 7, shuffle=True, generator=torch.Generator().manual_seed(0),
                          drop_last=False, augment=True, device="cpu"):
        assert bx.device.type == "cpu" and bx.shape[1:] == x.shape[1:]
        assert torch.equal(bx[:, 0, 0, 0].long(), by)  # constant images survive crop/flip


def test_batches_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        list(batches(torch.zeros(3, 3, 4, 4), torch.zeros(4), 2, shuffle=False, generator=None,
                     drop_last=False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_on_cuda_with_cpu_generator() -> None:
    x, y = _indexed(33)
    xs, ys = x.cuda(), y.cuda()
    got = list(batches(xs, ys, 8, shuffle=True, generator=torch.Generator().manual_seed(0),
                       drop_last=False, augment=True))
    assert all(b[0].is_cuda and b[1].is_cuda for b in got)
    assert sorted(torch.cat([b[1] for b in got]).tolist()) == list(range(33))


def test_an_epoch_draws_its_randomness_once_before_the_first_batch() -> None:
    # The permutation, then every sample's flip and crop, each drawn in one call and moved to
    # the data's device in one copy (no per-batch host-to-device copy on a GPU).
    from harness.batches import crop_flip, draw_augmentation

    x, y = _indexed(40, res=6)
    got = list(batches(x, y, 16, shuffle=True, generator=torch.Generator().manual_seed(3),
                       drop_last=True, augment=True))
    gen = torch.Generator().manual_seed(3)
    order = torch.randperm(40, generator=gen)
    flip, off = draw_augmentation(40, gen)
    for i, (xb, yb) in enumerate(got):
        sl = slice(16 * i, 16 * (i + 1))
        assert torch.equal(yb, y[order[sl]])
        assert torch.equal(xb, crop_flip(x[order[sl]], flip[sl], off[:, sl]))
    assert len(got) == 2

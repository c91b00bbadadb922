"""BN re-estimation of an extracted subnet starts afresh: its running statistics are those of
the calibration data through the subnet (a cumulative average over the batches), whatever
running statistics the supernet carried, which mix every subnet that ran (and here: garbage)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from harness import models
from harness.models import supernet as sn
from harness.supernet.sandwich import recalibrate_bn

BN = nn.modules.batchnorm._BatchNorm
BATCH, BATCHES = 16, 3


def _bns(net: nn.Module) -> list[tuple[str, BN]]:
    return [(n, m) for n, m in net.named_modules() if isinstance(m, BN)]


def _supernet(name: str) -> sn.Supernet:
    torch.manual_seed(0)
    net = models.build(name, resolution=8)
    with torch.no_grad():  # trained-looking weights, so the BN inputs are not all alike
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def _recalibrated(net: sn.Supernet, images: torch.Tensor,
                  record: dict[str, list[torch.Tensor]] | None = None) -> sn.Supernet:
    sub = sn.extract(net, sn.middle(net.cfg))
    handles = [] if record is None else [
        m.register_forward_pre_hook(lambda m, args, n=n: record.setdefault(n, []).append(
            args[0].detach().clone())) for n, m in _bns(sub)]
    recalibrate_bn(sub, images, batch_size=BATCH, batches=BATCHES)
    for h in handles:
        h.remove()
    return sub


def _garbage(net: nn.Module) -> None:
    """Running statistics no data gave, with the count of a long-trained supernet (so that a
    cumulative average that does not reset would barely move them)."""
    for i, (_, m) in enumerate(_bns(net)):
        m.running_mean.fill_(1e3 + i)
        m.running_var.fill_(1e4 + i)
        m.num_batches_tracked.fill_(10_000)


@pytest.mark.parametrize("name", ["cnn_supernet_tiny", "hybrid_supernet_tiny"])
def test_recalibrated_statistics_are_the_datas_and_ignore_the_supernets(name):
    images = torch.randn(BATCH * BATCHES, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    images = images * 2 + 0.5
    clean = _supernet(name)
    for _, m in _bns(clean):
        m.reset_running_stats()
    dirty = _supernet(name)
    _garbage(dirty)
    assert not torch.equal(_bns(dirty)[0][1].running_mean, _bns(clean)[0][1].running_mean)

    seen: dict[str, list[torch.Tensor]] = {}
    sub = _recalibrated(clean, images, seen)
    sub_dirty = _recalibrated(dirty, images)
    assert not sub.training and not sub_dirty.training
    assert len(_bns(sub)) >= 2
    for (n, m), (_, d) in zip(_bns(sub), _bns(sub_dirty), strict=True):
        # identical, bit for bit: nothing of the supernet's statistics survives
        assert torch.equal(d.running_mean, m.running_mean), f"{n}: running_mean"
        assert torch.equal(d.running_var, m.running_var), f"{n}: running_var"
        assert int(d.num_batches_tracked) == BATCHES, n
        # and they are the data's through the subnet: the mean over the calibration batches
        # of each batch's mean and (unbiased) variance, the cumulative average
        xs = seen[n]
        assert len(xs) == BATCHES
        dims = [0, *range(2, xs[0].dim())]
        mean = torch.stack([x.mean(dims) for x in xs]).mean(0)
        var = torch.stack([x.var(dims, unbiased=True) for x in xs]).mean(0)
        torch.testing.assert_close(d.running_mean, mean, rtol=1e-5, atol=1e-6, msg=n)
        torch.testing.assert_close(d.running_var, var, rtol=1e-5, atol=1e-6, msg=n)

"""The weight-sharing supernets: sampling, validation, extraction with inherited weights
(outputs equal the supernet's with that subnet active), standalone training, complexity."""

import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import models
from harness.complexity import measure
from harness.models import supernet as sn

NAMES = ["cnn_supernet_tiny", "hybrid_supernet_tiny"]


def _archs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [sn.largest(cfg), sn.smallest(cfg), sn.middle(cfg)] + [sn.random_arch(cfg, g)
                                                                  for _ in range(3)]


@pytest.mark.parametrize("name", NAMES)
def test_an_extracted_subnet_computes_what_the_supernet_computes_with_it_active(name):
    torch.manual_seed(0)
    net = models.build(name)
    x = torch.randn(6, 3, 16, 16)
    net.train()
    for arch in _archs(net.cfg)[:3]:  # give BN non-trivial running statistics
        net.set_arch(arch)
        net(x)
    for arch in _archs(net.cfg):
        sub = sn.extract(net, arch)
        net.set_arch(arch)
        for mode in ("eval", "train"):
            net.train(mode == "train")
            sub.train(mode == "train")
            torch.testing.assert_close(sub(x), net(x), rtol=1e-5, atol=1e-6,
                                       msg=f"{arch} in {mode} mode")


@pytest.mark.parametrize("name", NAMES)
def test_a_subnet_builds_fresh_with_the_extracted_shapes_and_trains_alone(name):
    net = models.build(name)
    arch = sn.middle(net.cfg)
    fresh = sn.build_subnet(name, arch)
    shapes = {k: v.shape for k, v in sn.extract(net, arch).state_dict().items()}
    assert shapes == {k: v.shape for k, v in fresh.state_dict().items()}
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    first = None
    for _ in range(10):
        loss = F.cross_entropy(fresh(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


@pytest.mark.parametrize("name", NAMES)
def test_sampling_is_seeded_and_stays_in_the_space(name):
    cfg = sn.MODEL_CFGS[name]
    a = [sn.sample(cfg, "random", torch.Generator().manual_seed(3)) for _ in range(2)]
    assert a[0] == a[1]
    g = torch.Generator().manual_seed(4)
    drawn = {sn.sample(cfg, "random", g) for _ in range(40)}
    assert len(drawn) > 10
    for arch in drawn | {sn.largest(cfg), sn.smallest(cfg), sn.middle(cfg)}:
        assert sn.validate(cfg, arch) == arch


def test_bad_subnets_and_spaces_are_clear_errors():
    cfg = sn.MODEL_CFGS["hybrid_supernet_tiny"]
    with pytest.raises(ValueError, match="unknown subnet spec 'biggest'"):
        sn.sample(cfg, "biggest")
    with pytest.raises(ValueError, match="needs a seeded"):
        sn.sample(cfg, "random")
    big = sn.largest(cfg)
    with pytest.raises(ValueError, match="2 stages, the supernet 3"):
        sn.validate(cfg, big[:2])
    wide = (big[0], dataclasses.replace(big[1], width=40), big[2])
    with pytest.raises(ValueError, match=r"stage 1 \(transformer\): width=40 is outside"):
        sn.validate(cfg, wide)
    with pytest.raises(ValueError, match="heads=5 is outside"):
        models.build("hybrid_supernet_tiny").set_arch(
            (big[0], big[1], dataclasses.replace(big[2], heads=5)))
    with pytest.raises(ValueError, match="conv stage: heads=2"):
        sn.validate(cfg, (dataclasses.replace(big[0], heads=2), big[1], big[2]))
    with pytest.raises(ValueError, match="not a StageArch"):
        sn.validate(cfg, ((2, 12), big[1], big[2]))
    with pytest.raises(ValueError, match="ascending"):
        sn.StageSpace("conv", widths=(16, 8), depths=(1,))
    with pytest.raises(ValueError, match="stage kind"):
        sn.StageSpace("mlp", widths=(8,), depths=(1,))
    with pytest.raises(ValueError, match="no heads"):
        sn.StageSpace("conv", widths=(8,), depths=(1,), heads=(2,))


def test_switchable_scales_start_small_and_only_the_active_width_learns():
    net = models.build("hybrid_supernet_tiny")
    block = net.stages[1].blocks[0]
    assert all(torch.equal(p, torch.full_like(p, net.cfg.layer_scale_init))
               for p in block.scale1.scales.values())
    arch = sn.middle(net.cfg)
    net.set_arch(arch)
    net(torch.randn(2, 3, 16, 16)).sum().backward()
    grads = {k: p.grad for k, p in block.scale1.scales.items()}
    assert grads.pop(f"w{arch[1].width}") is not None
    assert all(g is None for g in grads.values())


@pytest.mark.parametrize("name", NAMES)
def test_complexity_is_counted_and_grows_with_the_subnet(name):
    cfg = sn.MODEL_CFGS[name]
    big, mid, small = (sn.subnet_complexity(cfg, a) for a in
                       (sn.largest(cfg), sn.middle(cfg), sn.smallest(cfg)))
    assert big.flops > mid.flops > small.flops and big.params > mid.params > small.params
    # params: the supernet's, less the switchable scales of the widths the largest doesn't use
    net = models.build(name)
    unused = sum(p.numel() for n, p in net.named_parameters()
                 if ".scales." in n and not any(n.endswith(f"w{s.widths[-1]}") for s in cfg.stages
                                                 if f"stages.{cfg.stages.index(s)}." in n))
    assert big.params == sum(p.numel() for p in net.parameters()) - unused
    sub = sn.extract(net, sn.middle(cfg))
    assert mid.params == measure(sub, cfg.resolution).params
    assert mid.flops == measure(sub, cfg.resolution).flops + sn.attention_flops(cfg, sn.middle(cfg))


def test_the_two_supernets_are_of_similar_size():
    cnn, hyb = (sn.subnet_complexity(sn.MODEL_CFGS[n], sn.largest(sn.MODEL_CFGS[n]))
                for n in NAMES)
    assert abs(cnn.params / hyb.params - 1) < 0.1 and abs(cnn.flops / hyb.flops - 1) < 0.1
    cnn, hyb = (sn.subnet_complexity(sn.MODEL_CFGS[n], sn.largest(sn.MODEL_CFGS[n]))
                for n in ("cnn_supernet_cifar", "hybrid_supernet_cifar"))
    assert abs(cnn.params / hyb.params - 1) < 0.25 and abs(cnn.flops / hyb.flops - 1) < 0.25


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_any_sampled_subnet_extracts_to_the_same_function(seed):
    torch.manual_seed(seed % 1000)
    net = _net()
    arch = sn.random_arch(net.cfg, torch.Generator().manual_seed(seed))
    net.set_arch(arch)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(sn.extract(net, arch).eval()(x), net(x), rtol=1e-5, atol=1e-6)


@functools.lru_cache(maxsize=1)
def _net():
    return models.build("hybrid_supernet_tiny", resolution=8)

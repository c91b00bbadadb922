"""The loop's one extension point for a custom step (``train(..., step_fn=...)``): a step that
runs its own forward/backward passes keeps the loop's hooks, unscaling, divergence check and
cache; without one the loop is the plain step, bit for bit."""

import dataclasses
import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import models
from harness import train as tr
from harness.agc.study import AGCHook
from harness.data import synthetic_dataset
from harness.runs import cache as rc
from harness.runs import jobs as rj
from harness.sparse.masks import DynamicSparse, SparseConfig


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(resolution=16, train_size=256, test_size=128, seed=5,
                             difficulty="medium")


CFG = tr.TrainConfig(epochs=2, batch_size=32, lr=0.05, warmup_epochs=0.5, check_every=3)
MODEL = functools.partial(models.build, "vgg_tiny", stages=((8,), (16, 16)))


def plain_step(model, batch, ctx: tr.StepContext) -> torch.Tensor:
    """The default step, written as a step function."""
    x, y = batch
    with ctx.autocast():
        loss = F.cross_entropy(ctx.forward(x), y, label_smoothing=ctx.cfg.label_smoothing)
    ctx.backward(loss)
    return loss


def halves_step(model, batch, ctx: tr.StepContext) -> torch.Tensor:
    """Two backward passes, one per half batch, each half its loss / 2: the mean loss."""
    x, y = batch
    total = torch.zeros(())
    for sl in (slice(0, len(x) // 2), slice(len(x) // 2, len(x))):
        with ctx.autocast():
            loss = F.cross_entropy(ctx.forward(x[sl]), y[sl]) / 2
        ctx.backward(loss)
        total = total + loss.detach()
    return total


def _same(a: tr.TrainRecord, b: tr.TrainRecord) -> None:
    assert a.loss_curve == b.loss_curve
    assert a.test_acc == b.test_acc and a.test_loss == b.test_loss and a.steps == b.steps
    assert a.extra.keys() == b.extra.keys()


@pytest.mark.parametrize("hooks", ["none", "agc", "sparse"])
def test_the_plain_step_as_a_step_fn_is_bit_identical_to_the_default_path(data, hooks):
    def kw():  # fresh hooks per run: they bind to their model
        return {"none": {}, "agc": {"before_step": [AGCHook(0.01)]},
                "sparse": {"after_step": [DynamicSparse(SparseConfig(0.9, update_interval=3))]}
                }[hooks]

    default = tr.train(MODEL, data.train, data.test, CFG, progress=False, **kw())
    custom = tr.train(MODEL, data.train, data.test, CFG, progress=False, step_fn=plain_step,
                      **kw())
    _same(default, custom)
    if hooks == "sparse":
        assert default.extra["sparse"] == custom.extra["sparse"]


@dataclasses.dataclass
class Recording:
    """A step function with ``start``/``record``, like a hook."""

    started: int = 0
    calls: int = 0

    def start(self, run: tr.RunStart) -> None:
        self.started += 1
        self.total = run.total_steps

    def __call__(self, model, batch, ctx):
        assert ctx.step == self.calls
        self.calls += 1
        return plain_step(model, batch, ctx)

    def record(self) -> dict:
        return {"step_fn": {"started": self.started, "calls": self.calls, "total": self.total}}


def test_a_step_fn_is_started_and_its_record_stored(data):
    rec = tr.train(MODEL, data.train, data.test, CFG, progress=False, step_fn=Recording())
    assert rec.extra["step_fn"] == {"started": 1, "calls": rec.steps, "total": rec.steps}


def test_hooks_see_the_summed_unscaled_gradients_of_several_backward_passes(data, monkeypatch):
    """Two backward passes under an enabled GradScaler (2**12): the before-step hook sees their
    sum, unscaled: the full-batch mean-loss gradient."""
    monkeypatch.setattr(tr, "grad_scaler", lambda device, amp: torch.amp.GradScaler(
        "cpu", init_scale=2.0**12, enabled=True))
    seen = {}

    def grab(state: tr.StepState) -> None:
        if state.step == 0:
            seen["grads"] = [p.grad.detach().clone() for p in state.model.parameters()]
            seen["params"] = [p.detach().clone() for p in state.model.parameters()]

    cfg = dataclasses.replace(CFG, max_steps=1, label_smoothing=0.0)
    tr.train(_mlp, data.train, data.test, cfg, before_step=[grab], step_fn=halves_step,
             progress=False)
    model = _mlp()
    with torch.no_grad():
        for p, v in zip(model.parameters(), seen["params"], strict=True):
            p.copy_(v)
    x, y = next(iter(_first_batch(data, cfg)))
    F.cross_entropy(model(x), y).backward()
    for got, p in zip(seen["grads"], model.parameters(), strict=True):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-6)


def _mlp() -> nn.Module:  # no batch norm: half batches then sum to the full-batch gradient
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.ReLU(), nn.Linear(32, 10))


def _first_batch(data, cfg):
    from harness.batches import batches

    gen = torch.Generator().manual_seed(cfg.seed)
    return batches(*data.train, cfg.batch_size, shuffle=True, generator=gen, drop_last=True)


def nan_step(model, batch, ctx):
    plain_step(model, batch, ctx)
    return torch.tensor(math.nan)


def test_a_step_fn_returning_a_nan_loss_ends_the_run_as_diverged(data):
    rec = tr.train(MODEL, data.train, data.test, CFG, progress=False, step_fn=nan_step)
    assert rec.diverged and rec.steps == CFG.check_every


def test_a_jobs_step_fn_enters_its_code_and_runs_through_the_cache(data, tmp_path):
    job = rj.TrainJob({"t": "step_fn"}, MODEL, data.train, data.test,
                      dataclasses.replace(CFG, max_steps=4))
    with_fn = dataclasses.replace(job, step_fn=Recording())
    assert job.code() != with_fn.code()  # this test module defines the step function
    assert rc._defining_file(with_fn.step_fn) == Path(__file__).resolve()
    first = rj.run_jobs([with_fn], directory=tmp_path)[0]
    again = rj.run_jobs([dataclasses.replace(job, step_fn=Recording())], directory=tmp_path)[0]
    assert not first.from_cache and again.from_cache and again.extra == first.extra


def test_a_step_fn_without_gradients_trains_nothing():
    """The loop zeroes gradients before the step function: one that runs no backward leaves
    none, and SGD leaves the weights alone."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    seen = []

    def no_backward(model, batch, ctx):
        return ctx.forward(batch[0]).sum().detach() * 0

    cfg = tr.TrainConfig(epochs=1, batch_size=8, lr=0.1, warmup_epochs=0)
    tr.train(lambda: nn.Linear(4, 2), (x, y), (x, y), cfg, step_fn=no_backward, progress=False,
             before_step=[lambda s: seen.append([p.grad for p in s.model.parameters()])])
    assert seen and all(g is None for grads in seen for g in grads)

import dataclasses
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from harness import train as tr
from harness.data import synthetic_dataset


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(num_classes=10, resolution=16, train_size=512, test_size=256, seed=3)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


CFG = tr.TrainConfig(epochs=2, batch_size=64, lr=0.05, warmup_epochs=0.5, check_every=4)


def easy_split(n: int, seed: int):
    """Class k lights up channel k % 3 in quadrant k // 3: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = 0.3 * torch.randn(n, 3, 16, 16, generator=g)
    for i, k in enumerate(y.tolist()):
        r, c = divmod(k // 3, 2)
        x[i, k % 3, 8 * r:8 * r + 8, 8 * c:8 * c + 8] += 1.5
    return x, y


def test_training_learns_and_records_everything():
    cfg = tr.TrainConfig(epochs=4, batch_size=64, lr=0.1, warmup_epochs=0.5, check_every=4)
    rec = tr.train(small_cnn, easy_split(512, 0), easy_split(256, 1), cfg, progress=False)
    assert not rec.diverged and rec.steps == cfg.total_steps(512) == 32
    assert rec.test_acc > 0.5  # chance is 0.10
    assert rec.loss_curve[-1][1] < rec.loss_curve[0][1]
    assert len(rec.epoch_seconds) == 4 and rec.images_per_second > 0
    assert rec.peak_memory_mb is None or rec.peak_memory_mb > 0


def test_training_is_deterministic_on_cpu(data):
    a = tr.train(small_cnn, data.train, data.test, CFG, progress=False)
    b = tr.train(small_cnn, data.train, data.test, CFG, progress=False)
    assert a.loss_curve == b.loss_curve and a.test_acc == b.test_acc


def test_channels_last_on_the_cpu_trains_nhwc_and_follows_the_nchw_run(data):
    """Same math in another layout: the weights stay NHWC through the steps, the run is
    deterministic, and it tracks the NCHW run closely (other kernels, so not bit for bit)."""
    seen = []

    def layout(state):
        seen.append(state.model[0].weight.is_contiguous(memory_format=torch.channels_last))

    nhwc = dataclasses.replace(CFG, channels_last=True)
    a = tr.train(small_cnn, data.train, data.test, nhwc, progress=False, after_step=[layout])
    b = tr.train(small_cnn, data.train, data.test, nhwc, progress=False)
    nchw = tr.train(small_cnn, data.train, data.test, CFG, progress=False)
    assert seen and all(seen)
    assert a.loss_curve == b.loss_curve and a.test_acc == b.test_acc
    assert a.loss_curve[0][1] == pytest.approx(nchw.loss_curve[0][1], rel=1e-4)
    assert a.test_acc == pytest.approx(nchw.test_acc, abs=0.05)


def test_divergence_is_a_result_not_a_crash(data):
    exploding = tr.TrainConfig(epochs=3, batch_size=64, lr=1e8, warmup_epochs=0, check_every=2,
                               momentum=0.0, label_smoothing=0.0)
    rec = tr.train(small_cnn, data.train, data.test, exploding, progress=False)
    assert rec.diverged
    assert rec.steps < exploding.total_steps(512)  # stopped early
    last = rec.loss_curve[-1][1]
    assert not math.isfinite(last) or last > exploding.divergence_loss


def test_fewer_samples_than_one_batch_is_a_clear_error_not_a_hang():
    x, y = torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))
    cfg = tr.TrainConfig(epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="4 training samples for batch size 8"):
        tr.train(lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (x, y), (x, y), cfg,
                 progress=False)


def test_hooks_see_unscaled_gradients_before_the_step(data):
    seen = []

    def before(state: tr.StepState) -> None:
        grads = [p.grad for p in state.model.parameters()]
        assert all(g is not None for g in grads)
        seen.append(("before", state.step))

    def after(state: tr.StepState) -> None:
        seen.append(("after", state.step))

    cfg = tr.TrainConfig(epochs=1, batch_size=128, max_steps=3)
    tr.train(small_cnn, data.train, data.test, cfg, before_step=[before], after_step=[after],
             progress=False)
    assert seen == [("before", 0), ("after", 0), ("before", 1), ("after", 1),
                    ("before", 2), ("after", 2)]


def test_a_hook_that_zeroes_gradients_stops_learning(data):
    """The before-step hook really sits between backward and the optimizer step."""
    def freeze(state: tr.StepState) -> None:
        for p in state.model.parameters():
            p.grad.zero_()

    cfg = tr.TrainConfig(epochs=1, batch_size=64, max_steps=4, weight_decay=0.0, momentum=0.0)
    torch.manual_seed(0)
    init = [p.detach().clone() for p in small_cnn().parameters()]
    captured = {}

    def grab(state: tr.StepState) -> None:
        captured["params"] = [p.detach().clone() for p in state.model.parameters()]

    tr.train(small_cnn, data.train, data.test, cfg, before_step=[freeze], after_step=[grab],
             progress=False)
    assert all(torch.equal(a, b) for a, b in zip(init, captured["params"]))


def test_no_weight_decay_on_norms_and_biases():
    opt = tr.make_optimizer(small_cnn(), tr.TrainConfig(weight_decay=0.1))
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.ndim > 1 for p in decayed["params"])
    assert free["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in free["params"])


@given(st.integers(2, 500), st.floats(0, 0.5), st.sampled_from(["cosine", "exponential"]))
def test_schedule_warms_up_then_decays(total, warm_frac, schedule):
    warmup = int(total * warm_frac)
    f = [tr.lr_factor(s, total, warmup, schedule, 0.0) for s in range(total)]
    assert all(0 < x <= 1 + 1e-12 for x in f)
    assert all(a <= b for a, b in zip(f[:warmup], f[1:warmup + 1]))  # warm-up rises
    assert all(a >= b - 1e-12 for a, b in zip(f[warmup:], f[warmup + 1:]))  # then decays


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        tr.lr_factor(5, 10, 0, "linear", 0.0)


# --------------------------------------------------- the recipe, pinned element by element
# Tiny linear models on feature vectors (augment=False needs no image shape): each run takes
# milliseconds, and the expected values are computed by hand, independently of the loop.


def features(n: int, seed: int, d: int = 4, classes: int = 3, first_id: int = 0):
    """``x [n, 1 + d]``: column 0 is a sample id (``first_id + i``), the rest are features."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(first_id, first_id + n, dtype=torch.float32).unsqueeze(1)
    return torch.cat([ids, torch.randn(n, d, generator=g)], 1), torch.randint(0, classes, (n,), generator=g)


class IdLinear(nn.Module):
    """A linear classifier on ``x[:, 1:]`` that logs (sample ids, training, grad enabled) per call."""

    def __init__(self, d: int = 4, classes: int = 3):
        super().__init__()
        self.lin = nn.Linear(d, classes)
        self.calls: list[tuple[list[int], bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x[:, 0].long().tolist(), self.training, torch.is_grad_enabled()))
        return self.lin(x[:, 1:])


def built(store: list, factory=IdLinear):
    """A ``model_fn`` that keeps the model it builds in ``store``, for inspection after training."""
    def model_fn() -> nn.Module:
        store.append(factory())
        return store[-1]
    return model_fn


def smoothed_ce_and_grads(w, b, x, y, eps):
    """By hand, in float64: mean cross-entropy against ``(1 - eps) onehot + eps / C`` of the
    logits ``x w^T + b``, and its gradients with respect to ``w`` and ``b``."""
    w, b, x = w.double(), b.double(), x.double()
    logits = x @ w.T + b
    logp = logits - logits.logsumexp(1, keepdim=True)
    q = (1 - eps) * torch.eye(w.shape[0], dtype=torch.float64)[y] + eps / w.shape[0]
    loss = -(q * logp).sum(1).mean()
    dlogits = (logp.exp() - q) / len(x)
    return loss.item(), dlogits.T @ x, dlogits.sum(0)


def full_batch_step0(cfg: tr.TrainConfig, n: int = 8):
    """One full-batch run; returns (initial model, loss and grads the hook saw at step 0, data, record)."""
    train_set, seen, store = features(n, 11), {}, []

    def grab(state: tr.StepState) -> None:
        if state.step == 0:
            lin = state.model.lin
            seen.update(loss=state.loss.item(), w=lin.weight.detach().clone(), b=lin.bias.detach().clone(),
                        gw=lin.weight.grad.clone(), gb=lin.bias.grad.clone())

    rec = tr.train(built(store), train_set, features(8, 12, first_id=100), cfg, before_step=[grab],
                   progress=False)
    return seen, train_set, rec


def test_loss_is_mean_cross_entropy_with_the_configured_label_smoothing():
    """Recipe: the training loss is mean cross-entropy with ``label_smoothing=cfg.label_smoothing``
    (its value at step 0, its gradients, and the loss curve's first point)."""
    cfg = tr.TrainConfig(epochs=1, batch_size=8, label_smoothing=0.3, warmup_epochs=0, check_every=1)
    seen, (x, y), rec = full_batch_step0(cfg)
    loss, gw, gb = smoothed_ce_and_grads(seen["w"], seen["b"], x[:, 1:], y, 0.3)
    unsmoothed, _, _ = smoothed_ce_and_grads(seen["w"], seen["b"], x[:, 1:], y, 0.0)
    assert abs(loss - unsmoothed) > 1e-3  # the case tells the two apart
    assert seen["loss"] == pytest.approx(loss, rel=1e-6)
    assert rec.loss_curve[0] == (1, pytest.approx(loss, rel=1e-6))
    torch.testing.assert_close(seen["gw"].double(), gw, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(seen["gb"].double(), gb, rtol=1e-5, atol=1e-7)


def test_lr_factor_exact_values():
    """Recipe: linear warm-up ``(step + 1) / warmup``, then cosine from 1 to ``floor``, exponential
    from 1 to ``max(floor, 1e-3)``, or constant 1, over ``t = (step - warmup) / (total - warmup)``."""
    f = tr.lr_factor
    assert [f(s, 10, 4, "cosine", 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4, 10, 4, "cosine", 0.1) == 1.0
    assert f(7, 10, 4, "cosine", 0.1) == pytest.approx(0.55, rel=1e-12)  # t = 1/2
    assert f(6, 10, 4, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.75, rel=1e-12)  # t = 1/3
    assert f(10, 10, 4, "cosine", 0.1) == pytest.approx(0.1, rel=1e-12)  # t = 1: the floor
    assert f(5, 10, 0, "cosine", 0.0) == pytest.approx(0.5, rel=1e-12)
    assert f(0, 10, 0, "exponential", 0.01) == 1.0
    assert f(5, 10, 0, "exponential", 0.01) == pytest.approx(0.1, rel=1e-12)  # 0.01 ** (1/2)
    assert f(8, 10, 2, "exponential", 0.0) == pytest.approx(1e-3 ** 0.75, rel=1e-12)  # floor 1e-3
    assert f(1, 10, 2, "exponential", 0.5) == 1.0  # warm-up whatever the schedule
    assert [f(s, 6, 3, "constant", 0.5) for s in range(6)] == [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0]
    assert f(0, 5, 5, "cosine", 0.0) == 0.2  # warm-up over all steps
    assert f(0, 1, 0, "cosine", 0.0) == 1.0  # total == warmup: no division by zero


def expected_factor(step: int, total: int, warmup: int, schedule: str, floor: float) -> float:
    """The schedule as documented, written out again so that the loop is checked against it."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / (total - warmup)
    return {"cosine": floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2,
            "exponential": max(floor, 1e-3) ** t, "constant": 1.0}[schedule]


@pytest.mark.parametrize("schedule, warmup_epochs, warmup", [
    ("cosine", 0.45, 3),  # 0.45 * 6 steps/epoch = 2.7 -> round -> 3 (not int's 2)
    ("exponential", 0.45, 3),
    ("constant", 0.45, 3),
    ("cosine", 0.0, 0),
    ("constant", 5.0, 15),  # 30 warm-up steps capped at the 15 of the run
])
def test_optimizer_uses_lr_times_lr_factor_at_every_step(schedule, warmup_epochs, warmup):
    """Recipe: inside ``train`` every param group's lr at step s is ``lr * factor(s)``, with
    ``total = round(epochs * (n_train // batch_size))`` and
    ``warmup = min(total, round(warmup_epochs * steps_per_epoch))``."""
    lrs = []

    def record(state: tr.StepState) -> None:
        lrs.append([g["lr"] for g in state.optimizer.param_groups])

    # 50 training samples, batch 8: 6 steps per epoch; 2.45 epochs = 14.7 -> round -> 15 steps.
    cfg = tr.TrainConfig(epochs=2.45, batch_size=8, lr=0.2, schedule=schedule, warmup_epochs=warmup_epochs,
                         final_lr_fraction=0.05)
    rec = tr.train(built([]), features(50, 1), features(8, 2, first_id=100), cfg, before_step=[record],
                   progress=False)
    assert rec.steps == len(lrs) == 15
    for s, group_lrs in enumerate(lrs):
        want = 0.2 * expected_factor(s, 15, warmup, schedule, 0.05)
        assert group_lrs == [pytest.approx(want, rel=1e-12)] * 2, f"step {s}"
    if warmup:
        assert lrs[0][0] == pytest.approx(0.2 / warmup, rel=1e-12)  # warm-up starts at lr / warmup


class Tiny(nn.Module):
    """Weights (2-d), biases and norm gains (1-d), a scalar (0-d) and a frozen weight."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 5)
        self.norm = nn.LayerNorm(5)
        self.head = nn.Linear(5, 3)
        self.temperature = nn.Parameter(torch.tensor(1.5))
        self.frozen = nn.Parameter(torch.ones(3, 3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.lin(x[:, 1:]))) * self.temperature @ self.frozen


def test_weight_decay_groups_momentum_and_nesterov():
    """Recipe: weight decay on parameters with ndim >= 2 only (biases, gains, scalars get 0);
    frozen parameters are left out; momentum as configured; Nesterov only with momentum > 0."""
    m = Tiny()
    opt = tr.make_optimizer(m, tr.TrainConfig(weight_decay=0.1, momentum=0.7, nesterov=True))
    decayed, free = opt.param_groups
    assert [id(p) for p in decayed["params"]] == [id(m.lin.weight), id(m.head.weight)]
    assert {id(p) for p in free["params"]} == {id(p) for p in (m.lin.bias, m.norm.weight, m.norm.bias,
                                                               m.head.bias, m.temperature)}
    assert (decayed["weight_decay"], free["weight_decay"]) == (0.1, 0.0)
    assert all(g["momentum"] == 0.7 and g["nesterov"] is True for g in opt.param_groups)
    opt = tr.make_optimizer(m, tr.TrainConfig(momentum=0.7, nesterov=False))
    assert all(g["momentum"] == 0.7 and g["nesterov"] is False for g in opt.param_groups)
    opt = tr.make_optimizer(m, tr.TrainConfig(momentum=0.0, nesterov=True))  # would be an error
    assert all(g["momentum"] == 0.0 and g["nesterov"] is False for g in opt.param_groups)


@pytest.mark.parametrize("momentum, nesterov", [(0.9, True), (0.9, False), (0.0, True)])
def test_each_step_is_sgd_with_the_recipes_decay_and_momentum(momentum, nesterov):
    """Recipe, as the loop applies it: every update is SGD (dampening 0) with momentum, Nesterov
    as configured, and weight decay on the ndim >= 2 parameters only, from the hooks' gradients."""
    wd, before, after = 0.1, [], []

    def pre(state: tr.StepState) -> None:
        params = [p for p in state.model.parameters() if p.requires_grad]
        before.append([(p.detach().clone(), p.grad.clone(), g["lr"]) for p in params
                       for g in state.optimizer.param_groups if any(q is p for q in g["params"])])

    def post(state: tr.StepState) -> None:
        after.append([p.detach().clone() for p in state.model.parameters() if p.requires_grad])

    cfg = tr.TrainConfig(epochs=4, batch_size=8, lr=0.3, momentum=momentum, nesterov=nesterov,
                         weight_decay=wd, warmup_epochs=1)
    tr.train(built([], Tiny), features(8, 5), features(8, 6, first_id=100), cfg, before_step=[pre],
             after_step=[post], progress=False)
    assert len(before) == len(after) == 4
    bufs: list = [None] * len(before[0])
    for step, (pre_step, post_step) in enumerate(zip(before, after)):
        for i, ((p, grad, lr), got) in enumerate(zip(pre_step, post_step)):
            d = grad + (wd if p.ndim >= 2 else 0.0) * p
            if momentum:
                bufs[i] = d if bufs[i] is None else momentum * bufs[i] + d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            torch.testing.assert_close(got, p - lr * d, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, s=step, i=i: f"step {s}, param {i}: {m}")


class FixedLogits(nn.Module):
    """Logits ``table[x]`` in eval mode, class 1 boosted in train mode; logs (training, grad enabled)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.table[x] + 10.0 * torch.tensor([0.0, 1.0, 0.0]) if self.training else self.table[x]


@pytest.mark.parametrize("start_in_train_mode", [True, False])
def test_evaluate_is_eval_mode_no_grad_accuracy_and_unsmoothed_mean_ce(start_in_train_mode):
    """Recipe: ``evaluate`` runs in eval mode without gradients (restoring the previous mode) and
    returns exact accuracy and mean un-smoothed cross-entropy over all samples, in uneven batches."""
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25],
                          [0.2, 0.2, 0.6], [0.1, 0.8, 0.1], [0.45, 0.45, 0.1]], dtype=torch.float64)
    y = torch.tensor([0, 2, 2, 1, 2, 0, 0])
    model = FixedLogits(probs.log().float()).train(start_in_train_mode)
    cfg = tr.TrainConfig(eval_batch_size=3, label_smoothing=0.3)  # batches of 3, 3, 1
    acc, loss = tr.evaluate(model, (torch.arange(7), y), "cpu", cfg)
    assert acc == 4 / 7  # correct: samples 0, 2, 4, 6 (argmax ties go to the first class)
    assert loss == pytest.approx(-sum(math.log(probs[i, c]) for i, c in enumerate(y.tolist())) / 7, rel=1e-6)
    assert model.calls == [(False, False)] * 3
    assert model.training is start_in_train_mode
    assert (model.train()(torch.arange(7)).argmax(1) == y).float().mean() == 1 / 7  # modes differ


def test_training_sees_only_shuffled_full_train_batches_and_evaluates_on_test():
    """Recipe: training iterates the train split only, each epoch a fresh permutation drawn from
    ``torch.Generator().manual_seed(cfg.seed)``, in full batches (the last partial one is dropped);
    the test split is seen only by the final evaluation, in eval mode, without gradients."""
    store = []
    # 50 samples, batch 8: 6 batches per epoch, 2 samples left out; 3 epochs = 18 steps.
    cfg = tr.TrainConfig(epochs=3, batch_size=8, lr=0.05, seed=7, eval_batch_size=16)
    rec = tr.train(built(store), features(50, 1), features(20, 2, first_id=1000), cfg, progress=False)
    assert rec.steps == 18
    calls = store[0].calls
    train_calls = [ids for ids, training, _ in calls if training]
    assert len(train_calls) == 18, "one train-mode forward per step, none in evaluation"
    assert all(grad for _, training, grad in calls if training), "training forwards record gradients"
    assert [len(ids) for ids in train_calls] == [8] * 18, "full batches only"
    assert all(i < 50 for ids in train_calls for i in ids), "training sees the train split only"
    g = torch.Generator().manual_seed(7)
    for epoch in range(3):
        seen = sum(train_calls[6 * epoch:6 * epoch + 6], [])
        assert seen == torch.randperm(50, generator=g)[:48].tolist(), f"epoch {epoch}: not the seeded one"
    assert calls[18:] == [(list(range(1000, 1016)), False, False), (list(range(1016, 1020)), False, False)], \
        "then the test split, in order, in eval mode, without gradients"


def test_the_model_is_built_after_seeding_with_cfg_seed():
    """Recipe: ``torch.manual_seed(cfg.seed)`` right before ``model_fn()``: the initial weights are
    those of a model built after that seeding, whatever the global RNG state, and differ by seed."""
    def initial_weights(seed: int) -> torch.Tensor:
        first = []

        def grab(state: tr.StepState) -> None:
            if state.step == 0:
                first.append(state.model.lin.weight.detach().clone())

        torch.manual_seed(1234 + seed)  # a global state unlike the seeded one
        cfg = tr.TrainConfig(epochs=1, batch_size=8, seed=seed)
        tr.train(built([]), features(8, 3), features(8, 4, first_id=100), cfg, before_step=[grab],
                 progress=False)
        return first[0]

    torch.manual_seed(3)
    reference = IdLinear().lin.weight.detach()
    assert torch.equal(initial_weights(3), reference), "not built right after torch.manual_seed(cfg.seed)"
    assert not torch.equal(initial_weights(3), initial_weights(4)), "the seed does not change the init"


def test_hooks_see_unscaled_gradients_with_an_enabled_grad_scaler(monkeypatch):
    """Recipe: with a GradScaler enabled (scale 2**14), ``before_step`` hooks see the true gradients
    (``scaler.unscale_`` before the hooks), and the step applies them unscaled."""
    made = []

    def enabled_scaler(device, amp_dtype):
        made.append(torch.amp.GradScaler("cpu", init_scale=2.0**14, enabled=True))
        return made[-1]

    cfg = tr.TrainConfig(epochs=1, batch_size=8, lr=0.1, momentum=0.0, weight_decay=0.0, warmup_epochs=0,
                         label_smoothing=0.2)
    plain, (x, y), _ = full_batch_step0(cfg)
    monkeypatch.setattr(tr, "grad_scaler", enabled_scaler)
    after = []
    monkeypatch.setattr(tr, "evaluate", lambda model, *a: after.append(
        [p.detach().clone() for p in model.parameters()]) or (0.0, 0.0))
    scaled, _, _ = full_batch_step0(cfg)
    assert len(made) == 1 and made[0].is_enabled() and made[0].get_scale() == 2.0**14
    _, gw, gb = smoothed_ce_and_grads(scaled["w"], scaled["b"], x[:, 1:], y, 0.2)
    torch.testing.assert_close(scaled["gw"].double(), gw, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scaled["gb"].double(), gb, rtol=1e-5, atol=1e-7)
    assert torch.equal(scaled["gw"], plain["gw"]) and torch.equal(scaled["gb"], plain["gb"])
    w1, b1 = after[0]  # one step of plain SGD with the true gradient: not skipped, not scaled
    torch.testing.assert_close(w1, scaled["w"] - 0.1 * scaled["gw"])
    torch.testing.assert_close(b1, scaled["b"] - 0.1 * scaled["gb"])


# ------------------------------------------------------------ optimizer and clipping


def test_adamw_recipe_learns_and_weights_only_decay():
    cfg = tr.TrainConfig(epochs=4, batch_size=64, optimizer="adamw", lr=1e-2, weight_decay=0.05,
                         warmup_epochs=0.5, check_every=4)
    opt = tr.make_optimizer(small_cnn(), cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.param_groups[0]["betas"] == (cfg.momentum, 0.999)
    rec = tr.train(small_cnn, easy_split(512, 0), easy_split(256, 1), cfg, progress=False)
    assert rec.test_acc > 0.5


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        tr.make_optimizer(small_cnn(), tr.TrainConfig(optimizer="lamb"))


class _GradNorm:
    """A before_step hook: the global gradient norm the optimizer is about to apply."""

    def __init__(self):
        self.norms = []

    def __call__(self, state):
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))


@pytest.mark.parametrize("max_norm", [0.05, 1e-3])
def test_clip_grad_norm_bounds_the_applied_gradient(data, max_norm):
    seen, clipped = _GradNorm(), _GradNorm()
    base = tr.TrainConfig(epochs=1, batch_size=64, lr=0.05, warmup_epochs=0, max_steps=4)
    tr.train(small_cnn, data.train, data.test, base, before_step=[seen], progress=False)
    cfg = tr.TrainConfig(**{**base.__dict__, "clip_grad_norm": max_norm})
    tr.train(small_cnn, data.train, data.test, cfg, before_step=[clipped], progress=False)
    assert seen.norms[0] > max_norm  # unclipped, the first step's norm exceeds the bound
    assert clipped.norms[0] == pytest.approx(max_norm, rel=1e-4)  # same first batch, clipped
    assert all(n <= max_norm * (1 + 1e-4) for n in clipped.norms)


def test_no_clipping_by_default_leaves_training_bit_identical(data):
    """``clip_grad_norm=None`` (every existing recipe) runs exactly the loop as before."""
    a = tr.train(small_cnn, data.train, data.test, CFG, progress=False)
    big = tr.TrainConfig(**{**CFG.__dict__, "clip_grad_norm": 1e9})  # a bound never reached
    b = tr.train(small_cnn, data.train, data.test, big, progress=False)
    assert a.loss_curve == b.loss_curve and a.test_acc == b.test_acc

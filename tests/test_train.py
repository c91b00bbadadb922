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


def test_divergence_is_a_result_not_a_crash(data):
    exploding = tr.TrainConfig(epochs=3, batch_size=64, lr=1e8, warmup_epochs=0, check_every=2,
                               momentum=0.0, label_smoothing=0.0)
    rec = tr.train(small_cnn, data.train, data.test, exploding, progress=False)
    assert rec.diverged
    assert rec.steps < exploding.total_steps(512)  # stopped early
    last = rec.loss_curve[-1][1]
    assert not math.isfinite(last) or last > exploding.divergence_loss


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


def test_cache_reuses_finished_cells(tmp_path, data):
    calls = []

    def run():
        calls.append(1)
        return tr.train(small_cnn, data.train, data.test, tr.TrainConfig(max_steps=2),
                        progress=False)

    key = {"model": "small_cnn", "train": tr.TrainConfig(max_steps=2), "seed": 0}
    first = tr.cached(key, run, directory=tmp_path)
    again = tr.cached(key, run, directory=tmp_path)
    assert len(calls) == 1 and again.from_cache and not first.from_cache
    assert again.test_acc == first.test_acc and again.loss_curve == first.loss_curve
    tr.cached(key, run, directory=tmp_path, enabled=False)  # --no-cache recomputes
    assert len(calls) == 2
    tr.cached({**key, "seed": 1}, run, directory=tmp_path)  # another key is another cell
    assert len(calls) == 3


def test_corrupt_cache_entry_is_recomputed(tmp_path, data):
    key = {"k": 1}

    def run():
        return tr.train(small_cnn, data.train, data.test, tr.TrainConfig(max_steps=1),
                        progress=False)

    tr.cached(key, run, directory=tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_text("{broken")
    rec = tr.cached(key, run, directory=tmp_path)
    assert not rec.from_cache and tr.cached(key, run, directory=tmp_path).from_cache


def test_diverged_record_round_trips_through_the_cache(tmp_path):
    rec = tr.TrainRecord(math.nan, math.nan, True, 3, [(2, math.inf)], [0.1], 1.0, None, 0.1)
    got = tr.cached({"d": 1}, lambda: rec, directory=tmp_path)
    got = tr.cached({"d": 1}, lambda: rec, directory=tmp_path)
    assert got.from_cache and got.diverged and math.isnan(got.test_acc)


# ------------------------------------------------------------- many runs, side by side


def _jobs(data, seeds=(0, 1, 2)) -> list[tr.TrainJob]:
    import functools

    from harness.models import build

    # Built in the worker from picklable parts: the registry function and its overrides.
    model_fn = functools.partial(build, "anynet_tiny_x", stem_type="cifar", resolution=16)
    cfg = tr.TrainConfig(epochs=1, batch_size=64, lr=0.05, warmup_epochs=0.5)
    return [tr.TrainJob({"test": "run_jobs", "seed": s}, model_fn, data.train, data.test,
                        tr.TrainConfig(**{**cfg.__dict__, "seed": s}), cost=s)
            for s in seeds]


@pytest.mark.slow
def test_parallel_runs_match_serial_runs_exactly(data, tmp_path):
    serial = tr.run_jobs(_jobs(data), workers=1, directory=tmp_path / "a", progress=False)
    parallel = tr.run_jobs(_jobs(data), workers=2, directory=tmp_path / "b", progress=False)
    assert [r.test_acc for r in serial] == [r.test_acc for r in parallel]  # same order, bits
    assert [r.loss_curve for r in serial] == [r.loss_curve for r in parallel]
    assert len({r.test_acc for r in serial}) > 1  # the seeds differ: order would show
    again = tr.run_jobs(_jobs(data), workers=2, directory=tmp_path / "b", progress=False)
    assert all(r.from_cache for r in again)
    assert [r.test_acc for r in again] == [r.test_acc for r in parallel]


@pytest.mark.slow
def test_a_failing_worker_run_is_reraised(data, tmp_path):
    jobs = _jobs(data, seeds=(0, 1))
    bad_images = data.train[0][:, :1]  # one channel where the model expects three
    jobs[1] = tr.TrainJob(jobs[1].key, jobs[1].model_fn, (bad_images, data.train[1]), data.test,
                          jobs[1].cfg)
    with pytest.raises(RuntimeError, match="channels"):
        tr.run_jobs(jobs, workers=2, directory=tmp_path, progress=False)


def test_default_workers(monkeypatch):
    assert tr.default_workers("cuda") == 1
    monkeypatch.setenv("HARNESS_WORKERS", "3")
    assert tr.default_workers("cpu") == 3
    monkeypatch.delenv("HARNESS_WORKERS")
    assert tr.default_workers("cpu") >= 1


def test_jobs_with_equal_keys_train_once(data, tmp_path, monkeypatch):
    calls = []
    real = tr._run_job
    monkeypatch.setattr(tr, "_run_job", lambda job, *a: calls.append(job.key) or real(job, *a))
    jobs = _jobs(data, seeds=(0,))
    twin = tr.TrainJob(dict(jobs[0].key), jobs[0].model_fn, data.train, data.test, jobs[0].cfg)
    cfg = tr.TrainConfig(epochs=0.2, batch_size=64)
    jobs = [tr.TrainJob(j.key, j.model_fn, j.train_set, j.test_set, cfg) for j in (jobs[0], twin)]
    a, b = tr.run_jobs(jobs, workers=1, directory=tmp_path, progress=False)
    assert len(calls) == 1 and a is b

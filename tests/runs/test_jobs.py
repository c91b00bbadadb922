"""harness.runs.jobs: many training runs through the cache and an executor. Records from worker
processes are bit-identical to serial ones; equal keys train once; a failing or dying cell fails
alone, with its config; ``keep_weights`` jobs bring their trained weights back."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.nn as nn

from harness.data import synthetic_dataset
from harness.runs import jobs as rj
from harness.runs.cache import CorruptCacheEntry
from harness.runs.executors import CellsFailed, ExecutorSpec
from harness.train import TrainConfig, TrainRecord


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(num_classes=10, resolution=16, train_size=512, test_size=256, seed=3)


def _jobs(data, seeds=(0, 1, 2)) -> list[rj.TrainJob]:
    import functools

    from harness.models import build

    # Built in the worker from picklable parts: the registry function and its overrides.
    model_fn = functools.partial(build, "anynet_tiny_x", stem_type="cifar", resolution=16)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, warmup_epochs=0.5)
    return [rj.TrainJob({"test": "run_jobs", "seed": s}, model_fn, data.train, data.test,
                        TrainConfig(**{**cfg.__dict__, "seed": s}), cost=s)
            for s in seeds]


PROCESSES = ExecutorSpec("processes", workers=2)


def _determined(rec: TrainRecord) -> dict:
    """Every field a run's key determines: all but the machine's measurements."""
    return {k: v for k, v in dataclasses.asdict(rec).items() if k not in rj.MEASURED_FIELDS}


@pytest.mark.slow
def test_records_from_worker_processes_are_bit_identical_to_local_ones(data, tmp_path):
    serial = rj.run_jobs(_jobs(data), directory=tmp_path / "a", progress=False)
    parallel = rj.run_jobs(_jobs(data), executor=PROCESSES, directory=tmp_path / "b",
                           progress=False)
    assert [_determined(r) for r in serial] == [_determined(r) for r in parallel]  # bits, order
    assert {"test_acc", "test_loss", "loss_curve", "steps", "extra"} <= _determined(serial[0]).keys()
    assert len({r.test_acc for r in serial}) > 1  # the seeds differ: order would show
    assert not any(r.from_cache for r in serial + parallel)
    again = rj.run_jobs(_jobs(data), executor=PROCESSES, directory=tmp_path / "b", progress=False)
    assert all(r.from_cache for r in again)
    assert [_determined(r) for r in again] == [_determined(r) for r in parallel]


@pytest.mark.slow
def test_a_failing_worker_run_is_reraised(data, tmp_path):
    jobs = _jobs(data, seeds=(0, 1))
    bad_images = data.train[0][:, :1]  # one channel where the model expects three
    jobs[1] = rj.TrainJob(jobs[1].key, jobs[1].model_fn, (bad_images, data.train[1]), data.test,
                          jobs[1].cfg)
    with pytest.raises(CellsFailed, match="channels") as failed:
        rj.run_jobs(jobs, executor=PROCESSES, directory=tmp_path, progress=False)
    (failure,) = failed.value.failures
    assert "\"seed\": 1" in failure.label  # which cell: its config
    (ok,) = rj.run_jobs(jobs[:1], directory=tmp_path, progress=False)
    assert ok.from_cache  # the other cell finished and kept its record


def test_jobs_with_equal_keys_train_once(data, tmp_path, monkeypatch):
    calls = []
    real = rj._run_job
    monkeypatch.setattr(rj, "_run_job", lambda job, *a: calls.append(job.key) or real(job, *a))
    jobs = _jobs(data, seeds=(0,))
    twin = rj.TrainJob(dict(jobs[0].key), jobs[0].model_fn, data.train, data.test, jobs[0].cfg)
    cfg = TrainConfig(epochs=0.2, batch_size=64)
    jobs = [rj.TrainJob(j.key, j.model_fn, j.train_set, j.test_set, cfg) for j in (jobs[0], twin)]
    a, b = rj.run_jobs(jobs, directory=tmp_path, progress=False)
    assert len(calls) == 1 and a is b


# ------------------------------------------------------------------- kept weights


def _linear():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def test_kept_weights_come_back_with_the_record_and_a_missing_or_corrupt_file_retrains(
        tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 2, 2), torch.randint(0, 3, (16,))
    cfg = TrainConfig(epochs=1, batch_size=8, warmup_epochs=0)
    job = rj.TrainJob({"w": 1}, _linear, (x, y), (x, y), cfg, keep_weights=True)
    (first,) = rj.run_jobs([job], directory=tmp_path)
    weights = rj.trained_weights(first, tmp_path)
    assert not first.from_cache and set(weights) == {"1.weight", "1.bias"}
    (again,) = rj.run_jobs([job], directory=tmp_path)
    assert again.from_cache
    assert all(torch.equal(weights[k], v) for k, v in rj.trained_weights(again, tmp_path).items())
    pt = next(tmp_path.glob("*.pt"))
    pt.unlink()
    (after_loss,) = rj.run_jobs([job], directory=tmp_path)
    assert not after_loss.from_cache and pt.exists()
    pt.write_bytes(b"not a checkpoint")
    with pytest.warns(CorruptCacheEntry, match="unreadable cached weights"):
        (after_corrupt,) = rj.run_jobs([job], directory=tmp_path)
    assert not after_corrupt.from_cache
    assert all(torch.equal(weights[k], v) for k, v in
               rj.trained_weights(after_corrupt, tmp_path).items())  # same seed, same run
    plain = rj.TrainJob({"w": 2}, _linear, (x, y), (x, y), cfg)
    (no_weights,) = rj.run_jobs([plain], directory=tmp_path)
    with pytest.raises(ValueError, match="without keep_weights"):
        rj.trained_weights(no_weights, tmp_path)


def _exit_in_model():
    os._exit(7)


def test_a_cell_whose_worker_dies_fails_with_its_config_and_the_others_keep_theirs(tmp_path):
    x, y = torch.randn(16, 3, 2, 2), torch.randint(0, 3, (16,))
    cfg = TrainConfig(epochs=1, batch_size=8, warmup_epochs=0)
    good = rj.TrainJob({"dies": 0}, _linear, (x, y), (x, y), cfg, desc="good cell")
    bad = rj.TrainJob({"dies": 1}, _exit_in_model, (x, y), (x, y), cfg, desc="dying cell")
    with pytest.raises(CellsFailed) as failed:
        rj.run_jobs([bad, good], executor=ExecutorSpec("processes", workers=1),
                    directory=tmp_path, progress=False)
    (failure,) = failed.value.failures
    assert "dying cell" in failure.label and '"dies": 1' in failure.label
    assert "exit status 7" in failure.error and "dying cell" in str(failed.value)
    (kept,) = rj.run_jobs([good], directory=tmp_path)
    assert kept.from_cache

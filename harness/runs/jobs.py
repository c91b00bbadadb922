"""Many training runs, side by side: a ``TrainJob`` describes one run so that another process
can run it; ``run_jobs`` reads the cached records and has an executor (``runs.executors``)
train the rest, each into its cache entry (``runs.cache``); ``run_table`` is a study's grid as
a table. ``keep_weights`` jobs store their trained state_dict too (``SaveWeights``,
``trained_weights``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from harness.jsonable import to_jsonable
from harness.runs import executors
from harness.runs.cache import (
    CorruptCacheEntry,
    cache_dir,
    cache_key,
    cache_path,
    cached,
    code_fingerprint,
    load_cached,
)
from harness.runs.executors import CellsFailed, ExecutorSpec
from harness.train import RunStart, StepFn, StepHook, StepState, TrainConfig, TrainRecord, train

# ------------------------------------------------------------- many runs, side by side


@dataclass
class TrainJob:
    """One cached training run, described so that another process can run it: ``model_fn``
    and the hooks must pickle (module-level functions, ``functools.partial`` of them)."""

    key: dict[str, Any]  # the cache key: everything that determines the record
    model_fn: Callable[[], nn.Module]
    train_set: tuple[torch.Tensor, torch.Tensor]
    test_set: tuple[torch.Tensor, torch.Tensor]
    cfg: TrainConfig
    device: str = "cpu"
    before_step: Sequence[StepHook] = ()
    after_step: Sequence[StepHook] = ()
    desc: str = "train"
    cost: float = 0.0  # expected run time, any unit: the costliest start first
    keep_weights: bool = False  # also cache the trained state_dict (``trained_weights``)
    step_fn: StepFn | None = None  # a custom step (see ``StepContext``); must pickle too

    def code(self) -> str:
        """The fingerprint of the code this run depends on (see ``code_fingerprint``)."""
        extra = (self.step_fn,) if self.step_fn is not None else ()
        return code_fingerprint(self.model_fn, *self.before_step, *self.after_step, *extra)


def run_jobs(jobs: Sequence[TrainJob], *, executor: ExecutorSpec | None = None,
             use_cache: bool = True, directory: Path | None = None,
             progress: bool | None = None) -> list[TrainRecord]:
    """The records of ``jobs``, in order: cached ones read back, the rest trained (once per
    distinct key: duplicates share the record) by ``executor`` (default: ``local``, serial in
    this process; see ``harness.runs.executors`` for ``processes`` and ``slurm``).

    Each cell writes its record to the cache and this process reads it back from there, so a
    killed run resumes with what had finished, and every executor returns the same record: each
    run seeds itself and pins its CPU threads, so a record from a worker process is
    bit-identical to a serial run's; only the measured fields (``MEASURED_FIELDS``) change.
    Cells that fail (an error, a worker that dies, ``cell_timeout``) are raised together as one
    ``CellsFailed`` after the others have finished.
    """
    spec = executor or ExecutorSpec()
    directory = directory or cache_dir()  # resolved here: a Slurm job may not share our env
    keys = [cache_key(job.key, job.code(), job.device) for job in jobs]
    first_of: dict[str, int] = {}  # jobs with equal keys train once and share the record
    for i, key in enumerate(keys):
        first_of.setdefault(key, i)
    out: dict[int, TrainRecord] = {}
    for i in first_of.values():
        hit = load_cached(cache_path(keys[i], directory)) if use_cache else None
        if hit is not None and jobs[i].keep_weights and not _weights_ok(keys[i], directory):
            hit = None  # the record without its weights is no use to the caller
        if hit is not None:
            out[i] = hit
    todo = [i for i in first_of.values() if i not in out]
    in_process = spec.name == "local"
    cells = [executors.Task(_label(jobs[i], keys[i]),
                            functools.partial(_run_job, jobs[i], keys[i], use_cache, directory,
                                              progress if in_process else False),
                            cost=jobs[i].cost, device=jobs[i].device) for i in todo]
    outcomes = executors.run_tasks(cells, spec, progress=progress,
                                   log_dir=directory.parent / "submitit")
    failures = []
    for i, cell, trained in zip(todo, cells, outcomes, strict=True):
        if isinstance(trained, executors.TaskFailure):
            failures.append(trained)
            continue
        rec = load_cached(cache_path(keys[i], directory))  # what the cell wrote
        if rec is None:
            failures.append(executors.TaskFailure(cell.label, "the run finished but left no "
                                                  "readable cache entry"))
            continue
        rec.from_cache = not trained  # False: trained just now (maybe by a concurrent run)
        out[i] = rec
    if failures:
        raise CellsFailed(failures)
    return [out[first_of[key]] for key in keys]


# What a run measures about the machine, not what its key determines: the fields that differ
# between two runs of one key (in another process, on a loaded core). Everything else is
# bit-identical whichever executor ran it.
MEASURED_FIELDS = ("epoch_seconds", "images_per_second", "peak_memory_mb", "train_seconds",
                   "from_cache")


def _label(job: TrainJob, hashed: str) -> str:
    """A failed cell's name in messages: its description, cache key and (shortened) config."""
    doc = json.dumps(to_jsonable(job.key), sort_keys=True)
    return f"{job.desc} [cache key {hashed}] {doc if len(doc) <= 300 else doc[:297] + '...'}"


def run_table(cells: Sequence[Any], job: Callable[[Any], TrainJob],
              row: Callable[[Any, TrainRecord], dict[str, Any]], *,
              executor: ExecutorSpec | None = None, use_cache: bool = True):
    """A study's grid: one job per cell through ``run_jobs``, one table row per cell (a
    ``pandas.DataFrame``, in the cells' order)."""
    import pandas as pd

    cells = list(cells)
    records = run_jobs([job(c) for c in cells], executor=executor, use_cache=use_cache)
    return pd.DataFrame([row(c, r) for c, r in zip(cells, records, strict=True)])


def _run_job(job: TrainJob, hashed: str, use_cache: bool, directory: Path | None,
             progress: bool | None) -> bool:
    """Train ``job`` into its cache entry (a cell's call, in whatever process runs it); False
    when a finished record was there already (a concurrent run trained it while this waited)."""
    after = list(job.after_step)
    if job.keep_weights:
        after.append(SaveWeights(str(_weights_path(hashed, directory))))
        use_cache = use_cache and _weights_ok(hashed, directory)
    rec = cached(job.key, lambda: train(job.model_fn, job.train_set, job.test_set, job.cfg,
                                        device=job.device, before_step=job.before_step,
                                        after_step=after, progress=progress, desc=job.desc,
                                        step_fn=job.step_fn),
                 enabled=use_cache, directory=directory, hashed=hashed)
    return not rec.from_cache


# ----------------------------------------------------------------- trained weights


@dataclass
class SaveWeights:
    """An ``after_step`` hook that keeps the trained weights: when the run ends (``record``)
    it writes the model's state_dict to ``path`` atomically, beside the cached record."""

    path: str
    _model: nn.Module | None = field(default=None, init=False, repr=False)

    def start(self, run: RunStart) -> None:
        self._model = run.model

    def __call__(self, state: StepState) -> None:
        pass

    def record(self) -> dict[str, Any]:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({k: v.detach().cpu() for k, v in self._model.state_dict().items()}, tmp)
        os.replace(tmp, path)
        return {"weights": path.name}


def _weights_path(hashed: str, directory: Path | None) -> Path:
    return cache_path(hashed, directory).with_suffix(".pt")


def _weights_ok(hashed: str, directory: Path | None) -> bool:
    try:
        torch.load(_weights_path(hashed, directory), map_location="cpu", weights_only=True)
        return True
    except FileNotFoundError:
        return False
    except Exception as e:  # noqa: BLE001  (any unreadable file: retrain, say so)
        import warnings

        warnings.warn(f"unreadable cached weights {_weights_path(hashed, directory)} "
                      f"({type(e).__name__}: {e}); retraining", CorruptCacheEntry, stacklevel=2)
        return False


def trained_weights(record: TrainRecord, directory: Path | None = None) -> dict[str, Any]:
    """The state_dict a ``keep_weights`` job stored with ``record``."""
    name = record.extra.get("weights")
    if name is None:
        raise ValueError("this record was trained without keep_weights: no weights stored")
    path = (directory or cache_dir()) / name
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cached weights {path} unreadable ({type(e).__name__}: {e}); "
                                f"delete it to retrain") from e

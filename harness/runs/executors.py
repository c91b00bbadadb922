"""Where a study's cells run: one interface, three places.

A *cell* is one unit of work with a label (for ``jobs.run_jobs``: one ``TrainJob``, i.e. a
config × seed). ``run_tasks(cells, spec)`` runs them and returns, per cell, what its call
returned or a ``TaskFailure``; it never stops at the first failure, so every other cell keeps
its result. The caller raises ``CellsFailed`` listing them all.

- ``local``: in this process, one after another (the default on CUDA and with one worker).
- ``processes``: spawned worker processes; on the CPU one per usable core, on a multi-GPU box
  one per GPU, each pinned to its GPU through ``CUDA_VISIBLE_DEVICES`` (set in the child before
  torch initialises CUDA). A worker that dies (an exception is caught; ``os._exit``, SIGKILL,
  the OOM killer are not) fails only its cell, and a fresh worker takes the next one. Workers
  outlive one call: the next ``run_tasks`` reuses them (spawning one costs seconds, mostly
  importing torch), as long as what a spawned worker inherits is unchanged (see ``_pool``).
- ``slurm``: through submitit (``submitit.AutoExecutor``), one job per cell, submitted as one
  array. ``--executor-option cluster=local`` runs the same path on this machine (submitit's
  ``LocalExecutor``; ``cluster=debug`` runs in process), which is how it is tested.

A per-cell timeout (``cell_timeout``) stops a cell that hangs and reports it: ``processes`` and
``slurm`` kill the worker or cancel the job; ``local`` interrupts the run with SIGALRM (a hang
inside one C call ends when the call returns).

Results do not travel back through these executors: ``jobs.run_jobs`` has each cell write its
record to the on-disk cache and reads it from there, so a killed run resumes with what had
finished. A cell's call returns only a small value (whether it trained).

This module decides how runs are scheduled, never what they compute, so its source is not part
of the training cache's key (``cache.code_fingerprint``).
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.profiles import UsageError

EXECUTORS = ("local", "processes", "slurm")

# --executor-option names for slurm that read better than submitit's own; any other submitit
# parameter (timeout_min, mem_gb, cpus_per_task, slurm_qos, slurm_account, ...) passes through.
SLURM_ALIASES = {
    "partition": "slurm_partition",
    "gpus": "gpus_per_node",
    "array_parallelism": "slurm_array_parallelism",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
}
# Options the harness itself reads (not submitit parameters).
SLURM_OWN = ("cluster", "folder")
SUBMITIT_GENERIC = ("name", "timeout_min", "mem_gb", "nodes", "cpus_per_task", "gpus_per_node",
                    "tasks_per_node", "stderr_to_stdout")
SUBMITIT_CLUSTERS = ("slurm", "local", "debug")


# The full profile's CUDA training runs per GPU: its CIFAR nets are launch-bound (the host's
# kernel dispatch, not the GPU, sets a step's time; harness/costs.py prices both), so four
# processes interleave their launches on one GPU. The cost model assumes the same number.
CELLS_PER_GPU = 4


@dataclass(frozen=True)
class ExecutorSpec:
    """Which executor runs a study's un-cached cells, and how.

    ``options``: ``key=value`` pairs for the executor (slurm only; see ``SLURM_ALIASES``).
    ``workers``: processes at once (``processes``; None: one per core, or one per GPU).
    ``cell_timeout``: seconds a cell may run before it is stopped and reported (None: no
    limit). ``cells_per_gpu``: CUDA workers pinned to each GPU (``processes``). Small nets
    are launch-bound: one process leaves the GPU idle while its host dispatches kernels, and
    several interleave. Their records are the same; only their timings (epoch seconds) are
    skewed, so a study that reads those runs with 1."""

    name: str = "local"
    options: tuple[tuple[str, str], ...] = ()
    workers: int | None = None
    cell_timeout: float | None = None
    cells_per_gpu: int = 1

    def __post_init__(self) -> None:
        if self.name not in EXECUTORS:
            raise UsageError(f"unknown executor {self.name!r}; choose one of: "
                             f"{', '.join(EXECUTORS)}")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"workers must be at least 1, not {self.workers}")
        if self.cells_per_gpu < 1:
            raise UsageError(f"cells per GPU must be at least 1, not {self.cells_per_gpu}")
        if self.cell_timeout is not None and not self.cell_timeout > 0:
            raise UsageError(f"a cell timeout must be positive seconds, not {self.cell_timeout}")
        if self.options and self.name != "slurm":
            raise UsageError(f"--executor {self.name} takes no --executor-option (given: "
                             f"{', '.join(f'{k}={v}' for k, v in self.options)}); options are "
                             f"for --executor slurm")
        for key, _ in self.options:
            if not _known_slurm_option(key):
                raise UsageError(
                    f"unknown slurm executor option {key!r}; use one of "
                    f"{', '.join([*SLURM_OWN, *SLURM_ALIASES, *SUBMITIT_GENERIC])}, or a "
                    f"submitit parameter prefixed by its cluster (e.g. slurm_qos=high)")
        cluster = dict(self.options).get("cluster", "slurm")
        if cluster not in SUBMITIT_CLUSTERS:
            raise UsageError(f"cluster={cluster!r}: choose one of {', '.join(SUBMITIT_CLUSTERS)}")

    @property
    def option_dict(self) -> dict[str, str]:
        return dict(self.options)


def _known_slurm_option(key: str) -> bool:
    prefix = key.split("_", 1)[0]
    return (key in SLURM_OWN or key in SLURM_ALIASES or key in SUBMITIT_GENERIC
            or (prefix in SUBMITIT_CLUSTERS and "_" in key))


def parse_option(text: str) -> tuple[str, str]:
    """``"key=value"`` -> ``(key, value)``; anything else is a ``UsageError``."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value or not key.replace("_", "").isalnum():
        raise UsageError(f"--executor-option takes key=value (e.g. partition=gpu), not {text!r}")
    return key, value


def spec_from_options(name: str | None, options: Sequence[str], *, workers: int | None,
                      cell_timeout: float | None, device: str,
                      cells_per_gpu: int = 1) -> ExecutorSpec:
    """The spec the command line asks for. Without ``--executor``: ``processes`` for CPU runs
    with more than one worker (``--workers``, default one per core), and for CUDA runs with
    more than one cell per GPU (``--cells-per-gpu``); else ``local``."""
    pairs = tuple(parse_option(o) for o in options)
    if name is None:
        if pairs:
            raise UsageError("--executor-option needs --executor slurm")
        if device == "cuda":
            shared = cells_per_gpu > 1 or (workers or 1) > 1
            return ExecutorSpec("processes" if shared else "local",
                                workers=workers if shared else None, cell_timeout=cell_timeout,
                                cells_per_gpu=cells_per_gpu)
        n = workers if workers is not None else default_workers(device)
        name = "processes" if n > 1 else "local"
        return ExecutorSpec(name, workers=n if name == "processes" else None,
                            cell_timeout=cell_timeout)
    if workers is not None and name != "processes":
        raise UsageError(f"--workers sets the processes of --executor processes, not of "
                         f"--executor {name}")
    return ExecutorSpec(name, pairs, workers, cell_timeout, cells_per_gpu)


def default_workers(device: str) -> int:
    """Processes for CPU runs: one per usable core (each run pins its own threads), or
    ``$HARNESS_WORKERS``; CUDA: 1 (one process per GPU is ``--executor processes``)."""
    if device != "cpu":
        return 1
    env = os.environ.get("HARNESS_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Task:
    """One unit of work: ``call()`` runs it (it must pickle for ``processes`` and ``slurm``)."""

    label: str  # what it is, for messages: the run's description and cache key
    call: Callable[[], Any]
    cost: float = 0.0  # expected run time, any unit: the costliest start first
    device: str = "cpu"


@dataclass(frozen=True)
class TaskFailure:
    """A cell that did not finish: its label and the worker's error (or how it died)."""

    label: str
    error: str
    detail: str = field(default="", repr=False)  # the full traceback, when there is one


class CellsFailed(RuntimeError):
    """Raised once every other cell has finished: the cells that failed, each with its error.
    The finished cells' records are cached, so a rerun trains only these."""

    def __init__(self, failures: Sequence[TaskFailure]) -> None:
        self.failures = list(failures)
        lines = [f"{len(self.failures)} cell(s) failed; the others finished and are cached:"]
        lines += [f"- {f.label}:\n    " + f.error.replace("\n", "\n    ") for f in self.failures]
        super().__init__("\n".join(lines))


def run_tasks(cells: Sequence[Task], spec: ExecutorSpec, *, progress: bool | None = None,
              log_dir: Path | None = None) -> list[Any]:
    """Each cell's return value, or its ``TaskFailure``, in the cells' order. ``log_dir``:
    where submitit keeps its job folders (slurm)."""
    if not cells:
        return []
    if spec.name == "slurm":
        return _run_slurm(cells, spec, log_dir or Path(".cache") / "submitit")
    workers = spec.workers or _default_processes(cells, spec.cells_per_gpu)
    if spec.name == "processes" and min(workers, len(cells)) >= 1:
        return _run_processes(cells, spec, min(workers, len(cells)), progress)
    return _run_local(cells, spec)


def _last_lines(text: str, n: int = 4) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


# ------------------------------------------------------------------------- local


class TaskTimeout(Exception):
    pass


def _run_local(cells: Sequence[Task], spec: ExecutorSpec) -> list[Any]:
    out: list[Any] = []
    for cell in cells:
        try:
            with _alarm(spec.cell_timeout):
                out.append(cell.call())
        except TaskTimeout:
            out.append(TaskFailure(cell.label, f"timed out after {spec.cell_timeout:g} s "
                                               f"(--cell-timeout) and was stopped"))
        except Exception as e:  # noqa: BLE001 - reported with the cell; the others go on
            out.append(TaskFailure(cell.label, f"{type(e).__name__}: {e}",
                                   traceback.format_exc()))
    return out


class _alarm:
    """Raise ``TaskTimeout`` in this (main) thread after ``seconds`` (SIGALRM)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        if self.seconds is None:
            return
        if not hasattr(signal, "setitimer"):
            raise UsageError("--cell-timeout with the local executor needs SIGALRM (POSIX); "
                             "use --executor processes")

        def expire(signum, frame):
            raise TaskTimeout

        self._old = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc: object) -> None:
        if self.seconds is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)


# --------------------------------------------------------------------- processes


def visible_gpus(env: dict[str, str] | None = None, count: int | None = None) -> list[str]:
    """The GPU ids workers may be pinned to: ``CUDA_VISIBLE_DEVICES``'s entries when set (they
    may be UUIDs), else ``0 .. count-1`` (``count``: torch's device count when None)."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    if count is None:
        import torch

        count = torch.cuda.device_count()
    return [str(i) for i in range(count)]


def worker_gpus(n_workers: int, gpus: Sequence[str], per_gpu: int = 1) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` of each worker: at most ``per_gpu`` workers share a GPU,
    spread round-robin. More would skew each other's timings beyond what was asked: a clear
    error instead."""
    if n_workers > per_gpu * len(gpus):
        raise UsageError(f"{n_workers} CUDA workers for {len(gpus)} visible GPU(s) "
                         f"({','.join(gpus) or 'none'}) at {per_gpu} per GPU; use --workers "
                         f"{max(1, per_gpu * len(gpus))} or fewer, or more --cells-per-gpu")
    return [gpus[i % len(gpus)] for i in range(n_workers)]


def _default_processes(cells: Sequence[Task], per_gpu: int = 1) -> int:
    if any(c.device == "cuda" for c in cells):
        return max(1, per_gpu * len(visible_gpus()))
    return default_workers("cpu")


def _worker_main(conn, gpu: str | None) -> None:
    """A worker: pin the GPU (before anything initialises CUDA), then run cells until told to
    stop. Ctrl-C is the parent's to handle: it stops the workers."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            call = conn.recv()
        except EOFError:  # the parent is gone
            return
        if call is None:
            return
        try:
            result: tuple[str, Any] = ("ok", call())
        except BaseException as e:  # noqa: BLE001 - reported to the parent with the cell
            result = ("error", f"{type(e).__name__}: {e}", traceback.format_exc())
        conn.send(result)


@dataclass
class _Slot:
    gpu: str | None
    process: Any = None
    conn: Any = None
    cell: int | None = None
    started: float = 0.0

    def start(self, ctx) -> None:
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, self.gpu), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def stop(self, hard: bool = False) -> None:
        if self.process is None:
            return
        if not hard:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()
        self.process = self.conn = None


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the OOM killer sends SIGKILL: out of memory?)" if name == "SIGKILL" else ""
        return f"its worker process was killed by {name}{hint}"
    return f"its worker process died with exit status {exitcode}"


@dataclass
class _Pool:
    key: tuple | None = None
    slots: list[_Slot] = field(default_factory=list)


_POOL = _Pool()


def _pool(gpus: Sequence[str | None]) -> list[_Slot]:
    """The worker slots for ``gpus`` (one per worker), reused from the last call when nothing a
    spawned worker inherits has changed since: its GPU, the environment (``HARNESS_CACHE``, the
    kernel-path variables...), the working directory and ``sys.path``. Otherwise the old
    workers are stopped and fresh ones are spawned as needed."""
    key = (tuple(gpus), tuple(sorted(os.environ.items())), os.getcwd(), tuple(sys.path))
    if _POOL.key != key:
        shutdown_workers()
        _POOL.key, _POOL.slots = key, [_Slot(g) for g in gpus]
    return _POOL.slots


def shutdown_workers(hard: bool = False) -> None:
    """Stop the pooled worker processes (also done at exit); ``hard``: kill them at once."""
    for s in _POOL.slots:
        s.stop(hard=hard)
    _POOL.key, _POOL.slots = None, []


atexit.register(shutdown_workers)


def _run_processes(cells: Sequence[Task], spec: ExecutorSpec, n: int,
                   progress: bool | None) -> list[Any]:
    import multiprocessing as mp
    from multiprocessing.connection import wait

    from harness.progress import progress_bar

    cuda = any(c.device == "cuda" for c in cells)
    gpus = worker_gpus(n, visible_gpus(), spec.cells_per_gpu) if cuda else [None] * n
    # spawn, not fork: a forked child inherits the parent's torch thread pools and locks.
    ctx = mp.get_context("spawn")
    slots = _pool(gpus)
    results: list[Any] = [None] * len(cells)
    todo = deque(sorted(range(len(cells)), key=lambda i: -cells[i].cost))  # longest first
    where = "GPUs" if cuda else "processes"
    try:
        with progress_bar(len(cells), f"{len(cells)} runs on {n} {where}", progress) as bar:
            while todo or any(s.cell is not None for s in slots):
                for s in slots:
                    while s.cell is None and todo:
                        i = todo.popleft()
                        if not s.alive():
                            s.start(ctx)
                        try:
                            s.conn.send(cells[i].call)
                        except Exception as e:  # noqa: BLE001 - e.g. a call that cannot pickle
                            results[i] = TaskFailure(cells[i].label, f"could not be sent to a "
                                                     f"worker process: {type(e).__name__}: {e}")
                            bar.update(1)
                            continue
                        s.cell, s.started = i, time.monotonic()
                busy = [s for s in slots if s.cell is not None]
                wait_s = None
                if spec.cell_timeout is not None and busy:
                    wait_s = max(0.0, min(s.started + spec.cell_timeout for s in busy)
                                 - time.monotonic())
                wait([s.conn for s in busy] + [s.process.sentinel for s in busy], wait_s)
                for s in busy:
                    i = s.cell
                    if s.conn.poll():
                        try:
                            status, *payload = s.conn.recv()
                        except EOFError:
                            status, payload = "died", []
                        if status == "ok":
                            results[i] = payload[0]
                        elif status == "error":
                            results[i] = TaskFailure(cells[i].label, payload[0], payload[1])
                        else:
                            s.process.join()
                            results[i] = TaskFailure(cells[i].label, _death(s.process.exitcode))
                            s.stop(hard=True)
                    elif not s.alive():
                        s.process.join()
                        results[i] = TaskFailure(cells[i].label, _death(s.process.exitcode))
                        s.stop(hard=True)
                    elif (spec.cell_timeout is not None
                          and time.monotonic() - s.started >= spec.cell_timeout):
                        s.stop(hard=True)
                        results[i] = TaskFailure(cells[i].label, f"timed out after "
                                                 f"{spec.cell_timeout:g} s (--cell-timeout); "
                                                 f"its worker was killed")
                    else:
                        continue
                    s.cell = None
                    bar.update(1)
    finally:
        if any(s.cell is not None for s in slots):  # interrupted mid-cell: stop them all now
            shutdown_workers(hard=True)
    return results


# ------------------------------------------------------------------------- slurm


def _typed(value: str) -> Any:
    """An option's value as submitit wants it: int, float, bool or the string."""
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def submitit_parameters(spec: ExecutorSpec) -> dict[str, Any]:
    """The ``update_parameters`` of ``spec`` (aliases resolved, values typed). The cell
    timeout, when set and no ``timeout_min`` is, becomes the jobs' time limit too."""
    params = {SLURM_ALIASES.get(k, k): _typed(v) for k, v in spec.options if k not in SLURM_OWN}
    if spec.cell_timeout is not None and "timeout_min" not in params:
        params["timeout_min"] = max(1, math.ceil(spec.cell_timeout / 60))
    return params


def _job_error(e: Exception) -> str:
    """The worker's own error from a submitit failure: the traceback's last line (its message
    wraps the traceback between dashed rules, then points at the logs), else the whole text."""
    parts = str(e).split("\n----------------------\n")
    trace = parts[1] if len(parts) >= 3 else str(e)
    return _last_lines(trace, 1 if len(parts) >= 3 else 4)


def _run_slurm(cells: Sequence[Task], spec: ExecutorSpec, log_dir: Path) -> list[Any]:
    try:
        import submitit
    except ImportError:
        raise UsageError("--executor slurm needs submitit: pip install -e '.[slurm]' (or "
                         "pip install submitit)") from None

    opts = spec.option_dict
    folder = Path(opts.get("folder", log_dir)) / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=opts.get("cluster", "slurm"))
    try:
        executor.update_parameters(**submitit_parameters(spec))
    except (NameError, AssertionError, ValueError, TypeError) as e:
        raise UsageError(f"--executor-option rejected by submitit: {e}") from None
    with executor.batch():  # one array job on Slurm (slurm_array_parallelism caps it)
        jobs = [executor.submit(cell.call) for cell in cells]
    results: list[Any] = [None] * len(cells)
    running_since: dict[int, float] = {}
    pending = set(range(len(cells)))
    try:
        while pending:
            for i in sorted(pending):
                job = jobs[i]
                if job.done():
                    try:
                        results[i] = job.result()
                    except Exception as e:  # noqa: BLE001 - failed, killed or timed-out job
                        results[i] = TaskFailure(cells[i].label, f"{_job_error(e)} (job "
                                                 f"{job.job_id}, logs: {job.paths.folder})",
                                                 str(e))
                    pending.discard(i)
                elif spec.cell_timeout is not None:
                    if i not in running_since and job.state == "RUNNING":
                        running_since[i] = time.monotonic()  # queue time does not count
                    if time.monotonic() - running_since.get(i, math.inf) >= spec.cell_timeout:
                        job.cancel(check=False)
                        results[i] = TaskFailure(cells[i].label, f"timed out after "
                                                 f"{spec.cell_timeout:g} s (--cell-timeout); "
                                                 f"job {job.job_id} cancelled")
                        pending.discard(i)
            if pending:
                time.sleep(0.5)
    except BaseException:
        for i in pending:  # stopped on purpose: no orphan jobs left training
            jobs[i].cancel(check=False)
        raise
    return results

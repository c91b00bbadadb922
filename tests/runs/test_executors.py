"""harness.runs.executors: the spec from the command line, and each executor's contract: results in
order, a failing or dying cell fails alone (with its error), a hanging cell is stopped, CUDA
workers are pinned one GPU each. The cells here are tiny functions (no torch in the workers);
the same executors running real training cells are tested in tests/runs/test_jobs.py and
below with a real study's cells through submitit."""

from __future__ import annotations

import os
import signal
import time

import pytest

from harness.profiles import UsageError
from harness.runs import executors as ex

# ------------------------------------------------------------------ cells (module level: they
# must pickle into spawned workers)


def square(x: int) -> int:
    return x * x


def fail(x: int) -> int:
    raise ValueError(f"bad input {x}")


def exit_hard(code: int) -> int:
    os._exit(code)


def kill_self(_: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


def hang(_: int) -> int:
    time.sleep(600)
    return 0


def pid(_: int) -> int:
    return os.getpid()


def visible_devices(_: int) -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def cell(fn, x, device: str = "cpu") -> ex.Task:
    import functools

    return ex.Task(f"{fn.__name__}({x})", functools.partial(fn, x), cost=x, device=device)


# --------------------------------------------------------------------------- the spec


def test_the_default_spec_follows_the_device_and_workers():
    assert ex.spec_from_options(None, [], workers=3, cell_timeout=None, device="cpu") == \
        ex.ExecutorSpec("processes", workers=3)
    assert ex.spec_from_options(None, [], workers=1, cell_timeout=None, device="cpu").name == "local"
    assert ex.spec_from_options(None, [], workers=None, cell_timeout=5, device="cuda") == \
        ex.ExecutorSpec("local", cell_timeout=5)
    slurm = ex.spec_from_options("slurm", ["partition=gpu", "timeout_min=30", "gpus=1",
                                           "array_parallelism=16", "slurm_qos=high"],
                                 workers=None, cell_timeout=None, device="cuda")
    assert ex.submitit_parameters(slurm) == {"slurm_partition": "gpu", "timeout_min": 30,
                                             "gpus_per_node": 1, "slurm_array_parallelism": 16,
                                             "slurm_qos": "high"}
    timed = ex.ExecutorSpec("slurm", (("cluster", "local"),), cell_timeout=90)
    assert ex.submitit_parameters(timed) == {"timeout_min": 2}  # the limit covers the timeout


@pytest.mark.parametrize(("args", "message"), [
    (("bogus", []), "unknown executor 'bogus'"),
    (("slurm", ["partition"]), "takes key=value"),
    (("slurm", ["=gpu"]), "takes key=value"),
    (("slurm", ["nonsense=1"]), "unknown slurm executor option 'nonsense'"),
    (("slurm", ["cluster=aws"]), "cluster='aws'"),
    (("local", ["partition=gpu"]), "--executor local takes no --executor-option"),
    ((None, ["partition=gpu"]), "needs --executor slurm"),
])
def test_bad_executor_input_is_a_usage_error(args, message):
    with pytest.raises(UsageError, match=message):
        ex.spec_from_options(*args, workers=None, cell_timeout=None, device="cpu")


def test_workers_belong_to_processes_and_timeouts_are_positive():
    with pytest.raises(UsageError, match="--workers sets the processes of --executor processes"):
        ex.spec_from_options("slurm", [], workers=2, cell_timeout=None, device="cpu")
    with pytest.raises(UsageError, match="positive"):
        ex.ExecutorSpec("local", cell_timeout=0)


def test_cuda_workers_are_pinned_one_gpu_each():
    assert ex.visible_gpus({}, count=3) == ["0", "1", "2"]
    assert ex.visible_gpus({"CUDA_VISIBLE_DEVICES": "4, 6"}, count=8) == ["4", "6"]
    assert ex.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, count=8) == []  # none visible
    assert ex.worker_gpus(2, ["4", "6", "7"]) == ["4", "6"]
    with pytest.raises(UsageError, match="3 CUDA workers for 2 visible GPU"):
        ex.worker_gpus(3, ["4", "6"])


def test_each_cuda_worker_sees_only_its_gpu(monkeypatch):
    # No GPU needed: the cell reads the variable the worker set before anything touched CUDA.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    cells = [cell(visible_devices, i, device="cuda") for i in range(4)]
    got = ex.run_tasks(cells, ex.ExecutorSpec("processes"), progress=False)
    assert set(got) == {"3", "5"}


# ----------------------------------------------------------------- running, failing, hanging


@pytest.mark.parametrize("name", ["local", "processes"])
def test_results_come_back_in_order_and_a_failure_fails_only_its_cell(name):
    cells = [cell(square, 2), cell(fail, 3), cell(square, 4)]
    got = ex.run_tasks(cells, ex.ExecutorSpec(name, workers=2 if name == "processes" else None),
                       progress=False)
    assert got[0] == 4 and got[2] == 16
    assert isinstance(got[1], ex.TaskFailure) and got[1].label == "fail(3)"
    assert got[1].error == "ValueError: bad input 3" and "Traceback" in got[1].detail


@pytest.mark.parametrize(("fn", "how"), [(exit_hard, "died with exit status 3"),
                                         (kill_self, "killed by SIGKILL")])
def test_a_worker_that_dies_fails_its_cell_and_a_fresh_worker_takes_the_rest(fn, how):
    cells = [cell(fn, 3), cell(square, 2), cell(square, 1)]
    got = ex.run_tasks(cells, ex.ExecutorSpec("processes", workers=1), progress=False)
    assert isinstance(got[0], ex.TaskFailure) and how in got[0].error
    assert got[1:] == [4, 1]


@pytest.mark.parametrize("name", ["local", "processes"])
def test_a_hanging_cell_is_stopped_at_the_timeout_and_reported(name):
    cells = [cell(hang, 0), cell(square, 3)]
    got = ex.run_tasks(cells, ex.ExecutorSpec(name, workers=1 if name == "processes" else None,
                                              cell_timeout=1.0), progress=False)
    assert isinstance(got[0], ex.TaskFailure) and "timed out after 1 s" in got[0].error
    assert got[1] == 9


def test_workers_are_reused_across_calls_until_what_they_inherit_changes(monkeypatch):
    spec = ex.ExecutorSpec("processes", workers=1)
    first = ex.run_tasks([cell(pid, 0)], spec, progress=False)
    assert ex.run_tasks([cell(pid, 1)], spec, progress=False) == first  # no new spawn
    # A worker spawned earlier would not see this variable (HARNESS_CACHE, a kernel path...):
    # a changed environment replaces it.
    monkeypatch.setenv("HARNESS_POOL_TEST", "1")
    second = ex.run_tasks([cell(pid, 2)], spec, progress=False)
    assert second != first
    ex.shutdown_workers()
    assert ex.run_tasks([cell(pid, 3)], spec, progress=False) != second


def test_an_interrupted_call_leaves_no_worker_behind(monkeypatch):
    import multiprocessing.connection as mpc

    spec = ex.ExecutorSpec("processes", workers=1)
    (worker,) = ex.run_tasks([cell(pid, 0)], spec, progress=False)

    def ctrl_c(*args, **kwargs):  # Ctrl-C while a cell is in flight (no real signal: a
        raise KeyboardInterrupt   # runner such as nox may start pytest with SIGINT ignored)

    monkeypatch.setattr(mpc, "wait", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        ex.run_tasks([cell(square, 2)], spec, progress=False)
    assert ex._POOL.slots == [] and ex._POOL.key is None
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(worker, 0)


def test_cells_failed_lists_every_failure():
    err = ex.CellsFailed([ex.TaskFailure("a seed 0", "ValueError: x"),
                          ex.TaskFailure("b seed 1", "its worker process was killed by SIGKILL")])
    assert isinstance(err, RuntimeError)
    assert "2 cell(s) failed" in str(err) and "a seed 0" in str(err) and "SIGKILL" in str(err)


def test_the_slurm_path_runs_through_submitit_locally(tmp_path):
    spec = ex.ExecutorSpec("slurm", (("cluster", "local"), ("timeout_min", "5")))
    got = ex.run_tasks([cell(square, 3), cell(fail, 1)], spec, log_dir=tmp_path)
    assert got[0] == 9
    assert isinstance(got[1], ex.TaskFailure) and "bad input 1" in got[1].error
    assert list(tmp_path.iterdir())  # submitit's job folders (logs) are kept there


def test_options_submitit_rejects_are_a_usage_error(tmp_path):
    spec = ex.ExecutorSpec("slurm", (("cluster", "local"), ("slurm_nonsense", "1")))
    with pytest.raises(UsageError, match="rejected by submitit"):
        ex.run_tasks([cell(square, 1)], spec, log_dir=tmp_path)


def test_slurm_without_submitit_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    spec = ex.ExecutorSpec("slurm", (("cluster", "local"),))
    with pytest.raises(UsageError, match=r"pip install -e '\.\[slurm\]'"):
        ex.run_tasks([cell(square, 1)], spec, log_dir=tmp_path)


def test_default_workers(monkeypatch):
    assert ex.default_workers("cuda") == 1
    monkeypatch.setenv("HARNESS_WORKERS", "3")
    assert ex.default_workers("cpu") == 3
    monkeypatch.delenv("HARNESS_WORKERS")
    assert ex.default_workers("cpu") >= 1


def test_cells_share_a_gpu_round_robin_up_to_the_asked_number():
    assert ex.worker_gpus(4, ["0"], per_gpu=4) == ["0", "0", "0", "0"]
    assert ex.worker_gpus(5, ["0", "1"], per_gpu=4) == ["0", "1", "0", "1", "0"]
    with pytest.raises(UsageError, match="at 2 per GPU"):
        ex.worker_gpus(5, ["0", "1"], per_gpu=2)
    with pytest.raises(UsageError):
        ex.ExecutorSpec("processes", cells_per_gpu=0)


def test_cuda_runs_share_a_gpu_only_when_asked(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    shared = ex.spec_from_options(None, [], workers=None, cell_timeout=None, device="cuda",
                                  cells_per_gpu=4)
    assert shared.name == "processes" and shared.cells_per_gpu == 4 and shared.workers is None
    alone = ex.spec_from_options(None, [], workers=None, cell_timeout=None, device="cuda")
    assert alone.name == "local"
    cpu = ex.spec_from_options(None, [], workers=2, cell_timeout=None, device="cpu",
                               cells_per_gpu=4)
    assert cpu.name == "processes" and cpu.workers == 2  # the CPU ignores GPU sharing
    # a default of 4 per GPU with one visible GPU: four worker processes
    assert ex._default_processes([ex.Task("a", lambda: None, device="cuda")], 4) == 4

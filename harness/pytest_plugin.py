"""The harness's pytest plugin: options, fixtures, and the hooks that call the harness.

A claim check is a test marked ``@pytest.mark.claim(CLAIM)`` that takes the ``evidence``
fixture. After the test body its evidence is settled with the reference store (``references``,
through ``session.RunState``); at the end one row per claim is printed and ``results/<run>/``
gets claims.csv, claims.json, report.md and report.html (``results``, ``html_report``), and a dry
run's estimate is settled and printed (``dry_run``). ``-k`` also matches claim IDs and
families. Heavy imports stay lazy so the plugin costs nothing in runs that have no claims.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from harness import session as _session
from harness.evidence import Evidence
from harness.session import RunState, claim_of

RUN = pytest.StashKey[RunState]()
EVIDENCE = pytest.StashKey[Evidence]()
COMPARISON = pytest.StashKey[Any]()  # references.Comparison
STARTED = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("harness", "claims harness")
    g.addoption("--profile", choices=["smoke", "full", "auto"], default="auto",
                help="experiment scale: smoke (2-core CPU), full (one GPU, CIFAR), "
                     "auto = full with CUDA else smoke (default)")
    g.addoption("--device", choices=["cpu", "cuda", "auto"], default="auto",
                help="where to run (default auto: cuda when available)")
    g.addoption("--dry-run", action="store_true",
                help="run every cell of the profile for one step on tiny inputs, on the CPU")
    g.addoption("--regen-references", action="store_true",
                help="store this run's measurements as the references (atomic, shows changes)")
    g.addoption("--strict-references", action="store_true",
                help="fail a claim that has no stored reference for this device class")
    g.addoption("--claim", action="append", default=[], metavar="ID",
                help="run only claims whose ID matches this glob (repeatable)")
    g.addoption("--trained", action="store_true",
                help="run only the claims that train networks (e.g. for the portability run)")
    g.addoption("--results-dir", default="results", help="where run folders are written")
    g.addoption("--references-dir", default=None,
                help="reference store root (default: the repo's reference_results/)")
    g.addoption("--data-root", default=None,
                help="directory with CIFAR in torchvision's format (else $CLAIMS_DATA); "
                     "missing CIFAR is downloaded there (or into $HARNESS_DATA_CACHE, "
                     "~/.cache/harness-data) unless --offline")
    g.addoption("--offline", action="store_true",
                help="never download: CIFAR must already be under --data-root/$CLAIMS_DATA")
    g.addoption("--no-cache", action="store_true",
                help="recompute training runs instead of reusing cached records")
    g.addoption("--workers", default="auto", type=_session.workers_option,
                help="processes for CPU training runs (default auto: one per usable core, or "
                     "$HARNESS_WORKERS; CUDA runs are serial); with --executor processes on "
                     "CUDA: GPUs used, one process each")
    g.addoption("--executor", default=None, choices=["local", "processes", "slurm"],
                help="where un-cached training runs go: local (serial, in this process), "
                     "processes (spawned workers: one per core, or one per GPU), slurm (one "
                     "job per run through submitit). Default: processes for CPU runs with more "
                     "than one worker, else local")
    g.addoption("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                type=_session.executor_option,
                help="a slurm executor option (repeatable): partition, gpus, timeout_min, "
                     "array_parallelism, mem_gb, cpus_per_task, cluster=local|debug (run the "
                     "submitit path on this machine), folder (job logs), or any submitit "
                     "parameter, e.g. slurm_qos=high")
    g.addoption("--cells-per-gpu", default="auto", type=_session.workers_option, metavar="N",
                help="CUDA training runs that share one GPU at once, each in its own process "
                     "(default auto: 4 on the full profile, whose small nets are launch-bound, "
                     "else 1); claims that read training times run theirs one per GPU")
    g.addoption("--cell-timeout", default=None, type=_session.seconds_option, metavar="SECONDS",
                help="stop a training run that takes longer than this and report it (the "
                     "other runs go on; the failed ones are listed at the end)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "claim(spec): an executable check of one published claim")
    config.stash[RUN] = RunState(config)
    config.stash[RUN].start()


def pytest_itemcollected(item: pytest.Item) -> None:
    """``-k`` selects claims by ID or family: ``-k agc.rule``, ``-k itop``."""
    item.extra_keyword_matches.update(_session.claim_keywords(item))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--trained`` and ``--claim`` select claims."""
    keep, drop = _session.select(items, config.option.trained, config.option.claim)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collection_finish(session: pytest.Session) -> None:
    """A claims run with no references for its device class says so before anything runs."""
    warning = session.config.stash[RUN].check_for_references(session.items)
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if warning and tr is not None:
        tr.write_line(warning, yellow=True, bold=True)


@pytest.fixture
def profile(request: pytest.FixtureRequest):
    """The ``Profile`` of this run (name, device, dry_run); ``profile.pick(CONFIGS)``."""
    return request.config.stash[RUN].profile


@pytest.fixture
def data_root(request: pytest.FixtureRequest) -> Path | None:
    from harness.data import resolve_data_root

    return resolve_data_root(request.config.option.data_root)


@pytest.fixture
def load_data(request: pytest.FixtureRequest, data_root):
    """``load_data(spec, resolution)``: the data, or a skip saying what to put where."""
    from harness.data import DatasetMissing, load_dataset

    loaded = request.config.stash[RUN].datasets  # claims that share data generate it once

    def load(spec, resolution: int):
        if (spec, resolution) not in loaded:
            try:
                loaded[(spec, resolution)] = load_dataset(
                    spec, resolution, data_root,
                    download=not request.config.option.offline)
            except DatasetMissing as e:
                pytest.skip(str(e))
        return loaded[(spec, resolution)]

    return load


@pytest.fixture
def executor(request: pytest.FixtureRequest):
    """Where a claim's un-cached training runs go (``harness.runs.executors.ExecutorSpec``);
    records do not depend on it."""
    return request.config.stash[RUN].executor


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Evidence:
    """The recorder of a claim check; the plugin checks it against the reference afterwards."""
    claim = claim_of(request.node)
    if claim is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses `evidence` without a claim marker")
    import torch

    state = request.config.stash[RUN]
    torch.manual_seed(0)  # checks seed themselves; this only pins anything they forget
    ev = Evidence(claim, state.profile.device, state.run_dir / claim.id)
    ev.noise = state.noise(claim.id)
    ev.estimating = state.profile.dry_run
    request.node.stash[EVIDENCE] = ev
    return ev


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """After the check: price what it would run at full size (a dry run; failed or not), then
    settle its evidence with the reference (a regression fails the test)."""
    __tracebackhide__ = True
    item.stash[STARTED] = time.perf_counter()
    state, ev = item.config.stash[RUN], item.stash.get(EVIDENCE, None)
    try:
        result = yield
    except BaseException as e:
        if type(e).__name__ != "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            raise
        with contextlib.suppress(Exception):  # best effort
            import torch

            torch.cuda.empty_cache()
        raise pytest.fail.Exception(
            f"out of GPU memory in {item.nodeid}: {str(e).splitlines()[0]}. The other claims "
            "still run; use a GPU with more memory or a smaller profile."
        ) from None
    finally:
        if ev is not None:
            state.price(ev)
    if ev is not None:
        try:
            item.stash[COMPARISON] = state.settle(ev)
        except AssertionError as e:
            item.stash[COMPARISON] = getattr(e, "comparison", None)
            raise
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    claim = claim_of(item)
    if claim is not None:
        from harness.results import claim_row

        seconds = time.perf_counter() - item.stash.get(STARTED, time.perf_counter())
        row = claim_row(claim, report, item.stash.get(EVIDENCE, None),
                        item.stash.get(COMPARISON, None), seconds)
        if row is not None:
            item.config.stash[RUN].rows.append(row)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Runs before the terminal summary: a dry run's estimate is settled here, so that an
    estimate over budget or out of date fails the run."""
    state = session.config.stash.get(RUN, None)
    if state is not None and state.estimates and state.settle_estimates() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state, tr = config.stash.get(RUN, None), terminalreporter
    if state is None or not state.rows:
        return
    from harness import results

    results.print_summary(tr, state.rows, state.run_dir, state.context, state.no_references)
    try:
        from harness.html_report import write_html

        tr.write_line(f"report: {write_html(state.run_dir)}")
    except Exception as e:  # noqa: BLE001 - the results above are written; say what failed
        tr.write_line(f"report.html not written: {type(e).__name__}: {e} "
                      f"(retry: nox -s report -- {state.run_dir})", red=True)
    if state.estimates:
        from harness.dry_run import print_estimates

        print_estimates(tr, state.estimates, state.profile.name, state.estimate_problems)
    if state.regen_log:
        tr.section("references regenerated (old -> new)")
        for line in state.regen_log:
            tr.write_line(line)

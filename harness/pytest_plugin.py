"""The harness's pytest plugin: options, the ``evidence`` fixture, references and the table.

A claim check is a test marked ``@pytest.mark.claim(CLAIM)`` that takes the ``evidence``
fixture. After the test body, the plugin compares the evidence with the stored reference (or
stores it, with ``--regen-references``), and at the end prints one row per claim and writes
``results/<run>/claims.csv``, ``claims.json``, ``report.md`` and ``report.html``. Heavy imports stay lazy so
the plugin costs nothing in runs that have no claims.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from harness.claim import Claim, Evidence

EVIDENCE = pytest.StashKey["Evidence"]()
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
    g.addoption("--workers", default="auto", type=_workers_option,
                help="processes for CPU training runs (default auto: one per usable core, or "
                     "$HARNESS_WORKERS; CUDA runs are serial); with --executor processes on "
                     "CUDA: GPUs used, one process each")
    g.addoption("--executor", default=None, choices=["local", "processes", "slurm"],
                help="where un-cached training runs go: local (serial, in this process), "
                     "processes (spawned workers: one per core, or one per GPU), slurm (one "
                     "job per run through submitit). Default: processes for CPU runs with more "
                     "than one worker, else local")
    g.addoption("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                type=_executor_option,
                help="a slurm executor option (repeatable): partition, gpus, timeout_min, "
                     "array_parallelism, mem_gb, cpus_per_task, cluster=local|debug (run the "
                     "submitit path on this machine), folder (job logs), or any submitit "
                     "parameter, e.g. slurm_qos=high")
    g.addoption("--cells-per-gpu", default="auto", type=_workers_option, metavar="N",
                help="CUDA training runs that share one GPU at once, each in its own process "
                     "(default auto: 4 on the full profile, whose small nets are launch-bound, "
                     "else 1); claims that read training times run theirs one per GPU")
    g.addoption("--cell-timeout", default=None, type=_seconds_option, metavar="SECONDS",
                help="stop a training run that takes longer than this and report it (the "
                     "other runs go on; the failed ones are listed at the end)")


def _workers_option(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"a positive integer or 'auto', not {value!r}")
    return int(value)


def _executor_option(value: str) -> str:
    from harness.executors import parse_option
    from harness.profiles import UsageError

    try:
        parse_option(value)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _executor_spec(opt: argparse.Namespace, device: str):
    """The ``ExecutorSpec`` the executor options ask for on ``device``; bad input is a
    ``pytest.UsageError``."""
    from harness.executors import CELLS_PER_GPU, spec_from_options
    from harness.profiles import UsageError

    per_gpu = opt.cells_per_gpu
    if per_gpu == "auto":
        per_gpu = CELLS_PER_GPU if opt.profile in ("full", "auto") and device == "cuda" else 1
    try:
        return spec_from_options(opt.executor, opt.executor_option,
                                 workers=None if opt.workers == "auto" else opt.workers,
                                 cell_timeout=opt.cell_timeout, device=device,
                                 cells_per_gpu=per_gpu)
    except UsageError as e:
        raise pytest.UsageError(str(e)) from None


def _seconds_option(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise argparse.ArgumentTypeError(f"positive seconds, not {value!r}")
    return seconds


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "claim(spec): an executable check of one published claim")
    config.stash[RUN] = RunState(config)
    opt = config.option
    if opt.executor or opt.executor_option:  # a bad combination is a usage error up front
        _executor_spec(opt, "cpu")  # the device only picks defaults
    if opt.device == "cuda" and not opt.dry_run:  # the CUDA kernel setting, before any CUDA work
        _apply_cuda_kernel_setting()
    if config.option.no_cache:
        # Nothing from before this run is reused, but claims that share a training run (and
        # the worker processes) still share it within the run: a fresh, private cache.
        import os
        import tempfile

        os.environ["HARNESS_CACHE"] = tempfile.mkdtemp(prefix="harness-no-cache-")


def _apply_cuda_kernel_setting() -> None:
    """The CUDA kernel setting its variables name (``HARNESS_CUDA_TF32``,
    ``HARNESS_CUDA_DETERMINISTIC``; harness/environment.py); a bad value is a usage error."""
    from harness.environment import apply_cuda_kernel_setting

    try:
        apply_cuda_kernel_setting()
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None


@dataclass
class RunState:
    """Per-session state, resolved lazily so plain unit-test runs never import torch here."""

    config: pytest.Config
    rows: list[Any] = field(default_factory=list)
    regen_log: list[str] = field(default_factory=list)
    estimates: dict[str, Any] = field(default_factory=dict)  # dry run: claim -> costs.Estimate
    estimate_problems: list[str] = field(default_factory=list)  # over budget, or a stale store
    datasets: dict[Any, Any] = field(default_factory=dict)
    _profile: Any = None
    _executor: Any = None
    _run_dir: Path | None = None
    _env: dict[str, Any] | None = None
    no_references: str | None = None  # what to say when nothing is stored for the device class

    @property
    def profile(self):
        if self._profile is None:
            from harness.profiles import Profile, UsageError, resolve_device, resolve_profile

            opt = self.config.option
            try:
                name = resolve_profile(opt.profile)
                device = "cpu" if opt.dry_run else resolve_device(opt.device)
            except UsageError as e:
                raise pytest.UsageError(str(e)) from None
            self._profile = Profile(name, device, dry_run=opt.dry_run)
            if device == "cuda" and opt.device == "auto":  # --device cuda applied it already
                _apply_cuda_kernel_setting()
        return self._profile

    @property
    def executor(self):
        """The ``ExecutorSpec`` of ``--executor``, ``--executor-option``, ``--workers`` and
        ``--cell-timeout``."""
        if self._executor is None:
            self._executor = _executor_spec(self.config.option, self.profile.device)
        return self._executor

    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            p = self.profile
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            tag = f"{stamp}-{p.name}{'-dry' if p.dry_run else ''}-{p.device_class}"
            self._run_dir = Path(self.config.option.results_dir).resolve() / tag
        return self._run_dir

    @property
    def references_root(self) -> Path:
        from harness.references import DEFAULT_ROOT

        return Path(self.config.option.references_dir or DEFAULT_ROOT)

    def noise(self, claim_id: str):
        """The claim's measured noise for this profile and device (None when unmeasured)."""
        from harness.bands import NoiseError, load_noise, noise_path

        p = self.profile
        try:
            return load_noise(noise_path(self.references_root, p.name, p.device_class, claim_id))
        except NoiseError as e:
            raise pytest.UsageError(str(e)) from None

    @property
    def environment(self) -> dict[str, Any]:
        if self._env is None:
            from harness.environment import capture

            self._env = capture(self.profile.device)
        return self._env


RUN = pytest.StashKey[RunState]()


def claim_of(item: pytest.Item) -> Claim | None:
    marker = item.get_closest_marker("claim")
    if marker is None:
        return None
    if not marker.args or not isinstance(marker.args[0], Claim):
        raise pytest.UsageError(f"{item.nodeid}: use @pytest.mark.claim(<Claim>)")
    return marker.args[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.trained:
        trained = [i for i in items if (c := claim_of(i)) is not None and c.trained]
        if not trained:
            raise pytest.UsageError("--trained: no collected claim trains networks")
        config.hook.pytest_deselected(items=[i for i in items if i not in trained])
        items[:] = trained
    patterns = config.option.claim
    if not patterns:
        return
    known = sorted({c.id for c in map(claim_of, items) if c is not None})
    for pattern in patterns:
        if not any(fnmatch.fnmatch(cid, pattern) for cid in known):
            raise pytest.UsageError(
                f"unknown claim {pattern!r}; known claims: {', '.join(known) or '(none collected)'}"
            )
    keep, drop = [], []
    for item in items:
        c = claim_of(item)
        matched = c is not None and any(fnmatch.fnmatch(c.id, p) for p in patterns)
        (keep if matched else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collection_finish(session: pytest.Session) -> None:
    """A claims run with no references for its device class says so before anything runs (and
    again after the table): every row would be NO_REFERENCE, gating nothing."""
    import os

    config = session.config
    opt = config.option
    if opt.dry_run or opt.regen_references or os.environ.get("HARNESS_CALIBRATING"):
        return
    if not any(i.get_closest_marker("claim") is not None for i in session.items):
        return
    from harness.calibrate import has_references, no_references_message

    state = config.stash[RUN]
    try:
        p = state.profile
        dclass = p.device_class
    except pytest.UsageError:
        return  # reported where the claims use the profile, as ever
    if has_references(state.references_root, p.name, dclass):
        return
    state.no_references = no_references_message(p.name, p.device, dclass)
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(state.no_references, yellow=True, bold=True)


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
def use_cache(request: pytest.FixtureRequest) -> bool:
    """Always True: ``--no-cache`` points the cache at a fresh folder for the run instead, so
    claims that share a training run still train it once."""
    return True


@pytest.fixture
def executor(request: pytest.FixtureRequest):
    """Where a claim's un-cached training runs go (``harness.executors.ExecutorSpec``); records
    do not depend on it."""
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
    __tracebackhide__ = True
    item.stash[STARTED] = time.perf_counter()
    try:
        result = yield
    except BaseException as e:
        if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            _free_cuda()
            raise pytest.fail.Exception(
                f"out of GPU memory in {item.nodeid}: {str(e).splitlines()[0]}. The other claims "
                "still run; use a GPU with more memory or a smaller profile."
            ) from None
        raise
    ev = item.stash.get(EVIDENCE, None)
    if ev is not None:
        _settle_reference(item, ev)
    return result


def _settle_reference(item: pytest.Item, ev: Evidence) -> None:
    """Compare with, or regenerate, the reference; fail the test on a regression."""
    from harness import references as refs

    __tracebackhide__ = True
    state = item.config.stash[RUN]
    p = state.profile
    if ev.verdict is None:
        raise AssertionError(f"{ev.claim.id}: the check recorded no verdict")
    path = refs.reference_path(state.references_root, p.name, p.device_class, ev.claim.id)
    if p.dry_run:
        comparison = refs.Comparison("DRY_RUN")
    elif item.config.option.regen_references:
        refused = refs.unstorable(ev)
        if refused:
            raise AssertionError(f"{ev.claim.id}: refusing to store a reference that guards "
                                 f"nothing ({path} is unchanged):\n  " + "\n  ".join(refused))
        record = refs.reference_record(ev, p.name, state.environment)
        changes = refs.write_reference(path, record)
        state.regen_log.append(f"{path}:")
        state.regen_log += [f"  {c}" for c in changes] or ["  (unchanged)"]
        comparison = refs.Comparison("REGENERATED", path=path)
    elif not path.exists():
        cmd = refs.regen_command(p.name, p.device, ev.claim.id)
        comparison = refs.Comparison("NO_REFERENCE", (f"no reference at {path}", f"store one: {cmd}"))
    else:
        try:
            comparison = refs.compare(ev, refs.load_reference(path))
        except refs.ReferenceError as e:
            comparison = refs.Comparison("BAD_REFERENCE", (str(e),), path)
    item.stash[COMPARISON] = comparison
    if comparison.status in ("REGRESSED", "BAD_REFERENCE"):
        obtained = state.run_dir / f"{ev.claim.id}.obtained.json"
        obtained.parent.mkdir(parents=True, exist_ok=True)
        import json

        obtained.write_text(json.dumps(refs.reference_record(ev, p.name, state.environment),
                                       indent=2) + "\n")
        raise AssertionError(
            f"{ev.claim.id} {comparison.status.lower().replace('_', ' ')} against {path}:\n  "
            + "\n  ".join(comparison.problems)
            + f"\n(this run's record: {obtained}; if the change is intended: "
            + refs.regen_command(p.name, p.device, ev.claim.id) + ")"
        )
    if comparison.status == "NO_REFERENCE" and item.config.option.strict_references:
        raise AssertionError("; ".join(comparison.problems))


COMPARISON = pytest.StashKey[Any]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    claim = claim_of(item)
    if claim is None:
        return report
    state = item.config.stash[RUN]
    from harness import reporting

    seconds = time.perf_counter() - item.stash.get(STARTED, time.perf_counter())
    if report.when == "call":
        ev = item.stash.get(EVIDENCE, None)
        comparison = item.stash.get(COMPARISON, None)
        if report.skipped:
            row = reporting.error_row(claim.id, claim.statement, _short(report), "SKIPPED", 0.0)
        elif ev is not None and ev.verdict is not None and comparison is not None:
            row = reporting.row_from(ev, comparison, seconds)
        else:
            row = reporting.error_row(claim.id, claim.statement, _short(report), "ERROR", seconds)
        state.rows.append(row)
        if ev is not None and ev.full_size is not None:
            state.estimates[claim.id] = ev.full_size
    elif report.when == "setup" and (report.skipped or report.failed):
        status = "SKIPPED" if report.skipped else "ERROR"
        state.rows.append(reporting.error_row(claim.id, claim.statement, _short(report), status, 0.0))
    return report


def _short(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    text = str(report.longrepr or "")
    lines = [ln for ln in text.splitlines() if ln.startswith("E ")] or text.splitlines()[-1:]
    return " ".join(ln[1:].strip() for ln in lines[:6])[:600]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(RUN, None)
    if state is None or not state.rows:
        return
    from harness import reporting

    tr = terminalreporter
    p = state.profile
    tr.section(f"claims: profile {p.name}{' (dry run)' if p.dry_run else ''} on {p.device_class}")
    tr.write_line(reporting.terminal_table(state.rows, width=max(120, tr._tw.fullwidth)))
    if state.no_references:
        tr.write_line(f"\n{state.no_references}", yellow=True, bold=True)
    context = {
        "profile": p.name,
        "dry_run": p.dry_run,
        "device_class": p.device_class,
        "environment": state.environment,
        "seeds": {r.claim: r.seeds for r in state.rows},
        "references_dir": str(state.references_root),
    }
    reporting.write_results(state.run_dir, state.rows, context)
    tr.write_line(f"\nresults: {state.run_dir}/claims.csv, claims.json, report.md")
    try:
        from harness.report import write_html

        tr.write_line(f"report: {write_html(state.run_dir)}")
    except Exception as e:  # noqa: BLE001 - the results above are written; say what failed
        tr.write_line(f"report.html not written: {type(e).__name__}: {e} "
                      f"(retry: nox -s report -- {state.run_dir})", red=True)
    if state.estimates:
        _print_estimates(tr, state)
    if state.regen_log:
        tr.section("references regenerated (old -> new)")
        for line in state.regen_log:
            tr.write_line(line)


def _settle_estimate(state: RunState) -> None:
    """A dry run's estimate of the profile at full size (harness/costs.py). With
    ``--regen-references`` it is stored (``reference_results/<profile>/estimate.json``, shown
    old -> new); otherwise a stored estimate it no longer matches fails the run, as a moved
    reference does, and so does a total over the budget."""
    from harness import atomic, costs

    p = state.profile
    record = costs.estimate_record(state.estimates)
    state.run_dir.mkdir(parents=True, exist_ok=True)
    (state.run_dir / "estimate.json").write_text(json.dumps(record, indent=1) + "\n")
    total = record["total_minutes"]
    path = costs.estimate_path(state.references_root, p.name)
    stored = costs.load_estimate(state.references_root, p.name)
    if state.config.option.regen_references:
        atomic.write_json(path, record, indent=1)
        old = "none" if stored is None else f"{stored['total_minutes']:g} min"
        state.regen_log += [f"{path}: total {old} -> {total:g} min"] + [
            f"  {f}: {(stored or {}).get('families', {}).get(f, 'none')} -> {m:g} min"
            for f, m in record["families"].items()]
    elif stored is not None and not _same_estimate(stored, record):
        state.estimate_problems.append(
            f"the stored estimate {path} ({stored['total_minutes']:g} min: {stored['families']}) "
            f"no longer matches the model's ({total:g} min: {record['families']}); if the change "
            f"is intended: nox -s claims -- --profile {p.name} --dry-run --regen-references")
    from harness.memory import PLANNING_BUDGET_BYTES

    for fam, est in costs.by_family(state.estimates).items():
        if est.peak_bytes() > PLANNING_BUDGET_BYTES:
            state.estimate_problems.append(
                f"{fam}: predicted peak {est.peak_bytes() / 2**30:.1f} GiB at once exceeds the "
                f"{PLANNING_BUDGET_BYTES / 1e9:g} GB planning budget (harness/memory.py)")
    if total > costs.FULL_BUDGET_MINUTES:
        state.estimate_problems.append(
            f"the {p.name} profile is estimated at {total:g} min on one H100, over its "
            f"{costs.FULL_BUDGET_MINUTES:g}-minute budget")


def _print_estimates(tr, state: RunState) -> None:
    """Minutes per family and per phase kind, the total against the budget, the model's
    assumptions, and any problem ``_settle_estimate`` found."""
    from harness import costs

    p = state.profile
    families = costs.by_family(state.estimates)
    total = costs.estimate_record(state.estimates)["total_minutes"]
    tr.section(f"estimated time of the {p.name} profile on one H100 (harness/costs.py)")
    kinds = sorted({k for e in families.values() for k in e.by_kind()})
    tr.write_line(f"{'family':10s} {'runs':>5s} {'minutes':>8s}  "
                  + "  ".join(f"{k:>9s}" for k in kinds) + "  launch-bound runs  peak GiB")
    for fam, est in families.items():
        by_kind = est.by_kind()
        tr.write_line(f"{fam:10s} {est.runs:5d} {est.minutes:8.1f}  "
                      + "  ".join(f"{by_kind.get(k, 0.0):9.1f}" for k in kinds)
                      + f"  {est.launch_bound_runs():17d}  {est.peak_bytes() / 2**30:8.1f}")
    within = total <= costs.FULL_BUDGET_MINUTES
    tr.write_line(f"{'all':10s} {sum(e.runs for e in families.values()):5d} {total:8.1f}  "
                  f"(shared runs and phases counted once; budget {costs.FULL_BUDGET_MINUTES:g} "
                  f"min: {'within' if within else 'OVER'})", green=within, red=not within)
    tr.write_line("assumptions:")
    for line in costs.ASSUMPTIONS:
        tr.write_line(f"  - {line}")
    for problem in state.estimate_problems:
        tr.write_line(problem, red=True)


def _same_estimate(stored: dict[str, Any], record: dict[str, Any], rel: float = 0.01) -> bool:
    """Kernel and MAC counts are exact, so the estimate only moves when the code or the model
    does: 1% covers rounding."""
    a, b = stored.get("families", {}), record["families"]
    return set(a) == set(b) and all(abs(a[f] - b[f]) <= rel * max(abs(b[f]), 0.1) for f in b)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Runs before the terminal summary: a dry run's estimate is settled here, so that an
    estimate over budget or out of date fails the run."""
    state = session.config.stash.get(RUN, None)
    if state is None or not state.estimates:
        return
    _settle_estimate(state)
    if state.estimate_problems and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _free_cuda() -> None:
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort after an OOM
        pass

"""One pytest session of claim checks, for the plugin (harness/pytest_plugin.py): the option
values' parsing, the claims it selects, and its state (``RunState``): the profile, executor, run
folder, environment and reference store resolved from the command line, each check settled
against the reference store, and a dry run's estimate settled.

Everything heavy is resolved lazily, so plain unit-test runs never import torch here; a bad
option is a usage error.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from harness.claim import Claim


def workers_option(value: str) -> int | str:
    """``--workers``, ``--cells-per-gpu``: a positive integer or ``auto``."""
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"a positive integer or 'auto', not {value!r}")
    return int(value)


def seconds_option(value: str) -> float:
    """``--cell-timeout``: positive, finite seconds."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise argparse.ArgumentTypeError(f"positive seconds, not {value!r}")
    return seconds


def executor_option(value: str) -> str:
    """``--executor-option``: ``KEY=VALUE`` (``executors.parse_option``)."""
    from harness.profiles import UsageError
    from harness.runs.executors import parse_option

    try:
        parse_option(value)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def claim_of(item: pytest.Item) -> Claim | None:
    """The ``Claim`` of a test marked ``@pytest.mark.claim(CLAIM)``; None for other tests."""
    marker = item.get_closest_marker("claim")
    if marker is None:
        return None
    if not marker.args or not isinstance(marker.args[0], Claim):
        raise pytest.UsageError(f"{item.nodeid}: use @pytest.mark.claim(<Claim>)")
    return marker.args[0]


def claim_keywords(item: pytest.Item) -> set[str]:
    """What ``-k`` matches a claim check by, besides its test's names: its claim's ID and
    family (the ID's prefix), so ``-k agc.rule`` and ``-k itop`` select claims. None for other
    tests (a malformed claim marker is reported where the test runs)."""
    marker = item.get_closest_marker("claim")
    claim = marker.args[0] if marker is not None and marker.args else None
    return {claim.id, claim.id.split(".", 1)[0]} if isinstance(claim, Claim) else set()


def select(items: list[pytest.Item], trained: bool, patterns: list[str]
           ) -> tuple[list[pytest.Item], list[pytest.Item]]:
    """(kept, dropped): with ``trained``, only claims that train networks; with ``patterns``
    (``--claim`` globs), only claims whose ID matches one. Nothing selected, or a pattern that
    matches no collected claim, is a usage error."""
    keep, drop = list(items), []
    if trained:
        keep = [i for i in items if (c := claim_of(i)) is not None and c.trained]
        if not keep:
            raise pytest.UsageError("--trained: no collected claim trains networks")
        drop = [i for i in items if i not in keep]
    if not patterns:
        return keep, drop
    known = sorted({c.id for c in map(claim_of, keep) if c is not None})
    for pattern in patterns:
        if not any(fnmatch.fnmatch(cid, pattern) for cid in known):
            raise pytest.UsageError(
                f"unknown claim {pattern!r}; known claims: {', '.join(known) or '(none collected)'}"
            )
    matched = [i for i in keep
               if (c := claim_of(i)) is not None and any(fnmatch.fnmatch(c.id, p) for p in patterns)]
    return matched, drop + [i for i in keep if i not in matched]


def executor_spec(opt: argparse.Namespace, device: str):
    """The ``ExecutorSpec`` the executor options ask for on ``device``; bad input is a
    ``pytest.UsageError``."""
    from harness.profiles import UsageError
    from harness.runs.executors import CELLS_PER_GPU, spec_from_options

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


def apply_cuda_kernel_setting() -> None:
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

    def start(self) -> None:
        """What the options settle before anything is collected: a bad executor combination
        is a usage error up front; ``--device cuda`` applies the CUDA kernel setting before any
        CUDA work; ``--no-cache`` points ``HARNESS_CACHE`` at a fresh folder."""
        opt = self.config.option
        if opt.executor or opt.executor_option:
            executor_spec(opt, "cpu")  # the device only picks defaults
        if opt.device == "cuda" and not opt.dry_run:
            apply_cuda_kernel_setting()
        if opt.no_cache:
            # Nothing from before this run is reused, but claims that share a training run (and
            # the worker processes) still share it within the run: a fresh, private cache.
            import os
            import tempfile

            os.environ["HARNESS_CACHE"] = tempfile.mkdtemp(prefix="harness-no-cache-")

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
                apply_cuda_kernel_setting()
        return self._profile

    @property
    def executor(self):
        """The ``ExecutorSpec`` of ``--executor``, ``--executor-option``, ``--workers`` and
        ``--cell-timeout``."""
        if self._executor is None:
            self._executor = executor_spec(self.config.option, self.profile.device)
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

    @property
    def reference_mode(self) -> str:
        """How claim checks settle with the reference store (``references.check_reference``)."""
        opt = self.config.option
        return ("dry-run" if self.profile.dry_run else "regenerate" if opt.regen_references
                else "strict" if opt.strict_references else "compare")

    def price(self, evidence: Any) -> None:
        """What a check recorded it would run at full size (a dry run), priced into
        ``estimates`` (``dry_run.price``)."""
        if evidence.full_size:
            from harness.dry_run import price

            self.estimates[evidence.claim.id] = price(evidence.full_size)

    def settle(self, evidence: Any):
        """A check's evidence settled with the reference store (``references.check_reference``):
        the ``Comparison``. A failure is an AssertionError carrying ``comparison``."""
        __tracebackhide__ = True
        from harness.references import check_reference

        p = self.profile
        comparison, log = check_reference(
            evidence, self.references_root, p.name, p.device, p.device_class,
            self.reference_mode, self.run_dir, self.environment)
        self.regen_log += log
        return comparison

    def settle_estimates(self) -> list[str]:
        """A dry run's estimate against the stored one (``dry_run.settle``): the problems that
        fail the run, also kept in ``estimate_problems``."""
        from harness.dry_run import settle

        log, self.estimate_problems = settle(self.estimates, self.references_root,
                                             self.profile.name, self.run_dir,
                                             self.config.option.regen_references)
        self.regen_log += log
        return self.estimate_problems

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

    @property
    def context(self) -> dict[str, Any]:
        """What the results record about the run besides its rows (``results.write_results``)."""
        p = self.profile
        return {"profile": p.name, "dry_run": p.dry_run, "device_class": p.device_class,
                "environment": self.environment, "seeds": {r.claim: r.seeds for r in self.rows},
                "references_dir": str(self.references_root)}

    def check_for_references(self, items: list[pytest.Item]) -> str | None:
        """A claims run with no references for its device class says so before anything runs
        (and again after the table): every row would be NO_REFERENCE, gating nothing. The
        message, also kept in ``no_references``; None when there are references, or when the
        run makes or needs none (no claim among ``items``, a dry run, a regeneration, a
        calibration)."""
        import os

        opt = self.config.option
        if opt.dry_run or opt.regen_references or os.environ.get("HARNESS_CALIBRATING"):
            return None
        if not any(i.get_closest_marker("claim") is not None for i in items):
            return None
        from harness.calibrate import has_references, no_references_message

        try:
            p = self.profile
            dclass = p.device_class
        except pytest.UsageError:
            return None  # reported where the claims use the profile, as ever
        if has_references(self.references_root, p.name, dclass):
            return None
        self.no_references = no_references_message(p.name, p.device, dclass)
        return self.no_references

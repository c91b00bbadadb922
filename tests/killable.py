"""Helpers of the tests that kill real runs midway (tests/runs/test_cache.py,
tests/test_interrupted_claims.py)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def default_sigint() -> None:
    """A ``preexec_fn``: in the child, before exec, SIGINT's default action, so Python installs
    its Ctrl-C handler even when the tests run where SIGINT is ignored (a shell's background
    job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_an_entry(cache: Path, proc: subprocess.Popen) -> None:
    """Until the first cache entry lands (the run must still be going), at most 60 s."""
    for _ in range(1200):
        if list(cache.glob("*.json")):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError("no cache entry appeared within 60 s")

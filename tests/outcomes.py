"""What every family's outcome tests (``tests/<family>/test_outcomes.py``) ask of a claim's
evidence, whatever the outcome: every figure and table written, and a verdict with a reason."""

from __future__ import annotations

from harness.evidence import Evidence


def assert_a_reported_result(ev: Evidence) -> Evidence:
    for path in ev.artifacts:
        assert path.exists() and path.stat().st_size > 0, path
    assert ev.verdict is not None and ev.reason
    return ev

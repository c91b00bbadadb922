"""harness.evidence.Evidence: the law-suite recorder every "laws + known-bad" claim shares."""

from __future__ import annotations

from harness.claim import Claim
from harness.evidence import Evidence, FullSize


def evidence() -> Evidence:
    return Evidence(Claim(id="x.laws", statement="s", source="src"), device="cpu")


def test_laws_hold_only_without_violations_and_with_every_known_bad_caught():
    ev = evidence()
    holds, summary = ev.laws("cases_checked", 10, [], {"wrong_sign": 3, "swapped": 1})
    assert holds and "known-bad caught 2/2" in summary
    assert {k: m.value for k, m in ev.measurements.items()} == {
        "cases_checked": 10, "violations": 0, "known_bad_caught": 2, "caught_wrong_sign": 1,
        "caught_swapped": 1}
    assert all(m.tolerance.exact for m in ev.measurements.values())


def test_a_missed_known_bad_or_a_violation_fails_the_laws():
    holds, summary = evidence().laws("cases_checked", 10, [], {"wrong_sign": 3, "swapped": 0})
    assert not holds and "1/2" in summary
    ev = evidence()
    holds, summary = ev.laws("cases_checked", 10, ["case 3: g2 changed"], {"wrong_sign": 1})
    assert not holds and "first: case 3: g2 changed" in summary
    assert ev.notes == ["case 3: g2 changed"]


def test_full_size_work_is_built_and_recorded_only_on_a_dry_run():
    ev = evidence()
    ev.full_size_jobs(lambda: 1 / 0)  # never built
    ev.full_size_phases(lambda: 1 / 0)
    assert ev.full_size == []
    ev.estimating = True
    ev.full_size_jobs(lambda: ["job"], cells_per_gpu=1)
    ev.full_size_jobs(lambda: [])
    ev.full_size_phases(lambda: {"k": "phase"})
    assert ev.full_size == [FullSize(jobs=("job",), cells_per_gpu=1), FullSize(),
                            FullSize(phases={"k": "phase"})]

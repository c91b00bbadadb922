"""Verdict odds on seed redraws: the draw, the pairing, the shares, and how references use them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import odds
from harness import references as refs
from harness.bands import NoiseTable
from harness.claim import Claim, Tolerance
from harness.evidence import Evidence
from harness.odds import VerdictOdds


@given(st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_a_draw_has_n_positions_and_never_one_seed_repeated(n, seed):
    idx = odds.seed_draw(n, np.random.default_rng(seed))
    assert len(idx) == n and all(0 <= i < n for i in idx)
    assert n < 2 or len(set(idx.tolist())) > 1


def _grid(seeds=(3, 7, 9)) -> pd.DataFrame:
    return pd.DataFrame([dict(method=m, seed=s, acc=0.1 * s + (m == "b"))
                         for m in ("a", "b") for s in seeds])


def test_resampling_keeps_every_cell_paired_and_counts_a_repeat_as_two_seeds():
    out = odds.resample_seeds(_grid(), [2, 2, 0])
    for m in ("a", "b"):
        cell = out[out.method == m].sort_values("seed")
        assert cell.seed.tolist() == [0, 1, 2]
        assert cell.acc.round(6).tolist() == pytest.approx([0.9 + (m == "b")] * 2 + [0.3 + (m == "b")])
    paired = out.pivot(index="seed", columns="method", values="acc")
    assert (paired.b - paired.a).round(9).eq(1).all()  # the same seed in every cell


def test_resample_lists_keeps_the_seed_order_of_every_list():
    assert odds.resample_lists({"x": [1, 2, 3], "y": [4, 5, 6]}, [1, 1, 2]) == {
        "x": [2, 2, 3], "y": [5, 5, 6]}


class _Judged:
    def __init__(self, holds):
        self.holds = holds


def test_a_clear_effect_has_one_verdict_and_a_boundary_effect_several():
    clear = odds.judge_odds(lambda t: _Judged(t[t.method == "b"].acc.mean()
                                              > t[t.method == "a"].acc.mean()), _grid())
    assert clear.shares == {"REPRODUCED": 1.0} and clear.plausible() == ["REPRODUCED"]

    def boundary(t):  # holds when the drawn seeds' mean is above the seeds' median
        m = t[t.method == "a"].acc.mean()
        return _Judged(True if m > 0.75 else None if m > 0.6 else False)

    split = odds.judge_odds(boundary, _grid())
    assert len(split.shares) > 1 and sum(split.shares.values()) == pytest.approx(1)
    assert split == odds.judge_odds(boundary, _grid())  # seeded: a rerun gives the same odds
    assert VerdictOdds.from_json(split.to_json()) == split


def test_a_single_seed_cannot_be_redrawn():
    one = odds.judge_odds(lambda t: _Judged(None), _grid(seeds=(5,)))
    assert one == VerdictOdds({"INCONCLUSIVE": 1.0}, 1)


def _evidence(verdict_holds, shares=None, noise=None) -> Evidence:
    ev = Evidence(Claim(id="t.x", statement="s", source="src"), "cpu", None)
    ev.noise = noise
    ev.metric("acc", 0.5, Tolerance(why="w", abs=0.1, domain=(0, 1)))
    ev.decide(verdict_holds, "r", None if shares is None else VerdictOdds(shares, 200))
    return ev


def test_the_reference_accepts_every_plausible_verdict_and_only_those(tmp_path):
    ev = _evidence(True, {"REPRODUCED": 0.88, "INCONCLUSIVE": 0.1, "NOT_REPRODUCED": 0.02})
    assert any("paired redraws" in n for n in ev.notes)
    record = refs.reference_record(ev, "smoke", {})
    assert record["verdicts_plausible"] == ["INCONCLUSIVE", "REPRODUCED"]
    path = tmp_path / "t.x.json"
    lines = refs.write_reference(path, record)
    assert "verdicts accepted: (none) -> ['INCONCLUSIVE', 'REPRODUCED']" in lines
    ref = refs.load_reference(path)
    assert refs.compare(_evidence(None), ref).status == "PASS"
    assert refs.compare(_evidence(False), ref).status == "REGRESSED"  # 2%: not plausible


def test_a_kernel_paths_redraws_widen_what_is_accepted():
    noise = NoiseTable("t.x", {}, {}, verdicts={"avx2": "REPRODUCED"},
                       odds={"avx2": VerdictOdds({"REPRODUCED": 0.7, "INCONCLUSIVE": 0.3}, 200)})
    assert refs.verdicts_plausible(_evidence(True, {"REPRODUCED": 1.0}, noise)) == [
        "INCONCLUSIVE", "REPRODUCED"]


def test_a_design_that_plausibly_decides_both_ways_is_refused():
    ev = _evidence(True, {"REPRODUCED": 0.6, "NOT_REPRODUCED": 0.3, "INCONCLUSIVE": 0.1})
    (problem,) = refs.unstorable(ev)
    assert "both ['INCONCLUSIVE', 'NOT_REPRODUCED', 'REPRODUCED'] are plausible" in problem


def test_out_of_scope_drops_the_odds():
    ev = Evidence(Claim(id="t.g", statement="s", source="src", scope="gpu"), "cpu", None)
    ev.decide(True, "r", VerdictOdds({"REPRODUCED": 0.5, "INCONCLUSIVE": 0.5}, 200))
    assert ev.odds is None and ev.verdict.value == "OUT_OF_SCOPE"


def test_a_declared_boundary_verdict_is_stored_with_why_and_accepted(tmp_path):
    claim = Claim(id="t.b", statement="s", source="src",
                  boundary={"INCONCLUSIVE": "3 seeds: one path's bounds straddle the margin"})
    ev = Evidence(claim, "cpu", None)
    ev.metric("acc", 0.5, Tolerance(why="w", abs=0.1, domain=(0, 1)))
    ev.decide(False, "r", VerdictOdds({"NOT_REPRODUCED": 1.0}, 100))
    record = refs.reference_record(ev, "smoke", {})
    assert record["verdicts_declared"] == claim.boundary
    path = tmp_path / "t.b.json"
    refs.write_reference(path, record)
    ref = refs.load_reference(path)
    assert ref.verdicts_allowed == ["INCONCLUSIVE", "NOT_REPRODUCED"]
    other = Evidence(claim, "cpu", None)
    other.metric("acc", 0.5, Tolerance(why="w", abs=0.1, domain=(0, 1)))
    other.decide(True, "r")
    assert refs.compare(other, ref).status == "REGRESSED"  # R was never declared nor seen


def test_a_boundary_needs_known_verdicts_and_reasons():
    with pytest.raises(ValueError, match="each with why"):
        Claim(id="t.c", statement="s", source="src", boundary={"INCONCLUSIVE": " "})
    with pytest.raises(ValueError, match="each with why"):
        Claim(id="t.c", statement="s", source="src", boundary={"MAYBE": "x"})

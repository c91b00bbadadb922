"""Bands from measured noise: the rule, its justification text, and collecting a measurement."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import bands
from harness.bands import Measured, NoiseTable, PathValue
from harness.claim import ACCURACY, Claim
from harness.evidence import Evidence


def table(**metrics: dict[str, PathValue]) -> NoiseTable:
    return NoiseTable("t.x", metrics, {}, cpu="a CPU")


def test_band_is_k_root2_sigma_of_a_new_draw():
    per = {"native": PathValue(0.50, (0.48, 0.52)), "aten-default": PathValue(0.53, (0.51, 0.55)),
           "avx2": PathValue(0.49, (0.47, 0.51))}
    tol = Measured("acc", ACCURACY).resolve("acc", table(acc=per))
    sd_paths = float(__import__("statistics").stdev([0.50, 0.53, 0.49]))
    sd_mean = math.sqrt(((0.02**2) * 2 * 3) / 3) / math.sqrt(2)  # pooled seed σ over √n
    assert tol.abs == pytest.approx(3 * math.sqrt(2) * max(sd_paths, sd_mean))
    assert tol.domain == ACCURACY
    for text in ("native 0.5 (seeds 0.48, 0.52)", "aten-default 0.53", "avx2 0.49", "a CPU",
                 "3·√2·σ", "largest deviation 0.03"):
        assert text in tol.why


def test_band_covers_every_measured_path_and_the_floor():
    per = {"native": PathValue(0.5), "avx2": PathValue(0.9)}
    tol = Measured("x", ACCURACY, floor=0.01).resolve("x", table(x=per))
    assert tol.abs >= 0.4
    flat = {"native": PathValue(0.5), "avx2": PathValue(0.5)}
    assert Measured("x", ACCURACY, floor=0.02).resolve("x", table(x=flat)).abs == 0.02
    assert Measured("x", (0, math.inf), floor_rel=0.4).resolve("x", table(x=flat)).abs == 0.2


def test_pooling_uses_every_metric_named_by_the_pool():
    noisy = {"native": PathValue(0.5, (0.3, 0.7))}
    quiet = {"native": PathValue(0.5, (0.5, 0.5))}
    alone = Measured("a", ACCURACY).resolve("acc_a", table(acc_a=quiet, acc_b=noisy))
    pooled = Measured("a", ACCURACY, pool="acc").resolve("acc_a", table(acc_a=quiet, acc_b=noisy))
    assert alone.abs == 0 and pooled.abs > 0.2


def test_unmeasured_metric_gets_the_floor_and_says_so():
    tol = Measured("acc", ACCURACY, floor=0.03).resolve("acc", None)
    assert tol.abs == 0.03 and "NOT MEASURED" in tol.why


def test_evidence_resolves_measured_bands_from_its_noise():
    ev = Evidence(Claim(id="t.x", statement="s", source="src"), "cpu", None)
    ev.noise = table(acc={"native": PathValue(0.5), "avx2": PathValue(0.6)})
    ev.metric("acc", 0.5, Measured("acc", ACCURACY), samples=[0.4, 0.6])
    m = ev.measurements["acc"]
    assert m.tolerance.abs == pytest.approx(3 * math.sqrt(2) * math.sqrt(0.005))  # = 0.3
    assert m.samples == (0.4, 0.6)


@given(st.lists(st.floats(0, 1), min_size=2, max_size=6),
       st.lists(st.floats(0, 1), min_size=2, max_size=6))
def test_pooled_sd_is_between_the_groups_sds(a, b):
    import statistics

    pooled = bands.pooled_sd([a, b])
    lo, hi = sorted((statistics.stdev(a), statistics.stdev(b)))
    assert lo - 1e-9 <= pooled <= hi + 1e-9


def test_collect_writes_one_noise_file_per_claim_from_the_runs(tmp_path):
    def run(setting: str, value: float):
        d = tmp_path / "results" / setting / "run"
        d.mkdir(parents=True)
        doc = {"environment": {"kernel_setting": setting, "kernel_path": {"x": setting},
                               "cpu": "a CPU"},
               "claims": [{"claim": "t.x", "metrics": {"acc": value},
                           "samples": {"acc": [value - 0.01, value + 0.01]}},
                          {"claim": "t.skipped", "metrics": {}}]}
        (d / "claims.json").write_text(json.dumps(doc))
        return d

    runs = [run("native", 0.5), run("avx2", 0.52)]
    lines = bands.collect(runs, tmp_path / "refs", "smoke", "cpu")
    path = bands.noise_path(tmp_path / "refs", "smoke", "cpu", "t.x")
    assert lines == [f"{path}: settings native, avx2"]
    loaded = bands.load_noise(path)
    assert loaded.of("acc")["avx2"] == PathValue(0.52, (0.51, 0.53))
    assert not bands.noise_path(tmp_path / "refs", "smoke", "cpu", "t.skipped").exists()


def test_runs_under_an_unnamed_setting_are_refused(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "claims.json").write_text(json.dumps({"environment": {"kernel_setting": "custom"},
                                               "claims": []}))
    with pytest.raises(bands.NoiseError, match="unnamed kernel setting"):
        bands.collect([d], tmp_path, "smoke", "cpu")


@pytest.mark.parametrize("content, match", [("{oops", "corrupt noise file"),
                                            (json.dumps({"schema": 1}), "malformed noise file")])
def test_a_bad_noise_file_is_an_error_naming_it(tmp_path, content, match):
    path = tmp_path / "n.json"
    path.write_text(content)
    with pytest.raises(bands.NoiseError, match=match) as err:
        bands.load_noise(path)
    assert str(path) in str(err.value)


def test_band_covers_every_path_around_the_value_being_stored():
    per = {"native": PathValue(0.70), "avx2": PathValue(0.62)}
    tol = Measured("r", (-1, 1), floor=0.05).resolve("r", table(r=per), value=0.80)
    assert tol.abs >= 0.18 - 1e-12  # 0.80 - 0.62: a timing moved since the noise was measured


def test_mean_accuracy_is_the_shared_accuracy_band_spec():
    from harness.bands import mean_accuracy
    from harness.claim import ACCURACY

    m = mean_accuracy("dense")
    assert m.domain == ACCURACY and m.floor == 0.01 and m.pool is None
    assert m.what.startswith("dense: mean test accuracy over seeds")


@given(st.lists(st.floats(-1, 1), min_size=1, max_size=4), st.floats(-1, 1),
       st.floats(0, 0.1))
def test_every_measured_path_lies_inside_the_band_on_either_side(values, stored, floor):
    """Whatever the paths' spread, each path's value is inside the band around the value being
    stored: paths below it as well as above (a one-sided deviation would miss half)."""
    names = ["native", "aten-default", "avx2", "other"]
    per = {names[i]: PathValue(v) for i, v in enumerate(values)}
    tol = Measured("m", (-2, 2), floor=floor).resolve("m", table(m=per), value=stored)
    assert tol.abs >= floor
    for v in values:
        assert tol.violation("m", v, stored) is None


@pytest.mark.parametrize("stored", [0.3, 0.7])
def test_identical_paths_away_from_the_stored_value_set_the_band(stored):
    per = {"native": PathValue(0.5), "aten-default": PathValue(0.5), "avx2": PathValue(0.5)}
    tol = Measured("m", (-1, 1)).resolve("m", table(m=per), value=stored)
    assert tol.abs == pytest.approx(0.2)


def test_held_out_check_rebuilds_bands_and_verdicts_without_the_path():
    from harness.claim import Tolerance
    from harness.odds import VerdictOdds
    from harness.references import StoredMetric

    spec = Measured("acc", ACCURACY, floor=0.01)
    per = {"native": PathValue(0.50, (0.49, 0.51)), "aten-default": PathValue(0.51, (0.50, 0.52)),
           "avx2": PathValue(0.80, (0.79, 0.81))}
    noise = NoiseTable("t.x", {"acc": per}, {}, verdicts={
        "native": "REPRODUCED", "aten-default": "REPRODUCED", "avx2": "INCONCLUSIVE"})
    stored = {"acc": StoredMetric(0.5, spec.resolve("acc", noise, 0.5))}
    # Stored with every path, the band covers avx2; rebuilt without it, it does not.
    assert stored["acc"].tolerance.violation("acc", 0.80, 0.5) is None
    problems = bands.held_out_problems(stored, noise, "avx2")
    assert any("acc: measured 0.8 outside" in p for p in problems)
    assert any("verdict INCONCLUSIVE" in p for p in problems)
    assert not bands.held_out_problems(stored, noise, "native")  # aten and avx2 span it
    # A redraw that reaches INCONCLUSIVE often enough makes it acceptable.
    odds = {"native": VerdictOdds({"REPRODUCED": 0.9, "INCONCLUSIVE": 0.1}, 200)}
    noisy = NoiseTable("t.x", {}, {}, verdicts=noise.verdicts, odds=odds)
    assert not bands.held_out_problems({}, noisy, "avx2")
    # A fixed band (no stored rule) is reused around the other paths' value.
    fixed = {"acc": StoredMetric(0.5, Tolerance(why="fixed", abs=0.4, domain=ACCURACY))}
    assert not [p for p in bands.held_out_problems(fixed, noise, "avx2") if "acc:" in p]

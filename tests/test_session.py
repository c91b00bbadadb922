"""harness.session: the option values, the claims a session selects, and the executor it
asks for (the plugin's workflow is tests/test_plugin.py)."""

from __future__ import annotations

import argparse

import pytest

from harness import session
from harness.claim import Claim
from harness.runs import executors as ex


class Item:
    """What the session reads of a collected test: its claim marker."""

    def __init__(self, claim: Claim | None = None, args: tuple = ()) -> None:
        self.nodeid = claim.id if claim else "test_plain"
        self.marker = pytest.mark.claim(*(args or (claim,))).mark if claim or args else None

    def get_closest_marker(self, name: str):
        return self.marker


RULE = Item(Claim(id="agc.rule", statement="s", source="t"))
TRAINED = Item(Claim(id="itop.reaches_dense", statement="s", source="t", trained=True))
PLAIN = Item()


def test_a_claim_check_is_matched_by_its_id_and_family():
    assert session.claim_keywords(RULE) == {"agc.rule", "agc"}
    assert session.claim_keywords(PLAIN) == set()
    assert session.claim_keywords(Item(args=("not a claim",))) == set()


def test_claims_are_selected_by_glob_and_by_training():
    items = [RULE, TRAINED, PLAIN]
    assert session.select(items, False, []) == (items, [])
    assert session.select(items, True, []) == ([TRAINED], [RULE, PLAIN])
    assert session.select(items, False, ["agc.*"]) == ([RULE], [TRAINED, PLAIN])
    with pytest.raises(pytest.UsageError, match="unknown claim 'nasvit.x'; known claims: agc.rule"):
        session.select(items, False, ["nasvit.x"])
    with pytest.raises(pytest.UsageError, match="--trained: no collected claim trains networks"):
        session.select([RULE, PLAIN], True, [])
    with pytest.raises(pytest.UsageError, match="use @pytest.mark.claim"):
        session.select([Item(args=("not a claim",))], True, [])


@pytest.mark.parametrize("parse, value, expected", [
    (session.workers_option, "auto", "auto"), (session.workers_option, "3", 3),
    (session.seconds_option, "2.5", 2.5)])
def test_option_values(parse, value, expected):
    assert parse(value) == expected


@pytest.mark.parametrize("parse, value", [
    (session.workers_option, "0"), (session.workers_option, "two"),
    (session.seconds_option, "0"), (session.seconds_option, "inf"), (session.seconds_option, "x")])
def test_bad_option_values(parse, value):
    with pytest.raises(argparse.ArgumentTypeError):
        parse(value)


def test_the_full_profile_on_cuda_shares_each_gpu_by_default():
    def opts(**kw):
        base = dict(executor=None, executor_option=[], workers="auto", cell_timeout=None,
                    cells_per_gpu="auto", profile="full")
        return argparse.Namespace(**{**base, **kw})

    assert session.executor_spec(opts(), "cuda").cells_per_gpu == ex.CELLS_PER_GPU
    assert session.executor_spec(opts(profile="smoke"), "cuda").name == "local"
    assert session.executor_spec(opts(cells_per_gpu=1), "cuda").name == "local"
    assert session.executor_spec(opts(), "cpu").cells_per_gpu == 1

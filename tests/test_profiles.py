from dataclasses import dataclass

import pytest

from harness.profiles import Profile, UsageError, resolve_device, resolve_profile


def test_auto_picks_full_only_with_cuda():
    assert resolve_profile("auto", cuda=True) == "full"
    assert resolve_profile("auto", cuda=False) == "smoke"
    assert resolve_profile("smoke", cuda=True) == "smoke"


def test_unknown_profile_and_device_are_clear_errors():
    with pytest.raises(UsageError, match="unknown profile 'big'; choose one of: smoke, full"):
        resolve_profile("big")
    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(UsageError, match="no CUDA device"):
        resolve_device("cuda", cuda=False)


@dataclass(frozen=True)
class Cfg:
    steps: int

    def dry_run(self):
        return Cfg(steps=1)


def test_pick_chooses_the_profile_and_shrinks_on_dry_run():
    configs = {"smoke": Cfg(10), "full": Cfg(1000)}
    assert Profile("full", "cpu").pick(configs) == Cfg(1000)
    assert Profile("full", "cpu", dry_run=True).pick(configs) == Cfg(1)
    with pytest.raises(UsageError, match="no 'full' profile"):
        Profile("full", "cpu").pick({"smoke": Cfg(1)})


def test_unshrunk_is_the_config_as_defined_even_on_a_dry_run():
    configs = {"smoke": Cfg(10), "full": Cfg(1000)}
    assert Profile("full", "cpu", dry_run=True).unshrunk(configs) == Cfg(1000)
    assert Profile("smoke", "cpu").unshrunk(configs) == Cfg(10)
    with pytest.raises(UsageError, match="no 'full' profile"):
        Profile("full", "cpu", dry_run=True).unshrunk({"smoke": Cfg(1)})


def test_cpu_device_class():
    assert Profile("smoke", "cpu").device_class == "cpu"

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
    with pytest.raises(UsageError, match="sees no GPU"):
        resolve_device("cuda", cuda=False)


def test_auto_device_on_a_gpu_box_whose_torch_sees_no_gpu_is_an_error_not_the_cpu():
    # nvidia-smi on PATH (driver=True) and a CUDA-less torch: --profile full --device auto
    # must not quietly run on the CPU; the CPU there is only for who asks for it.
    with pytest.raises(UsageError, match=r"--device auto: this machine has an NVIDIA driver "
                                         r"\(nvidia-smi is on PATH\) but torch .* sees no GPU"):
        resolve_device("auto", cuda=False, driver=True)
    assert resolve_device("cpu", cuda=False, driver=True) == "cpu"  # asked for explicitly
    assert resolve_device("auto", cuda=False, driver=False) == "cpu"  # no driver: the CPU box
    assert resolve_device("auto", cuda=True, driver=True) == "cuda"
    assert resolve_device("cpu", cuda=True, driver=True) == "cpu"


def test_no_cuda_messages_say_what_is_true_of_the_machine():
    with pytest.raises(UsageError) as no_driver:
        resolve_device("cuda", cuda=False, driver=False)
    text = str(no_driver.value)
    assert "\n" not in text and "nvidia-smi not found" in text and "on PATH" not in text
    assert text.startswith("--device cuda: this machine has no NVIDIA driver")
    with pytest.raises(UsageError) as driver:
        resolve_device("cuda", cuda=False, driver=True)
    text = str(driver.value)
    assert "\n" not in text and "nvidia-smi is on PATH" in text and "not found" not in text
    assert "--device cpu" in text


def test_the_driver_is_read_from_path_by_default(monkeypatch, tmp_path):
    import harness.profiles as profiles

    monkeypatch.setenv("PATH", str(tmp_path))
    assert not profiles.nvidia_driver_present()
    assert resolve_device("auto", cuda=False) == "cpu"
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert profiles.nvidia_driver_present()
    with pytest.raises(UsageError, match="nvidia-smi is on PATH"):
        resolve_device("auto", cuda=False)


def test_the_plugin_refuses_the_full_profile_on_the_auto_device_of_a_broken_gpu_box(
        pytester, monkeypatch, tmp_path):
    # pytest itself, not only the noxfile: a fake nvidia-smi on PATH, this CPU torch.
    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch sees a GPU: auto resolves to cuda")
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    pytester.makepyfile(test_one="""
        import pytest
        from harness.claim import Claim

        C = Claim(id="demo.one", statement="s", source="t")

        @pytest.mark.claim(C)
        def test_one(evidence):
            evidence.decide(True, "fine")
    """)
    refused = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--profile", "full")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*--device auto: this machine has an NVIDIA driver*"])
    dry = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--profile", "full",
                                       "--dry-run", "--results-dir", str(tmp_path / "r"))
    assert dry.ret == 0  # a dry run runs on the CPU on purpose
    # (in a subprocess: a second in-process run that writes results trips over pandas' reload)
    cpu = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--profile", "full",
                                        "--device", "cpu", "--results-dir", str(tmp_path / "r"))
    assert cpu.ret == 0  # so does an explicit --device cpu


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

"""The CUDA kernel settings (harness/environment.py) without a GPU: how the variables parse, the
torch flags they set, how a run names its setting, and the training cache key: one record per
CUDA setting, and CPU keys exactly as before the CUDA settings existed."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from harness import environment as envmod
from harness.environment import (
    CUDA_KERNEL_SETTINGS,
    KERNEL_SETTINGS,
    apply_cuda_kernel_setting,
    cuda_kernel_config,
    kernel_setting_name,
    setting_environment,
)
from harness.runs import cache as rc

B = torch.backends


@pytest.fixture
def torch_flags():
    """Restores every flag ``apply_cuda_kernel_setting`` touches (and the variable it sets)."""
    precisions = [(obj, obj.fp32_precision) for obj in (B.cuda.matmul, B.cudnn)
                  if hasattr(obj, "fp32_precision")]
    saved = (B.cuda.matmul.allow_tf32, B.cudnn.allow_tf32, B.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    B.cuda.matmul.allow_tf32, B.cudnn.allow_tf32, B.cudnn.benchmark = saved[:3]
    torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])
    for obj, value in precisions:
        obj.fp32_precision = value
    if saved[5] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[5]


def flags() -> dict:
    return {"matmul_tf32": B.cuda.matmul.allow_tf32, "cudnn_tf32": B.cudnn.allow_tf32,
            "benchmark": B.cudnn.benchmark,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled()}


@pytest.mark.parametrize("name, expected", [
    ("native", {"matmul_tf32": True, "cudnn_tf32": True, "benchmark": True, "deterministic": False}),
    ("no-tf32", {"matmul_tf32": False, "cudnn_tf32": False, "benchmark": True,
                 "deterministic": False}),
    ("deterministic", {"matmul_tf32": True, "cudnn_tf32": True, "benchmark": False,
                       "deterministic": True, "warn_only": True}),
])
def test_each_cuda_setting_sets_the_torch_flags(torch_flags, name, expected, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    config = apply_cuda_kernel_setting(CUDA_KERNEL_SETTINGS[name])
    got = flags()
    assert {k: got[k] for k in expected} == expected
    assert config == {"tf32": expected["matmul_tf32"], "deterministic": expected["deterministic"],
                      "cudnn_benchmark": expected["benchmark"]}
    assert (os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8") == (name == "deterministic")


def test_the_variables_parse_leniently_and_a_bad_value_is_an_error_naming_it():
    assert cuda_kernel_config({}) == {"tf32": True, "deterministic": False, "cudnn_benchmark": True}
    for yes in ("1", "true", "Yes", " on "):
        assert cuda_kernel_config({"HARNESS_CUDA_DETERMINISTIC": yes})["deterministic"]
    for no in ("0", "false", "NO", "off", ""):
        assert cuda_kernel_config({"HARNESS_CUDA_TF32": no})["tf32"] is (no == "")
    with pytest.raises(ValueError, match="HARNESS_CUDA_TF32='maybe'"):
        cuda_kernel_config({"HARNESS_CUDA_TF32": "maybe"})


def test_a_run_names_its_cuda_setting_and_keeps_naming_its_cpu_path(monkeypatch):
    for v in (*envmod.CUDA_KERNEL_VARIABLES, *envmod.KERNEL_VARIABLES):
        monkeypatch.delenv(v, raising=False)
    assert kernel_setting_name(device="cuda") == "native"
    monkeypatch.setenv("HARNESS_CUDA_TF32", "1")  # said explicitly, still native
    assert kernel_setting_name(device="cuda") == "native"
    monkeypatch.setenv("HARNESS_CUDA_TF32", "0")
    assert kernel_setting_name(device="cuda") == "no-tf32"
    assert kernel_setting_name() == "native"  # the CPU path is untouched by CUDA variables
    monkeypatch.setenv("HARNESS_CUDA_DETERMINISTIC", "1")
    assert kernel_setting_name(device="cuda") == "custom"  # no TF32 and deterministic: unnamed
    path = envmod.kernel_path("cuda")
    assert path["cuda"]["HARNESS_CUDA_TF32"] == "0" and path["cuda"]["deterministic"] is True
    assert kernel_setting_name(path, device="cuda") == "custom"


def test_capture_reports_the_cuda_setting_on_cuda_and_the_cpu_as_before(monkeypatch):
    for v in envmod.CUDA_KERNEL_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    cpu = envmod.capture("cpu")
    assert set(cpu["kernel_path"]) == {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "aten_capability"}
    assert cpu["kernel_setting"] in KERNEL_SETTINGS
    monkeypatch.setenv("HARNESS_CUDA_DETERMINISTIC", "1")
    cuda = envmod.capture("cuda")  # no GPU here: only the names are checked
    assert cuda["kernel_setting"] == "deterministic"
    assert cuda["kernel_path"]["cuda"]["cudnn_benchmark"] is False


def test_setting_environment_sets_one_setting_and_clears_the_others():
    base = {"PATH": "/bin", "HARNESS_CUDA_TF32": "0", "ATEN_CPU_CAPABILITY": "default"}
    env = setting_environment("cuda", "deterministic", base)
    assert env["HARNESS_CUDA_DETERMINISTIC"] == "1" and "HARNESS_CUDA_TF32" not in env
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and env["PATH"] == "/bin"
    assert env["ATEN_CPU_CAPABILITY"] == "default"  # a CUDA setting leaves the CPU path alone
    env = setting_environment("cpu", "avx2", base)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert setting_environment("cpu", "native", base).get("ATEN_CPU_CAPABILITY") is None
    assert envmod.settings_for("cuda") is CUDA_KERNEL_SETTINGS
    assert envmod.settings_for("cpu") is KERNEL_SETTINGS


def _key_before_cuda_settings(key: dict, code: str) -> str:
    """``cache_key`` as it was before the CUDA settings: the CPU keys must stay exactly this."""
    doc = {"v": rc.CACHE_VERSION, "torch": torch.__version__,
           "kernels": envmod.effective_kernels(), "code": code, **key}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


@pytest.mark.parametrize("cuda_env", [{}, {"HARNESS_CUDA_TF32": "0"},
                                      {"HARNESS_CUDA_DETERMINISTIC": "1"}])
def test_a_cpu_key_is_what_it_was_whatever_the_cuda_setting(monkeypatch, cuda_env):
    for v in envmod.CUDA_KERNEL_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    for k, v in cuda_env.items():
        monkeypatch.setenv(k, v)
    for key in ({"study": "x", "device_class": "cpu"}, {"study": "x", "device": "cpu"},
                {"study": "x"}):
        before = _key_before_cuda_settings(key, "c")
        assert rc.cache_key(key, "c") == before
        assert rc.cache_key(key, "c", "cpu") == before


def test_each_cuda_setting_has_its_own_key(monkeypatch):
    for v in envmod.CUDA_KERNEL_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    keys = {}
    for name, setting in CUDA_KERNEL_SETTINGS.items():
        with monkeypatch.context() as m:
            for k, v in setting.items():
                m.setenv(k, v)
            by_key = rc.cache_key({"study": "x", "device_class": "cuda-nvidia-h200"}, "c")
            by_scaling_key = rc.cache_key({"study": "x", "device": "cuda-nvidia-h200"}, "c")
            by_device = rc.cache_key({"study": "x"}, "c", "cuda")
            assert by_key != _key_before_cuda_settings(
                {"study": "x", "device_class": "cuda-nvidia-h200"}, "c")
            keys[name] = (by_key, by_scaling_key, by_device)
    for i in range(3):
        assert len({k[i] for k in keys.values()}) == len(CUDA_KERNEL_SETTINGS)
    with monkeypatch.context() as m:  # "1" is what native means: the same record
        m.setenv("HARNESS_CUDA_TF32", "1")
        assert rc.cache_key({"study": "x"}, "c", "cuda") == keys["native"][2]


def _cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n")
    return path


def test_a_cap_at_avx2_binds_only_on_a_cpu_with_more(tmp_path, monkeypatch):
    assert not envmod.cpu_has_isa_above_avx2(_cpuinfo(tmp_path, "fpu sse2 avx avx2 fma"))
    for more in ("avx512f", "avx_vnni", "amx_tile"):
        assert envmod.cpu_has_isa_above_avx2(_cpuinfo(tmp_path, f"fpu avx2 {more}"))
    assert envmod.cpu_has_isa_above_avx2(tmp_path / "missing")  # unknown: it may bind

    monkeypatch.setattr(envmod, "cpu_has_isa_above_avx2", lambda: False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert envmod.effective_kernels()["onednn_max_isa"] is None  # binds nothing here
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")
    assert envmod.effective_kernels()["onednn_max_isa"] == "SSE41"  # binds: its own records
    monkeypatch.setattr(envmod, "cpu_has_isa_above_avx2", lambda: True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert envmod.effective_kernels()["onednn_max_isa"] == "AVX2"
    assert envmod.effective_kernels()["aten_capability"] == torch.backends.cpu.get_cpu_capability()

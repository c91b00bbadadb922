"""The environment captured with every result: software, hardware and code identity."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit(root: Path = REPO_ROOT) -> str:
    """The harness commit, with ``-dirty`` when the work tree has changes; ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The environment variables that choose which CPU kernels run. Another CPU runs other kernels,
# so a trained number moves there like a new seed; these settings reproduce that on one machine.
# ATEN_CPU_CAPABILITY picks ATen's vectorised kernels (elementwise ops, reductions, norms);
# ONEDNN_MAX_CPU_ISA caps oneDNN's (convolutions, matmuls).
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
KERNEL_SETTINGS: dict[str, dict[str, str]] = {
    "native": {},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
# The setting `nox -s claims_portability` runs: every reference must hold there too.
PORTABILITY_SETTING = "avx2"


def kernel_path(device: str = "cpu") -> dict[str, Any]:
    """The CPU kernel path in force: the two variables as set, and ATen's resolved capability
    (what actually runs: a machine without AVX-512 resolves to AVX2 with nothing set). On
    ``cuda`` also the CUDA setting (``cuda_kernel_path``) under ``"cuda"``; the CPU part is the
    same dict either way (it enters the training cache key as is)."""
    import torch

    path: dict[str, Any] = {v: os.environ.get(v) for v in KERNEL_VARIABLES}
    path["aten_capability"] = torch.backends.cpu.get_cpu_capability()
    if device == "cuda":
        path["cuda"] = cuda_kernel_path()
    return path


# /proc/cpuinfo flags of the ISAs oneDNN would use above AVX2 (AVX-512, AVX-VNNI, AMX). On a CPU
# with none of them a cap at AVX2 binds nothing: oneDNN runs what it runs uncapped.
_ABOVE_AVX2_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


def effective_kernels() -> dict[str, Any]:
    """The CPU kernels that actually run, as the training cache keys them: ATen's resolved
    capability, and oneDNN's ISA cap only where it binds. Two spellings of the same kernels
    share records: on a CPU without AVX-512 or AVX-VNNI the ``avx2`` setting runs exactly the
    native kernels (measured on such a CPU: the 143 trained metrics of the noise store are
    equal bit for bit under both), so the portability run reuses the native run's cells there
    and retrains where the kernels differ (an AVX-512 CPU). Where the CPU's flags cannot be
    read the cap counts as binding."""
    import torch

    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or None
    if cap is not None and cap.upper() == "AVX2" and not cpu_has_isa_above_avx2():
        cap = None
    return {"aten_capability": torch.backends.cpu.get_cpu_capability(), "onednn_max_isa": cap}


def cpu_has_isa_above_avx2(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has an ISA above AVX2 for oneDNN (True where it cannot be told)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return True
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return any(f in flags for f in _ABOVE_AVX2_FLAGS)
    return True


def kernel_setting_name(path: dict[str, Any] | None = None, device: str = "cpu") -> str:
    """The name in ``KERNEL_SETTINGS`` of the variables in force, or ``custom``; on ``cuda``
    the name in ``CUDA_KERNEL_SETTINGS`` of the CUDA setting in force."""
    if device == "cuda":
        cuda = (path or {}).get("cuda") or cuda_kernel_path()
        resolved = {k: cuda.get(k) for k in ("tf32", "deterministic")}
        for name, setting in CUDA_KERNEL_SETTINGS.items():
            config = cuda_kernel_config(setting)
            if {k: config[k] for k in resolved} == resolved:
                return name
        return "custom"
    path = kernel_path() if path is None else path
    given = {v: path.get(v) for v in KERNEL_VARIABLES if path.get(v)}
    for name, setting in KERNEL_SETTINGS.items():
        if given == setting:
            return name
    return "custom"


# The CUDA counterpart: which GPU kernels run. TF32 (10-bit mantissa matmuls and convolutions
# on Ampere and later) and cuDNN's autotuner change the arithmetic of a trained run the way
# another CPU does; deterministic algorithms pin the reduction order. These settings are the
# paths `nox -s calibrate` measures on a GPU (harness.calibrate), and every CUDA training run
# applies the one in force (``apply_cuda_kernel_setting``):
# - native: TF32 allowed for matmuls and cuDNN, cudnn.benchmark on (what a user gets for speed);
# - no-tf32: full fp32 matmuls and convolutions, cudnn.benchmark on;
# - deterministic: deterministic algorithms (warn only where none exists), cudnn.benchmark off,
#   CUBLAS_WORKSPACE_CONFIG=:4096:8 (cuBLAS needs it for reproducible reductions).
CUDA_KERNEL_VARIABLES = ("HARNESS_CUDA_TF32", "HARNESS_CUDA_DETERMINISTIC")
CUDA_KERNEL_SETTINGS: dict[str, dict[str, str]] = {
    "native": {},
    "no-tf32": {"HARNESS_CUDA_TF32": "0"},
    "deterministic": {"HARNESS_CUDA_DETERMINISTIC": "1"},
}
CUBLAS_WORKSPACE = ":4096:8"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{name}={env.get(name)!r}: use 1 or 0 "
                     f"(the CUDA kernel settings: {', '.join(CUDA_KERNEL_SETTINGS)})")


def cuda_kernel_config(env: Mapping[str, str] | None = None) -> dict[str, bool]:
    """The CUDA setting the variables ask for (default: ``os.environ``): TF32 allowed (default
    yes), deterministic algorithms (default no); cudnn.benchmark is on unless deterministic."""
    env = os.environ if env is None else env
    deterministic = _flag(env, "HARNESS_CUDA_DETERMINISTIC", False)
    return {"tf32": _flag(env, "HARNESS_CUDA_TF32", True), "deterministic": deterministic,
            "cudnn_benchmark": not deterministic}


def cuda_kernel_path() -> dict[str, Any]:
    """The CUDA setting in force: the variables as set and what they resolve to."""
    return {**{v: os.environ.get(v) for v in CUDA_KERNEL_VARIABLES}, **cuda_kernel_config()}


def apply_cuda_kernel_setting(env: Mapping[str, str] | None = None) -> dict[str, bool]:
    """Set torch's CUDA flags to the setting the variables ask for (``cuda_kernel_config``):
    ``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``,
    ``cudnn.benchmark`` and ``torch.use_deterministic_algorithms(..., warn_only=True)``.
    Deterministic also sets ``CUBLAS_WORKSPACE_CONFIG`` (unless set) for cuBLAS, which reads
    it when its first handle is made: call this before any CUDA work. Returns the setting."""
    import torch

    config = cuda_kernel_config(env)
    if config["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cuda.matmul.allow_tf32 = config["tf32"]
    torch.backends.cudnn.allow_tf32 = config["tf32"]
    torch.backends.cudnn.benchmark = config["cudnn_benchmark"]
    torch.use_deterministic_algorithms(config["deterministic"], warn_only=True)
    return config


def settings_for(device: str) -> dict[str, dict[str, str]]:
    """The kernel settings whose noise makes a band on ``device``."""
    return CUDA_KERNEL_SETTINGS if device == "cuda" else KERNEL_SETTINGS


def setting_environment(device: str, name: str,
                        base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with the kernel variables of ``device`` set to the
    setting ``name`` and every other kernel variable of that device removed."""
    env = dict(os.environ if base is None else base)
    variables = CUDA_KERNEL_VARIABLES if device == "cuda" else KERNEL_VARIABLES
    for v in variables:
        env.pop(v, None)
    env.update(settings_for(device)[name])
    if device == "cuda" and cuda_kernel_config(env)["deterministic"]:
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    return env


def capture(device: str = "cpu") -> dict[str, Any]:
    """Versions, device and code identity, as a flat JSON-able dict."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device,
        "device_name": cpu_name(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "harness_commit": git_commit(),
        "kernel_path": kernel_path(device),
        "kernel_setting": kernel_setting_name(device=device),
    }
    if device == "cuda" and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
        env["gpu_count"] = torch.cuda.device_count()
    return env


@contextmanager
def timing_settings(device: str, cpu_threads: int):
    """cudnn autotuning on CUDA; a fixed thread count on the CPU. Restores both afterwards."""
    import torch

    prev_threads, prev_bench = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        if device == "cuda":
            torch.backends.cudnn.benchmark = True
        else:
            torch.set_num_threads(cpu_threads)
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark = prev_bench

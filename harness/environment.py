"""The environment captured with every result: software, hardware and code identity."""

from __future__ import annotations

import os
import platform
import subprocess
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


def kernel_path() -> dict[str, Any]:
    """The CPU kernel path in force: the two variables as set, and ATen's resolved capability
    (what actually runs: a machine without AVX-512 resolves to AVX2 with nothing set)."""
    import torch

    path: dict[str, Any] = {v: os.environ.get(v) for v in KERNEL_VARIABLES}
    path["aten_capability"] = torch.backends.cpu.get_cpu_capability()
    return path


def kernel_setting_name(path: dict[str, Any] | None = None) -> str:
    """The name in ``KERNEL_SETTINGS`` of the variables in force, or ``custom``."""
    path = kernel_path() if path is None else path
    given = {v: path.get(v) for v in KERNEL_VARIABLES if path.get(v)}
    for name, setting in KERNEL_SETTINGS.items():
        if given == setting:
            return name
    return "custom"


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
        "kernel_path": kernel_path(),
        "kernel_setting": kernel_setting_name(),
    }
    if device == "cuda" and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
        env["gpu_count"] = torch.cuda.device_count()
    return env

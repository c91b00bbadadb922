"""The noxfile's choices: on a GPU box (nvidia-smi on PATH) ``nox -s claims`` runs the full
profile on CUDA, and a torch without CUDA there stops the run with the fix in the message
instead of quietly running the smoke profile on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import noxfile  # noqa: E402


def test_a_gpu_box_asks_for_the_full_profile_on_cuda_unless_told_otherwise():
    assert noxfile.claims_arguments([], True) == ["--profile", "full", "--device", "cuda"]
    assert noxfile.claims_arguments(["--dry-run"], True)[:4] == ["--profile", "full", "--device",
                                                                 "cuda"]
    assert noxfile.claims_arguments(["--profile", "smoke"], True) == ["--profile", "smoke"]
    assert noxfile.claims_arguments(["--device=cpu"], True) == ["--device=cpu"]
    assert noxfile.claims_arguments([], False) == []  # auto: smoke on a CPU-only machine


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA: the check passes")
def test_nvidia_smi_with_a_cpu_torch_fails_loudly(tmp_path):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI (fake)'\n")
    fake.chmod(0o755)
    path = os.pathsep.join([str(fake.parent), str(Path(sys.executable).parent),
                            os.environ.get("PATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "nox", "-f", str(REPO / "noxfile.py"), "--no-venv",
         "--no-install", "-s", "claims"],
        cwd=tmp_path, env={**os.environ, "PATH": path, "HARNESS_TORCH": ""},
        capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "runs --profile full --device cuda" in out and "sees no GPU" in out, out
    assert "rm -rf .nox/claims" in out and "--profile smoke --device cpu" in out
    assert "pytest claims" not in out  # stopped before any claim ran

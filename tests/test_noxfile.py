"""The noxfile's choices: on a GPU box (nvidia-smi on PATH) ``nox -s claims`` runs the full
profile on CUDA, and a torch without CUDA there stops the run with the fix in the message
instead of quietly running the smoke profile on the CPU; ``--device cuda`` on a CPU box says so
in one true line; ``nox -s tests -- <paths>`` runs those paths only; ``nox -s cuda_tests`` runs
the CUDA tests and says when torch sees no GPU."""

from __future__ import annotations

import json
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


@pytest.mark.parametrize("args, gpu_box, check", [
    ([], True, True),  # the noxfile's own --profile full --device cuda
    (["--profile", "full"], True, True),  # full on the auto device: never quietly the CPU
    (["--device", "auto"], True, True),
    (["--profile=smoke"], True, True),  # the auto device on a GPU box: CUDA or an error
    (["--device", "cuda"], False, True),  # a CPU box asked for CUDA: the one-line answer
    (["--device=cuda", "--claim", "x"], False, True),
    (["--profile", "full", "--device", "cpu"], True, False),  # the CPU, asked for explicitly
    (["--device", "cuda", "--device", "cpu"], True, False),  # the last one wins, as argparse
    (["--profile", "full", "--dry-run"], True, False),  # a dry run runs on the CPU
    (["--profile", "full"], False, False),  # no driver: the auto device is the CPU box's
    ([], False, False),
])
def test_which_claims_runs_check_that_torch_sees_a_gpu(args, gpu_box, check):
    assert noxfile.needs_cuda_check(noxfile.claims_arguments(args, gpu_box), gpu_box) is check


def test_option_values_in_either_spelling():
    assert noxfile.option_value(["--device", "cuda"], "--device") == "cuda"
    assert noxfile.option_value(["--device=cpu", "-x"], "--device") == "cpu"
    assert noxfile.option_value(["--devices", "x"], "--device") is None
    assert noxfile.option_value(["--device"], "--device") is None


def _fake_nvidia_smi(tmp_path: Path) -> Path:
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI (fake)'\n")
    fake.chmod(0o755)
    return fake.parent


def _path(*first: Path) -> str:
    return os.pathsep.join([*map(str, first), str(Path(sys.executable).parent),
                            os.environ.get("PATH", "")])


def _nox(session: str, tmp_path: Path, path: str, *posargs: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "nox", "-f", str(REPO / "noxfile.py"), "--no-venv",
         "--no-install", "-s", session, *(["--", *posargs] if posargs else [])],
        cwd=tmp_path, env={**os.environ, "PATH": path, "HARNESS_TORCH": ""},
        capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(),
                             reason="this torch has CUDA: the check passes")


@NO_CUDA
@pytest.mark.parametrize("posargs", [(), ("--profile", "full"), ("--device", "auto"),
                                     ("--profile", "full", "--device", "auto")])
def test_nvidia_smi_with_a_cpu_torch_fails_loudly(tmp_path, posargs):
    code, out = _nox("claims", tmp_path, _path(_fake_nvidia_smi(tmp_path)), *posargs)
    assert code != 0, out
    if not posargs:
        assert "nvidia-smi is on PATH, so `nox -s claims` runs --profile full --device cuda" in out
    else:
        assert f"`nox -s claims -- {' '.join(posargs)}` needs CUDA on a machine with an NVIDIA " \
               "driver (nvidia-smi is on PATH)" in out, out
    assert "sees no GPU" in out and "nvidia-smi not found" not in out, out
    assert "rm -rf .nox/claims" in out and "--profile smoke --device cpu" in out
    assert "pytest claims" not in out  # stopped before any claim ran
    assert "import torch" not in out  # the check's result, not its source


def _check(path: str, *args: str) -> tuple[int, list[str]]:
    result = subprocess.run([sys.executable, "-c", noxfile.CUDA_CHECK, *args],
                            env={**os.environ, "PATH": path}, capture_output=True, text=True,
                            timeout=120)
    return result.returncode, (result.stdout + result.stderr).splitlines()


@NO_CUDA
def test_the_cuda_check_says_one_true_line_about_the_driver(tmp_path):
    # this python's torch has no CUDA; with and without an nvidia-smi on PATH
    bare = _path(tmp_path)
    if __import__("shutil").which("nvidia-smi", path=bare):
        pytest.skip("this machine has a real nvidia-smi")
    code, lines = _check(bare, "chosen-by-user", "--device", "cuda", "--claim", "agc.*")
    assert code == 1 and len(lines) == 1, lines
    assert lines[0] == (f"--device cuda: this machine has no NVIDIA driver (nvidia-smi not "
                        f"found) and torch {torch.__version__} (CUDA build: None) sees no GPU; "
                        f"run without --device for the smoke profile on the CPU")
    code, lines = _check(_path(_fake_nvidia_smi(tmp_path)), "chosen-by-nox", "--profile", "full",
                         "--device", "cuda")
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("nvidia-smi is on PATH, so `nox -s claims` runs --profile full "
                               "--device cuda, but this venv's torch")
    assert "not found" not in lines[0]


@NO_CUDA
def test_device_cuda_on_a_cpu_box_is_one_line_from_nox(tmp_path):
    bare = _path(tmp_path)
    if __import__("shutil").which("nvidia-smi", path=bare):
        pytest.skip("this machine has a real nvidia-smi")
    code, out = _nox("claims", tmp_path, bare, "--device", "cuda")
    assert code != 0, out
    said = [ln for ln in out.splitlines() if not ln.startswith("nox >")]
    assert said == [f"--device cuda: this machine has no NVIDIA driver (nvidia-smi not found) "
                    f"and torch {torch.__version__} (CUDA build: None) sees no GPU; run without "
                    f"--device for the smoke profile on the CPU"], out
    assert "on PATH" not in out and "import torch" not in out  # true, and not the script


@pytest.mark.parametrize("posargs, expected", [
    ([], ["tests"]),
    (["-x", "-q"], ["tests", "-x", "-q"]),
    (["tests/test_cuda.py"], ["tests/test_cuda.py"]),  # was: the whole folder and this file
    (["tests/test_cuda.py", "-x"], ["tests/test_cuda.py", "-x"]),
    (["-x", "tests/test_timing.py::test_noisy_measurement_warns"],
     ["-x", "tests/test_timing.py::test_noisy_measurement_warns"]),
    (["test_timing.py"], ["test_timing.py"]),
    (["tests"], ["tests"]),
    (["-k", "tests"], ["tests", "-k", "tests"]),  # an option's value, not a path
    (["-m", "cuda"], ["tests", "-m", "cuda"]),
    (["--deselect", "tests/test_x.py::t"], ["tests", "--deselect", "tests/test_x.py::t"]),
    (["--tb=short", "tests/agc"], ["--tb=short", "tests/agc"]),
])
def test_explicit_test_paths_replace_the_tests_folder(posargs, expected):
    assert noxfile.pytest_targets(posargs) == expected


def test_cuda_tests_arguments():
    assert noxfile.cuda_test_arguments([]) == (False, [])
    assert noxfile.cuda_test_arguments(["--require-gpu", "-x"]) == (True, ["-x"])
    assert noxfile.pytest_targets(noxfile.cuda_test_arguments(["-x"])[1]) == ["tests", "-x"]


@NO_CUDA
def test_cuda_tests_say_that_everything_skipped_and_require_gpu_fails(tmp_path):
    code, out = _nox("cuda_tests", tmp_path, _path(), "--require-gpu")
    assert code != 0 and "--require-gpu: torch" in out and "sees no GPU" in out, out
    assert "test session starts" not in out  # stopped before pytest
    code, out = _nox("cuda_tests", tmp_path, _path(), "tests/test_cuda.py")
    assert code == 0, out
    assert "sees no GPU" in out and "every CUDA test is skipped" in out
    assert "skipped" in out and " passed" not in out and "failed" not in out, out


class _FakeSession:
    """What ``shared_python`` uses of a nox session: its global config, ``run`` and ``log``."""

    def __init__(self, **config):
        from types import SimpleNamespace
        defaults = {"force_venv_backend": None, "no_venv": False, "no_install": False}
        self._runner = SimpleNamespace(global_config=SimpleNamespace(**{**defaults, **config}))
        self.calls: list[tuple[str, ...]] = []

    def run(self, *args, **kwargs):
        self.calls.append(tuple(map(str, args)))

    def log(self, *args):
        pass


def test_one_shared_environment_installed_once_and_again_when_its_inputs_change(tmp_path,
                                                                                 monkeypatch):
    env = tmp_path / "harness"
    first = _FakeSession()
    python = noxfile.shared_python(first, env)
    assert python == str(env / "bin" / "python")
    installs = [c for c in first.calls if "install" in c]
    assert [c[c.index("install") + 2:] for c in installs] == [
        tuple(noxfile.TORCH.split()), ("-e", f"{REPO}[test]"), ("--no-deps", noxfile.TIMM)]
    assert json.loads((env / noxfile.STAMP).read_text()) == noxfile.install_stamp()

    again = _FakeSession()  # another session: nothing installed
    assert noxfile.shared_python(again, env) == python and again.calls == []

    monkeypatch.setattr(noxfile, "TORCH", "torch==2.14.1")  # another torch: installed again
    changed = _FakeSession()
    noxfile.shared_python(changed, env)
    assert any("torch==2.14.1" in c for c in changed.calls)
    assert json.loads((env / noxfile.STAMP).read_text())["torch"] == "torch==2.14.1"

    no_venv = _FakeSession(force_venv_backend="none")  # nox --no-venv: nox's own interpreter
    assert noxfile.shared_python(no_venv, env) == sys.executable and no_venv.calls == []


def test_the_stamp_follows_pyproject():
    stamp = noxfile.install_stamp()
    assert stamp["pyproject"] == __import__("hashlib").sha256(
        (REPO / "pyproject.toml").read_bytes()).hexdigest()
    assert stamp["torch"] == noxfile.TORCH and stamp["timm"] == noxfile.TIMM

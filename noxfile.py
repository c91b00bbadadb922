"""Sessions: ``tests`` (unit and property tests), ``claims`` (the claim checks),
``claims_portability`` (the same checks under another CPU kernel path), ``noise`` (measure the
bands' noise across kernel paths), ``regen`` (store references), ``report`` (the HTML report
of a run, or two runs compared), ``bench`` (speed benchmarks and their gate against a stored
baseline), ``bench_ab`` (the same-job A/B speed gate) and ``lint``.

``nox -s claims`` picks the profile itself: ``full`` where CUDA is present, ``smoke`` elsewhere.
Anything after ``--`` goes to pytest, e.g. ``nox -s claims -- --claim 'agc.*' --profile smoke``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).parent))
from harness.environment import KERNEL_SETTINGS, PORTABILITY_SETTING  # noqa: E402 (stdlib only)

nox.options.sessions = ["tests", "claims"]
nox.options.reuse_venv = "yes"  # the torch install is the slow part; keep it between runs

# Which torch to install. Without an NVIDIA driver the CPU wheel is enough (and is what CI
# uses). With one (nvidia-smi on PATH) a CUDA build in the tested range: pip's default Linux
# wheels carry CUDA. Override with HARNESS_TORCH, e.g. "torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cu126" for a wheel that matches an older driver.
GPU_BOX = shutil.which("nvidia-smi") is not None
CPU_TORCH = "torch==2.13.0"
CUDA_TORCH = "torch>=2.13,<2.15"
TORCH = os.environ.get("HARNESS_TORCH") or (CUDA_TORCH if GPU_BOX else CPU_TORCH)
# On a GPU box a CUDA-less torch (a CPU wheel in a reused venv, a wheel the driver is too old
# for) must stop the run, not quietly fall back to the smoke profile on the CPU.
CUDA_CHECK = """
import sys, torch
if not torch.cuda.is_available():
    sys.exit(
        f"nvidia-smi is on PATH, so `nox -s claims` runs --profile full --device cuda, but this "
        f"venv's torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no GPU.\\n"
        "Fix: reinstall a CUDA build: `rm -rf .nox/claims && nox -s claims`; if the driver is "
        "older than the wheel's CUDA, pick a matching wheel: HARNESS_TORCH=\\"torch==2.13.0 "
        "--index-url https://download.pytorch.org/whl/cu126\\" nox -s claims.\\n"
        "To run on the CPU on purpose: nox -s claims -- --profile smoke --device cpu")
"""
# timm is only an independent cross-check of AGC; it is installed without torchvision, whose
# wheel would pull a several-GB CUDA torch. The test loads timm's agc.py file directly.
TIMM = "timm==1.0.31"


def install(session: nox.Session, extras: str = "test") -> None:
    session.install(*TORCH.split())
    session.install("-e", f".[{extras}]")
    session.install("--no-deps", TIMM)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and property tests of the harness (CPU, a few minutes)."""
    install(session)
    session.run("pytest", "tests", *session.posargs)


@nox.session
def claims(session: nox.Session) -> None:
    """Run the claim checks and print the verdict table. Profile: ``full`` on CUDA where
    nvidia-smi exists (a torch without CUDA there is an error), else ``smoke`` on the CPU."""
    install(session)
    args = claims_arguments(session.posargs, GPU_BOX)
    if "cuda" in args:
        session.run("python", "-c", CUDA_CHECK)
    session.run("pytest", "claims", "-rfEs", *args)


def claims_arguments(posargs: list[str], gpu_box: bool) -> list[str]:
    """On a GPU box, ``--profile full --device cuda`` unless the user chose either."""
    chosen = any(a.split("=")[0] in ("--profile", "--device") for a in posargs)
    return list(posargs) if chosen or not gpu_box else ["--profile", "full", "--device", "cuda",
                                                         *posargs]


@nox.session
def claims_portability(session: nox.Session) -> None:
    """The smoke claims under another CPU kernel path (AVX2 for ATen and oneDNN): a stand-in for
    a user's CPU. Every reference must hold here too. ``-- --trained`` runs the trained ones."""
    install(session)
    env = KERNEL_SETTINGS[PORTABILITY_SETTING]
    session.log(f"kernel path: {env}")
    session.run("pytest", "claims", "-rfEs", "--profile", "smoke", "--device", "cpu",
                *session.posargs, env=env)


@nox.session
def noise(session: nox.Session) -> None:
    """Measure every smoke metric under each CPU kernel path and store it as the bands' noise
    (``reference_results/smoke/cpu/noise/``); then regenerate the references, which take their
    bands from it. ``-- --claim 'agc.*'`` measures a subset."""
    install(session)
    empty = tempfile.mkdtemp(prefix="noise-references-")  # measure without comparing
    runs = []
    for name, env in KERNEL_SETTINGS.items():
        out = Path("results") / "noise" / name
        before = set(out.iterdir()) if out.exists() else set()
        session.log(f"kernel path {name}: {env or 'as the machine resolves it'}")
        session.run("pytest", "claims", "-q", "--profile", "smoke", "--device", "cpu",
                    "--references-dir", empty, "--results-dir", str(out), *session.posargs,
                    env=env)
        runs += [str(p) for p in set(out.iterdir()) - before if p.is_dir()]
    session.run("python", "-m", "harness.bands", "--profile", "smoke", *runs)


@nox.session
def regen(session: nox.Session) -> None:
    """Regenerate references deliberately: ``nox -s regen -- --profile smoke --device cpu``."""
    args = session.posargs
    if not any(a.startswith("--profile") for a in args) or not any(
        a.startswith("--device") for a in args
    ):
        session.error("name the profile and device: nox -s regen -- --profile smoke --device cpu")
    install(session)
    session.run("pytest", "claims", "--regen-references", *args)


@nox.session
def report(session: nox.Session) -> None:
    """The self-contained HTML report of a run: ``nox -s report -- results/<run>`` writes
    ``report.html`` there (``nox -s claims`` writes it too); ``-- A B`` compares two runs."""
    if not session.posargs:
        session.error("name a run: nox -s report -- results/<run>  (or two: A B)")
    install(session)
    session.run("python", "-m", "harness.report", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Speed benchmarks (pytest-benchmark). ``-- --compare`` fails on a median slowdown above
    ``--threshold`` (default 10%) against this machine's stored baseline; ``-- --save-baseline``
    stores one (``reference_results/benchmarks/<machine id>/``). Other arguments go to pytest."""
    install(session)
    session.run("python", "-m", "harness.benchgate", "bench", *session.posargs)


@nox.session
def bench_ab(session: nox.Session) -> None:
    """Same-job A/B speed gate for noisy machines: ``nox -s bench_ab -- origin/main
    [--merge-base] [--rounds 6] [--threshold 10%]`` times that ref (a temporary worktree) and
    this tree, interleaved in fresh processes; fails on a significant slowdown."""
    if not session.posargs or session.posargs[0].startswith("-"):
        session.error("name the git ref to compare against: nox -s bench_ab -- origin/main")
    install(session)
    session.run("python", "-m", "harness.benchgate", "ab", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")

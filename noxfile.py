"""Sessions: ``tests`` (unit and property tests), ``claims`` (the claim checks),
``claims_portability`` (the same checks under another CPU kernel path), ``noise`` (measure the
bands' noise across kernel paths), ``regen`` (store references), ``bench`` (speed benchmarks)
and ``lint``.

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

# Which torch to install. On a machine without an NVIDIA driver the CPU wheel is enough (and is
# what CI uses); with one, any CUDA build. Override with HARNESS_TORCH="torch==X.Y.Z".
TORCH = os.environ.get("HARNESS_TORCH") or (
    "torch" if shutil.which("nvidia-smi") else "torch==2.13.0"
)
# timm is only an independent cross-check of AGC; it is installed without torchvision, whose
# wheel would pull a several-GB CUDA torch. The test loads timm's agc.py file directly.
TIMM = "timm==1.0.31"


def install(session: nox.Session, extras: str = "test") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")
    session.install("--no-deps", TIMM)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and property tests of the harness (CPU, a few minutes)."""
    install(session)
    session.run("pytest", "tests", *session.posargs)


@nox.session
def claims(session: nox.Session) -> None:
    """Run the claim checks and print the verdict table (profile: auto)."""
    install(session)
    session.run("pytest", "claims", "-rfEs", *session.posargs)


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
def bench(session: nox.Session) -> None:
    """Speed benchmarks (pytest-benchmark); compare runs with --benchmark-compare."""
    install(session)
    session.run("pytest", "benchmarks", "--benchmark-only", "--benchmark-autosave", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")

"""Sessions: ``tests`` (unit and property tests), ``claims`` (the claim checks), ``regen``
(store references), ``bench`` (speed benchmarks) and ``lint``.

``nox -s claims`` picks the profile itself: ``full`` where CUDA is present, ``smoke`` elsewhere.
Anything after ``--`` goes to pytest, e.g. ``nox -s claims -- --claim 'agc.*' --profile smoke``.
"""

from __future__ import annotations

import os
import shutil

import nox

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

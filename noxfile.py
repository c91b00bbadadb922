"""Sessions: ``tests`` (unit and property tests), ``claims`` (the claim checks),
``claims_portability`` (the same checks under another CPU kernel path), ``noise`` (measure the
bands' noise across kernel paths), ``regen`` (store references), ``report`` (the HTML report
of a run, or two runs compared), ``bench`` (speed benchmarks and their gate against a stored
baseline), ``bench_ab`` (the same-job A/B speed gate) and ``lint``.

``cuda_tests`` runs only the CUDA tests (``-m cuda``; skipped, and said so, without a GPU).

``calibrate`` makes the first references of a new device class in one command: the claims
under every kernel setting (on a GPU: native TF32, no TF32, deterministic), their noise, then
the references from it (``python -m harness.calibrate``).

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
# A claims run that needs CUDA (``needs_cuda_check``) first runs this in the venv: a torch that
# sees no GPU stops the run with one line that says what is true of this machine (an NVIDIA
# driver or not), rather than running the full profile on the CPU. argv: whether nox chose the
# arguments (``chosen-by-nox``) or the user did, then the claims arguments.
CUDA_CHECK = r"""
import shutil, sys

import torch

if not torch.cuda.is_available():
    chosen_by_nox, args = sys.argv[1] == "chosen-by-nox", sys.argv[2:]
    seen = f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no GPU"
    wheel = ('HARNESS_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" '
             'nox -s claims')
    if shutil.which("nvidia-smi") is None:
        cuda = "--device=cuda" in args or ("--device", "cuda") in zip(args, args[1:])
        asked = "--device cuda" if cuda else " ".join(args)
        sys.exit(f"{asked}: this machine has no NVIDIA driver (nvidia-smi not found) and {seen}; "
                 "run without --device for the smoke profile on the CPU")
    if chosen_by_nox:
        why = f"nvidia-smi is on PATH, so `nox -s claims` runs {' '.join(args)}"
    else:
        why = (f"`nox -s claims -- {' '.join(args)}` needs CUDA on a machine with an NVIDIA "
               "driver (nvidia-smi is on PATH)")
    sys.exit(f"{why}, but this venv's {seen}. Fix: reinstall a CUDA build: "
             f"`rm -rf .nox/claims && nox -s claims`; if the driver is older than the wheel's "
             f"CUDA, pick a matching wheel: {wheel}. To run on the CPU on purpose: "
             "nox -s claims -- --profile smoke --device cpu")
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
    """Unit and property tests of the harness (CPU, a few minutes). Test paths after ``--``
    replace the whole folder: ``nox -s tests -- tests/test_cuda.py``; options add to it."""
    install(session)
    session.run("pytest", *pytest_targets(session.posargs))


# pytest options whose value is the next argument: that value is never a test path.
PYTEST_VALUE_OPTIONS = frozenset((
    "-k", "-m", "-p", "-c", "-o", "-W", "-n", "-r", "--deselect", "--ignore", "--ignore-glob",
    "--rootdir", "--basetemp", "--confcutdir", "--durations", "--maxfail", "--tb",
    "--junitxml", "--junit-xml", "--log-level", "--log-file", "--override-ini", "--pyargs",
    "--import-mode", "--capture", "--color", "--cov", "--hypothesis-profile",
    "--hypothesis-seed", "--benchmark-storage", "--benchmark-save", "--benchmark-compare",
))


def pytest_targets(posargs: list[str], default: str = "tests") -> list[str]:
    """pytest's arguments for ``posargs``: ``default`` (the tests folder) then ``posargs``,
    unless ``posargs`` name test paths themselves (a file, folder or node id:
    ``tests/test_cuda.py``, ``tests/test_x.py::test_y``), which then replace it."""
    expects_value = False
    for arg in posargs:
        if expects_value:
            expects_value = False
            continue
        if arg.startswith("-"):
            expects_value = arg in PYTEST_VALUE_OPTIONS
            continue
        path = arg.split("::")[0]
        if "::" in arg or "/" in path or path.endswith(".py") or os.path.exists(path):
            return list(posargs)
    return [default, *posargs]


@nox.session
def cuda_tests(session: nox.Session) -> None:
    """Only the CUDA tests (``pytest tests -m cuda``: tests/test_cuda.py, every CUDA path of
    the harness once), for a GPU box. Where this venv's torch sees no GPU each of them skips:
    the session says so (before and after pytest) and passes; ``-- --require-gpu`` (a GPU
    machine's CI) makes that an error before any test runs. Other arguments go to pytest."""
    install(session)
    require, args = cuda_test_arguments(session.posargs)
    seen = session.run("python", "-c", "import torch; print(torch.cuda.is_available(), "
                       "torch.__version__)", silent=True)
    no_gpu = None
    if isinstance(seen, str) and seen.split()[:1] == ["False"]:
        no_gpu = (f"torch {seen.split()[1]} sees no GPU"
                  + ("" if GPU_BOX else " (and nvidia-smi is not on PATH: no NVIDIA driver)")
                  + ": every CUDA test is skipped")
        if require:
            session.error(f"--require-gpu: {no_gpu}")
        session.warn(no_gpu)
    session.run("pytest", *pytest_targets(args), "-m", "cuda", "-rs")
    if no_gpu:
        session.warn(f"{no_gpu}; nothing on CUDA was checked (--require-gpu makes this an error)")


def cuda_test_arguments(posargs: list[str]) -> tuple[bool, list[str]]:
    """(whether ``--require-gpu`` was given, the arguments for pytest)."""
    return "--require-gpu" in posargs, [a for a in posargs if a != "--require-gpu"]


@nox.session
def claims(session: nox.Session) -> None:
    """Run the claim checks and print the verdict table. Profile: ``full`` on CUDA where
    nvidia-smi exists (a torch without CUDA there is an error), else ``smoke`` on the CPU.
    Every run that would use CUDA or, on a GPU box, the auto device first checks that torch
    sees a GPU (``needs_cuda_check``); only ``--device cpu`` or ``--dry-run`` skip it."""
    install(session)
    args = claims_arguments(session.posargs, GPU_BOX)
    if needs_cuda_check(args, GPU_BOX):
        # From a file, so that nox's log shows one short command, not the script.
        check = Path(tempfile.mkdtemp(prefix="harness-cuda-check-")) / "cuda_check.py"
        check.write_text(CUDA_CHECK)
        chosen = "chosen-by-nox" if len(args) > len(session.posargs) else "chosen-by-user"
        session.run("python", str(check), chosen, *args)
    session.run("pytest", "claims", "-rfEs", *args)


def claims_arguments(posargs: list[str], gpu_box: bool) -> list[str]:
    """On a GPU box, ``--profile full --device cuda`` unless the user chose either."""
    chosen = any(a.split("=")[0] in ("--profile", "--device") for a in posargs)
    return list(posargs) if chosen or not gpu_box else ["--profile", "full", "--device", "cuda",
                                                         *posargs]


def option_value(args: list[str], name: str) -> str | None:
    """The value of ``name`` in ``args`` (``--device cuda`` or ``--device=cuda``; the last one
    wins, as in argparse), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def needs_cuda_check(args: list[str], gpu_box: bool) -> bool:
    """Whether a claims run with ``args`` must first prove that torch sees a GPU
    (``CUDA_CHECK``): ``--device cuda`` anywhere; on a GPU box also the auto device (pytest's
    default), whatever the profile, since it would quietly fall back to the CPU (with
    ``--profile full``: the full profile on a CPU). Not a dry run (it runs on the CPU) nor
    ``--device cpu``: the CPU asked for explicitly."""
    if "--dry-run" in args:
        return False
    device = option_value(args, "--device") or "auto"
    return device == "cuda" or (gpu_box and device == "auto")


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
def calibrate(session: nox.Session) -> None:
    """References for this machine's device class in one command (``harness/calibrate.py``):
    the claims run under every kernel setting of the device, their noise is stored and the
    references are regenerated with bands from it. It prints the estimated cost and asks first
    (``-- --yes`` does not); a stopped run resumes where it stopped. On a GPU box ``--profile
    full --device cuda`` unless told otherwise; elsewhere name them: ``nox -s calibrate --
    --profile smoke --device cpu``. ``-- --has-references``: only whether references exist
    for the device class (exit status), for CI."""
    args = calibrate_arguments(session.posargs, GPU_BOX)
    if args is None:
        session.error("name the profile and device: nox -s calibrate -- --profile smoke --device cpu "
                      "(on a GPU box the default is --profile full --device cuda)")
    install(session)
    session.run("python", "-m", "harness.calibrate", *args)


def calibrate_arguments(posargs: list[str], gpu_box: bool) -> list[str] | None:
    """On a GPU box ``--profile full`` and ``--device cuda`` where not given; elsewhere both must
    be given (None: they are not)."""
    given = {a.split("=")[0] for a in posargs}
    defaults = {"--profile": "full", "--device": "cuda"}
    if not gpu_box:
        return list(posargs) if set(defaults) <= given else None
    return [*(x for k, v in defaults.items() if k not in given for x in (k, v)), *posargs]


@nox.session
def report(session: nox.Session) -> None:
    """The self-contained HTML report of a run: ``nox -s report -- results/<run>`` writes
    ``report.html`` there (``nox -s claims`` writes it too); ``-- A B`` compares two runs."""
    if not session.posargs:
        session.error("name a run: nox -s report -- results/<run>  (or two: A B)")
    install(session)
    session.run("python", "-m", "harness.html_report", *session.posargs)


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

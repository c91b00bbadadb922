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

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nox

sys.path.insert(0, str(Path(__file__).parent))
from harness.environment import KERNEL_SETTINGS, PORTABILITY_SETTING  # noqa: E402 (stdlib only)

nox.options.sessions = ["tests", "claims"]

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


# One environment for every session but lint: torch is the slow part of an install (about a
# minute, and several GB on a GPU box), and each nox session would otherwise install it into a
# virtualenv of its own. It is refreshed when what it was built from changes (the stamp: the
# torch and timm specs and pyproject.toml); ``nox --no-venv`` runs on nox's own interpreter.
SHARED_ENV = Path(__file__).resolve().parent / ".nox" / "harness"
STAMP = "harness-install.json"


def install_stamp() -> dict[str, str]:
    """What the shared environment was installed from; another value reinstalls it."""
    pyproject = (Path(__file__).resolve().parent / "pyproject.toml").read_bytes()
    return {"torch": TORCH, "timm": TIMM, "extras": "test",
            "pyproject": hashlib.sha256(pyproject).hexdigest()}


def shared_python(session: nox.Session, env_dir: Path = SHARED_ENV) -> str:
    """The interpreter of the shared environment, created or refreshed first where needed."""
    config = session._runner.global_config  # nox has no public view of --no-venv
    if config.force_venv_backend == "none" or getattr(config, "no_venv", False):
        return sys.executable
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = str(bin_dir / ("python.exe" if os.name == "nt" else "python"))
    stamp_path, want = env_dir / STAMP, install_stamp()
    have = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
    if have == want or (config.no_install and have is not None):
        session.log(f"shared environment {env_dir} is up to date")
        return python
    if not Path(python).exists():
        session.run(sys.executable, "-m", "venv", str(env_dir), external=True)
    stamp_path.unlink(missing_ok=True)  # an interrupted install is redone, not trusted
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    session.run(*pip, *TORCH.split(), external=True)
    session.run(*pip, "-e", f"{Path(__file__).resolve().parent}[test]", external=True)
    session.run(*pip, "--no-deps", TIMM, external=True)
    env_dir.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps(want, indent=1))
    return python


def install(session: nox.Session) -> Callable[..., Any]:
    """The shared environment, ready; returns ``run(program, *args)``, which runs ``python``
    or a module (``pytest``, ``harness.bands``) with that environment's interpreter."""
    python = shared_python(session)

    def run(program: str, *args: str, **kwargs: Any) -> Any:
        cmd = [python, *args] if program == "python" else [python, "-m", program, *args]
        return session.run(*cmd, external=True, **kwargs)

    return run


# The unit tests run on every core, up to 8 (pytest-xdist; one torch thread per worker,
# tests/conftest.py); worksteal keeps both cores busy when a few long tests come last.
PARALLEL = ("-n", str(min(os.cpu_count() or 1, 8)), "--dist", "worksteal")


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Unit and property tests of the harness (CPU, on every core: about 4.5 minutes on 2).
    Test paths after ``--`` replace the whole folder: ``nox -s tests -- tests/test_cuda.py``;
    options add to it (``-- -n 0``: one process)."""
    run = install(session)
    run("pytest", *PARALLEL, *pytest_targets(session.posargs))


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


@nox.session(venv_backend="none")
def cuda_tests(session: nox.Session) -> None:
    """Only the CUDA tests (``pytest tests -m cuda``: tests/test_cuda.py, every CUDA path of
    the harness once), for a GPU box. Where this venv's torch sees no GPU each of them skips:
    the session says so (before and after pytest) and passes; ``-- --require-gpu`` (a GPU
    machine's CI) makes that an error before any test runs. Other arguments go to pytest."""
    run = install(session)
    require, args = cuda_test_arguments(session.posargs)
    seen = run("python", "-c", "import torch; print(torch.cuda.is_available(), "
                       "torch.__version__)", silent=True)
    no_gpu = None
    if isinstance(seen, str) and seen.split()[:1] == ["False"]:
        no_gpu = (f"torch {seen.split()[1]} sees no GPU"
                  + ("" if GPU_BOX else " (and nvidia-smi is not on PATH: no NVIDIA driver)")
                  + ": every CUDA test is skipped")
        if require:
            session.error(f"--require-gpu: {no_gpu}")
        session.warn(no_gpu)
    run("pytest", *pytest_targets(args), "-m", "cuda", "-rs")
    if no_gpu:
        session.warn(f"{no_gpu}; nothing on CUDA was checked (--require-gpu makes this an error)")


def cuda_test_arguments(posargs: list[str]) -> tuple[bool, list[str]]:
    """(whether ``--require-gpu`` was given, the arguments for pytest)."""
    return "--require-gpu" in posargs, [a for a in posargs if a != "--require-gpu"]


@nox.session(venv_backend="none")
def claims(session: nox.Session) -> None:
    """Run the claim checks and print the verdict table. Profile: ``full`` on CUDA where
    nvidia-smi exists (a torch without CUDA there is an error), else ``smoke`` on the CPU.
    Every run that would use CUDA or, on a GPU box, the auto device first checks that torch
    sees a GPU (``needs_cuda_check``); only ``--device cpu`` or ``--dry-run`` skip it."""
    run = install(session)
    args = claims_arguments(session.posargs, GPU_BOX)
    if needs_cuda_check(args, GPU_BOX):
        # From a file, so that nox's log shows one short command, not the script.
        check = Path(tempfile.mkdtemp(prefix="harness-cuda-check-")) / "cuda_check.py"
        check.write_text(CUDA_CHECK)
        chosen = "chosen-by-nox" if len(args) > len(session.posargs) else "chosen-by-user"
        run("python", str(check), chosen, *args)
    run("pytest", "claims", "-rfEs", *args)


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


@nox.session(venv_backend="none")
def claims_portability(session: nox.Session) -> None:
    """The smoke claims under another CPU kernel path (AVX2 for ATen and oneDNN): a stand-in for
    a user's CPU. Every reference must hold here too. ``-- --trained`` runs the trained ones.
    Training records are keyed by the kernels that run (``environment.effective_kernels``): on
    a CPU whose best is AVX2 this setting runs the native kernels, so it reuses the native
    run's cells (the same bits) and judges them again; elsewhere it trains its own."""
    run = install(session)
    env = KERNEL_SETTINGS[PORTABILITY_SETTING]
    session.log(f"kernel path: {env}")
    run("python", "-c", "from harness.environment import effective_kernels as k; "
        "print('kernels that run (the training cache key):', k())", env=env)
    run("pytest", "claims", "-rfEs", "--profile", "smoke", "--device", "cpu",
                *session.posargs, env=env)


@nox.session(venv_backend="none")
def noise(session: nox.Session) -> None:
    """Measure every smoke metric under each CPU kernel path and store it as the bands' noise
    (``reference_results/smoke/cpu/noise/``); then regenerate the references, which take their
    bands from it. ``-- --claim 'agc.*'`` measures a subset."""
    run = install(session)
    empty = tempfile.mkdtemp(prefix="noise-references-")  # measure without comparing
    runs = []
    for name, env in KERNEL_SETTINGS.items():
        out = Path("results") / "noise" / name
        before = set(out.iterdir()) if out.exists() else set()
        session.log(f"kernel path {name}: {env or 'as the machine resolves it'}")
        run("pytest", "claims", "-q", "--profile", "smoke", "--device", "cpu",
                    "--references-dir", empty, "--results-dir", str(out), *session.posargs,
                    env=env)
        runs += [str(p) for p in set(out.iterdir()) - before if p.is_dir()]
    run("python", "-m", "harness.bands", "--profile", "smoke", *runs)


@nox.session(venv_backend="none")
def regen(session: nox.Session) -> None:
    """Regenerate references deliberately: ``nox -s regen -- --profile smoke --device cpu``."""
    args = session.posargs
    if not any(a.startswith("--profile") for a in args) or not any(
        a.startswith("--device") for a in args
    ):
        session.error("name the profile and device: nox -s regen -- --profile smoke --device cpu")
    run = install(session)
    run("pytest", "claims", "--regen-references", *args)


@nox.session(venv_backend="none")
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
    run = install(session)
    run("python", "-m", "harness.calibrate", *args)


def calibrate_arguments(posargs: list[str], gpu_box: bool) -> list[str] | None:
    """On a GPU box ``--profile full`` and ``--device cuda`` where not given; elsewhere both must
    be given (None: they are not)."""
    given = {a.split("=")[0] for a in posargs}
    defaults = {"--profile": "full", "--device": "cuda"}
    if not gpu_box:
        return list(posargs) if set(defaults) <= given else None
    return [*(x for k, v in defaults.items() if k not in given for x in (k, v)), *posargs]


@nox.session(venv_backend="none")
def report(session: nox.Session) -> None:
    """The self-contained HTML report of a run: ``nox -s report -- results/<run>`` writes
    ``report.html`` there (``nox -s claims`` writes it too); ``-- A B`` compares two runs."""
    if not session.posargs:
        session.error("name a run: nox -s report -- results/<run>  (or two: A B)")
    run = install(session)
    run("python", "-m", "harness.html_report", *session.posargs)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Speed benchmarks (pytest-benchmark). ``-- --compare`` fails on a median slowdown above
    ``--threshold`` (default 10%) against this machine's stored baseline; ``-- --save-baseline``
    stores one (``reference_results/benchmarks/<machine id>/``). Other arguments go to pytest."""
    run = install(session)
    run("python", "-m", "harness.benchgate", "bench", *session.posargs)


@nox.session(venv_backend="none")
def bench_ab(session: nox.Session) -> None:
    """Same-job A/B speed gate for noisy machines: ``nox -s bench_ab -- origin/main
    [--merge-base] [--rounds 6] [--threshold 10%]`` times that ref (a temporary worktree) and
    this tree, interleaved in fresh processes; fails on a significant slowdown."""
    if not session.posargs or session.posargs[0].startswith("-"):
        session.error("name the git ref to compare against: nox -s bench_ab -- origin/main")
    run = install(session)
    run("python", "-m", "harness.benchgate", "ab", *session.posargs)


@nox.session(venv_backend="venv", reuse_venv=True)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")

"""Can ``torch.compile`` work here? What it needs from the machine, checked before it is asked.

``torch.compile`` (inductor) writes kernels and builds them at run time. On CUDA they are Triton
kernels, and Triton builds its launcher with a C compiler (``$CC``, else ``gcc``, else ``clang``
on PATH) against Python's headers (``Python.h`` in ``sysconfig``'s include directory); on the
CPU inductor builds C++ (``$CXX``, else ``g++``, ``clang++`` or ``c++``) against the same
headers. Without them the first compiled call fails deep inside inductor, minutes into a run;
``require_compiler`` fails first, with what is missing and how to get it.

Used where compilation is asked for: ``harness.timing`` (``TimingSetup(compile=True)``, e.g.
``agc.bn_costs`` on CUDA). ``TrainConfig.compile`` (``harness.train``) should call it too.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig

C_COMPILERS = ("gcc", "clang")  # Triton's search order after $CC
CXX_COMPILERS = ("g++", "clang++", "c++")


def _compiler(env_var: str, names: tuple[str, ...]) -> str | None:
    chosen = os.environ.get(env_var)
    if chosen:
        return shutil.which(chosen)
    return next((path for name in names if (path := shutil.which(name))), None)


def python_header() -> str:
    """Where ``Python.h`` must be: this interpreter's include directory."""
    return os.path.join(sysconfig.get_paths()["include"], "Python.h")


def compile_problem(device: str) -> str | None:
    """What ``torch.compile`` on ``device`` lacks on this machine (one line), or None."""
    missing = []
    if device == "cuda":
        env_var, names, kind = "CC", C_COMPILERS, "C compiler (Triton builds its CUDA launcher)"
    else:
        env_var, names, kind = "CXX", CXX_COMPILERS, "C++ compiler (inductor builds CPU kernels)"
    if _compiler(env_var, names) is None:
        where = (f"${env_var}={os.environ[env_var]!r} is not an executable on PATH"
                 if os.environ.get(env_var) else
                 f"none of {', '.join(names)} is on PATH and ${env_var} is unset")
        missing.append(f"no {kind}: {where} (install one, e.g. apt-get install "
                       f"{'gcc' if device == 'cuda' else 'g++'}, or set ${env_var})")
    header = python_header()
    if not os.path.exists(header):
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        missing.append(f"no Python headers: {header} does not exist (install them, e.g. "
                       f"apt-get install python{version}-dev)")
    if not missing:
        return None
    return (f"torch.compile on {device} cannot work on this machine: " + "; ".join(missing)
            + ". Install what is missing, or turn compilation off for this run")


class CompileUnavailable(RuntimeError):
    """``torch.compile`` was asked for on a machine that lacks what it needs."""


def require_compiler(device: str) -> None:
    """Raise ``CompileUnavailable`` with ``compile_problem``'s message when there is one."""
    problem = compile_problem(device)
    if problem is not None:
        raise CompileUnavailable(problem)

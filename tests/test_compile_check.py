"""harness.compile_check: what torch.compile needs from the machine (a C compiler for Triton
on CUDA, a C++ compiler on the CPU, Python's headers for both), said in one line."""

from __future__ import annotations

import os
import sys
import sysconfig

import pytest

from harness import compile_check
from harness.compile_check import CompileUnavailable, compile_problem, require_compiler


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A machine with an empty PATH, no $CC/$CXX and Python headers in ``tmp_path/include``;
    ``add(name)`` puts an executable on PATH, ``headers(False)`` removes Python.h."""
    bin_dir, include = tmp_path / "bin", tmp_path / "include"
    bin_dir.mkdir()
    include.mkdir()
    (include / "Python.h").write_text("/* fake */\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    real = sysconfig.get_paths

    monkeypatch.setattr(compile_check.sysconfig, "get_paths",
                        lambda *a, **k: {**real(*a, **k), "include": str(include)})

    class Machine:
        @staticmethod
        def add(name: str) -> None:
            tool = bin_dir / name
            tool.write_text("#!/bin/sh\n")
            tool.chmod(0o755)

        @staticmethod
        def headers(present: bool) -> None:
            if not present:
                (include / "Python.h").unlink()

    return Machine


def test_nothing_missing_is_none(machine):
    machine.add("gcc")
    machine.add("g++")
    assert compile_problem("cuda") is None and compile_problem("cpu") is None
    require_compiler("cuda")  # no error


def test_cuda_needs_a_c_compiler_as_triton_looks_for_it(machine):
    problem = compile_problem("cuda")
    assert problem is not None and "\n" not in problem
    assert "no C compiler" in problem and "none of gcc, clang is on PATH and $CC is unset" in problem
    assert "Python headers" not in problem  # only what is missing
    machine.add("cc")  # Triton does not look for plain cc
    assert "no C compiler" in compile_problem("cuda")
    machine.add("clang")
    assert compile_problem("cuda") is None


def test_cc_names_the_compiler_when_set(machine, monkeypatch):
    monkeypatch.setenv("CC", "my-cc")
    assert "$CC='my-cc' is not an executable on PATH" in compile_problem("cuda")
    machine.add("my-cc")
    assert compile_problem("cuda") is None


def test_missing_python_headers_are_named_with_their_path(machine):
    machine.add("gcc")
    machine.headers(False)
    problem = compile_problem("cuda")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert problem.startswith("torch.compile on cuda cannot work on this machine: no Python "
                              "headers: ")
    assert os.path.join("include", "Python.h") in problem and f"python{version}-dev" in problem
    with pytest.raises(CompileUnavailable, match="no Python headers"):
        require_compiler("cuda")


def test_both_missing_are_both_said(machine):
    machine.headers(False)
    problem = compile_problem("cpu")
    assert "no C++ compiler" in problem and "no Python headers" in problem
    assert "g++, clang++, c++" in problem

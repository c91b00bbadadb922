"""The on-disk cache of training records: one JSON entry per run, under a hash of everything
that determines it.

A record is reused only when everything that determines it is unchanged: the key the caller
gives (model config, recipe, data, seed, device class), the torch version, the CPU kernel path
(another path rounds differently: a new draw, never the same record), and the code: a hash of
the source of the loop (``harness.train``), of the runner that turns a job into a ``train``
call (``harness.runs.jobs``), of the harness's models and data, and of the modules defining
the model and the hooks, with every harness module they import (``code_fingerprint``).
Editing the loss invalidates the cache; editing the README, this module or the executors does
not.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from harness import atomic
from harness.jsonable import to_jsonable
from harness.train import TrainRecord

CACHE_VERSION = 2  # bump when the loop changes what a record means


_HARNESS_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    root = os.environ.get("HARNESS_CACHE")
    return Path(root) if root else _HARNESS_ROOT.parent / ".cache" / "train"


def _module_file(name: str) -> Path | None:
    """The source file of a ``harness`` module or package, without importing it."""
    if name != "harness" and not name.startswith("harness."):
        return None
    rel = Path(*name.split(".")[1:]) if name != "harness" else Path()
    for candidate in (_HARNESS_ROOT / rel.with_suffix(".py") if rel.parts else None,
                      _HARNESS_ROOT / rel / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _imports_of(path: Path) -> set[str]:
    """The harness modules a file imports, lazily (inside functions) or not."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in found if _module_file(n) is not None}


# Where every fingerprint starts: the loop, the runner that calls it for a job (the arguments it
# passes, the ``SaveWeights`` hook), and the harness's models and data (a job carries tensors,
# and its key only names the data spec).
_RUN_CODE_ROOTS = frozenset({_HARNESS_ROOT / "train.py", _HARNESS_ROOT / "runs" / "jobs.py",
                             _HARNESS_ROOT / "models" / "__init__.py",
                             _HARNESS_ROOT / "data" / "__init__.py"})

# Modules that decide how and where runs are scheduled, how records are stored and how files are
# written, never what a run computes (tested: every executor gives the same record). They stay
# out of the key, so editing them keeps the cache warm; a change to what a stored record means
# bumps ``CACHE_VERSION`` instead.
_NOT_RUN_CODE = frozenset({_HARNESS_ROOT / "runs" / "executors.py",
                           _HARNESS_ROOT / "runs" / "cache.py",
                           _HARNESS_ROOT / "runs" / "__init__.py", _HARNESS_ROOT / "atomic.py"})


def _closure(files: set[Path]) -> set[Path]:
    """``files`` and every harness module they import, transitively (but ``_NOT_RUN_CODE``)."""
    seen: set[Path] = set()
    todo = list(files)
    while todo:
        f = todo.pop()
        if f in seen or f in _NOT_RUN_CODE:
            continue
        seen.add(f)
        if f.suffix == ".py":
            todo += [m for n in _imports_of(f) if (m := _module_file(n)) is not None]
    return seen


def _defining_file(obj: Any) -> Path | None:
    """The source file that defines a callable (through partials and bound methods)."""
    import functools
    import inspect

    while isinstance(obj, functools.partial):
        obj = obj.func
    target = obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)
    try:
        path = inspect.getsourcefile(target)
    except TypeError:  # builtins
        return None
    if path is None or "site-packages" in path or not Path(path).is_file():
        return None  # third-party code is covered by its version (torch's is in the key)
    return Path(path).resolve()


def code_fingerprint(*callables: Any) -> str:
    """A hash of the source that determines a training run: the loop and the job runner with
    their imports, the harness's models and data (``_RUN_CODE_ROOTS``), and the modules
    defining ``callables`` (the model factory, the hooks) with their imports."""
    files = set(_RUN_CODE_ROOTS)
    files |= {f for c in callables if (f := _defining_file(c)) is not None}
    roots = frozenset(files)
    memo = _FINGERPRINTS.get(roots)
    if memo is not None and all(_stamp(f) == st for f, st in memo[0]):
        return memo[1]  # no file of the closure changed since it was hashed
    closure = sorted(_closure(files))
    h = hashlib.sha256()
    for f in closure:
        h.update(str(f.relative_to(_HARNESS_ROOT.parent) if f.is_relative_to(_HARNESS_ROOT.parent)
                     else f.name).encode())
        h.update(f.read_bytes())
    digest = h.hexdigest()[:16]
    _FINGERPRINTS[roots] = ([(f, _stamp(f)) for f in closure], digest)
    return digest


_FINGERPRINTS: dict[frozenset[Path], tuple[list[tuple[Path, tuple[int, int]]], str]] = {}


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def cache_key(key: dict[str, Any], code: str | None = None, device: str | None = None) -> str:
    """The hash under which a run's record is stored: the caller's key, the torch version, the
    CPU kernels that run (``effective_kernels``: two settings that run the same kernels share
    records) and the code fingerprint (``code_fingerprint()`` of the loop alone if None).
    A CUDA run (``device``, else a ``device``/``device_class`` in the key naming CUDA) adds the
    CUDA kernel setting in force, so each setting trains its own record; CPU keys are as ever."""
    from harness.environment import cuda_kernel_config, effective_kernels

    doc = {"v": CACHE_VERSION, "torch": torch.__version__, "kernels": effective_kernels(),
           "code": code if code is not None else code_fingerprint(), **to_jsonable(key)}
    if _on_cuda(key, device):
        doc["cuda_kernels"] = cuda_kernel_config()
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def _on_cuda(key: dict[str, Any], device: str | None) -> bool:
    if device is not None:
        return device == "cuda"
    return any(isinstance(key.get(k), str) and key[k].startswith("cuda")
               for k in ("device", "device_class"))


def cached(key: dict[str, Any], run: Callable[[], TrainRecord], *, enabled: bool = True,
           directory: Path | None = None, code: str | None = None,
           hashed: str | None = None) -> TrainRecord:
    """``run()``'s record, reused from disk when the same key finished before. ``hashed``: the
    key's ``cache_key`` when the caller has it already (``jobs.run_jobs``).

    One process trains a key at a time: a lock file per key (``filelock``) makes a concurrent
    run with the same cache wait, then read the first one's record instead of training it
    again. The entry is written atomically, so a run killed midway leaves none or a whole one."""
    from filelock import FileLock

    path = cache_path(hashed or cache_key(key, code), directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        hit = load_cached(path) if enabled else None
        if hit is not None:
            return hit
        rec = run()
        atomic.write_text(path, json.dumps({"key": to_jsonable(key),
                                            "record": to_jsonable(asdict(rec))}))
    return rec


def cache_path(hashed_key: str, directory: Path | None = None) -> Path:
    """Where the record of ``hashed_key`` (a ``cache_key``) is stored."""
    return (directory or cache_dir()) / f"{hashed_key}.json"


class CorruptCacheEntry(UserWarning):
    """A cache entry that could not be read: it is moved aside and the run recomputed."""


def load_cached(path: Path) -> TrainRecord | None:
    """The stored record; None when absent. An unreadable entry is reported, moved aside
    (``*.corrupt``) and None returned, so the run is recomputed, never silently reused."""
    import warnings

    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
        rec = TrainRecord(**{**doc["record"], "from_cache": True})
        rec.loss_curve = [tuple(p) for p in rec.loss_curve]
        if not isinstance(rec.test_acc, (int, float, type(None))) or not isinstance(rec.steps, int):
            raise TypeError("record fields of the wrong type")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        aside = path.with_suffix(".corrupt")
        os.replace(path, aside)
        warnings.warn(f"corrupt training-cache entry {path} ({type(e).__name__}: {e}); moved "
                      f"to {aside.name} and recomputing", CorruptCacheEntry, stacklevel=2)
        return None
    rec.test_acc = math.nan if rec.test_acc is None else rec.test_acc  # NaN is stored as null
    rec.test_loss = math.nan if rec.test_loss is None else rec.test_loss
    return rec

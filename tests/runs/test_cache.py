"""The training cache: a record is reused only when config, data, kernel path and code match.

The code tests run in a copy of the tree, in fresh processes, as a user would: a one-line change
to the loss must give another key and retrain; a README edit must not.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from harness.data import synthetic_dataset
from harness.runs import cache as rc
from harness.runs import jobs as rj
from harness.train import TrainConfig, TrainRecord, train
from tests.killable import default_sigint, wait_for_an_entry
from tests.test_train import small_cnn

REPO = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent("""
    import json, sys, torch, torch.nn as nn
    from harness.runs.cache import cache_key
    from harness.runs.jobs import TrainJob, run_jobs
    from harness.train import TrainConfig

    def model():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 2, 2, generator=g), torch.randint(0, 3, (32,), generator=g)
    cfg = TrainConfig(epochs=1, batch_size=16, warmup_epochs=0)
    job = TrainJob({"probe": 1}, model, (x, y), (x, y), cfg)
    (rec,) = run_jobs([job], progress=False)
    print(json.dumps({"key": cache_key(job.key, job.code()), "from_cache": rec.from_cache}))
""")


def _copy_tree(dst: Path) -> Path:
    shutil.copytree(REPO / "harness", dst / "harness",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "README.md", dst / "README.md")
    return dst


def _probe(tree: Path, cache: Path, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tree, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(tree), "HARNESS_CACHE": str(cache), **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_loss_change_invalidates_the_cache_and_a_readme_change_does_not(tmp_path):
    tree, cache = _copy_tree(tmp_path / "tree"), tmp_path / "cache"
    cold = _probe(tree, cache)
    warm = _probe(tree, cache)
    assert not cold["from_cache"] and warm["from_cache"] and warm["key"] == cold["key"]

    (tree / "README.md").write_text((tree / "README.md").read_text() + "\nAn edit.\n")
    assert _probe(tree, cache) == warm  # unrelated file: same key, warm cache used

    loop = tree / "harness" / "train.py"
    src = loop.read_text()
    assert src.count("label_smoothing=cfg.label_smoothing") == 1
    loop.write_text(src.replace("label_smoothing=cfg.label_smoothing", "label_smoothing=0.0"))
    changed = _probe(tree, cache)
    assert changed["key"] != cold["key"] and not changed["from_cache"]


@pytest.mark.slow
def test_another_kernel_path_is_another_key(tmp_path):
    tree, cache = _copy_tree(tmp_path / "tree"), tmp_path / "cache"
    native = _probe(tree, cache)
    scalar = _probe(tree, cache, ATEN_CPU_CAPABILITY="default")
    assert scalar["key"] != native["key"] and not scalar["from_cache"]


def test_the_avx2_setting_shares_the_native_records_only_where_it_runs_the_native_kernels(
        tmp_path):
    """The portability run's setting (ATen and oneDNN capped at AVX2) on a CPU whose best is
    AVX2 runs the native kernels: it reuses the native record. Where the CPU has more
    (AVX-512, AVX-VNNI) the kernels differ and it trains its own."""
    from harness.environment import cpu_has_isa_above_avx2

    tree, cache = _copy_tree(tmp_path / "tree"), tmp_path / "cache"
    native = _probe(tree, cache)
    avx2 = _probe(tree, cache, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    same_kernels = (torch.backends.cpu.get_cpu_capability() == "AVX2"
                    and not cpu_has_isa_above_avx2())
    assert (avx2["key"] == native["key"]) == same_kernels
    assert avx2["from_cache"] == same_kernels


def test_fingerprint_covers_the_loop_models_data_and_the_hook_modules():
    files = rc._closure(set(rc._RUN_CODE_ROOTS))
    names = {f.relative_to(rc._HARNESS_ROOT).as_posix() for f in files}
    assert {"train.py", "runs/jobs.py", "batches.py", "data/synthetic.py", "data/cifar.py",
            "models/__init__.py", "models/nf_resnet.py"} <= names
    # How results are reported or judged does not determine a run, so it is not hashed; nor do
    # where runs are scheduled and how records and files are stored.
    assert not names & {"claim.py", "results.py", "html_report.py", "references.py", "bands.py", "stats.py",
                        "runs/__init__.py", "runs/cache.py", "runs/executors.py", "atomic.py"}
    from harness.agc.study import AGCHook

    hook_files = rc._closure({rc._defining_file(AGCHook(0.01))})
    assert {f.name for f in hook_files} >= {"study.py", "rule.py"}
    hook_names = {f.relative_to(rc._HARNESS_ROOT).as_posix() for f in hook_files}
    assert "runs/jobs.py" in hook_names  # a study reaches the runner: it is hashed anyway
    assert not hook_names & {"runs/cache.py", "runs/executors.py"}  # but not the cache, executors
    assert rc.code_fingerprint(AGCHook(0.01)) != rc.code_fingerprint()


def _record() -> TrainRecord:
    return TrainRecord(test_acc=0.5, test_loss=1.0, diverged=False, steps=2,
                          loss_curve=[(2, 1.0)], epoch_seconds=[0.1], images_per_second=1.0,
                          peak_memory_mb=None, train_seconds=0.1)


@pytest.mark.parametrize("content", ["{truncated", json.dumps({"key": {}, "record": {"x": 1}}),
                                     json.dumps([1, 2]), ""])
def test_a_corrupt_entry_is_reported_moved_aside_and_recomputed(tmp_path, content):
    key = {"corrupt": 1}
    path = rc.cache_path(rc.cache_key(key), tmp_path)
    path.write_text(content)
    runs = []
    with pytest.warns(rc.CorruptCacheEntry, match="corrupt training-cache entry"):
        rec = rc.cached(key, lambda: runs.append(1) or _record(), directory=tmp_path)
    assert runs == [1] and not rec.from_cache
    assert path.with_suffix(".corrupt").read_text() == content  # kept for a look, not reused
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = rc.cached(key, lambda: runs.append(1) or _record(), directory=tmp_path)
    assert again.from_cache and runs == [1]


# ----------------------------------------------------- cached(): reuse, recompute, round trip


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(num_classes=10, resolution=16, train_size=512, test_size=256, seed=3)


def test_cache_reuses_finished_cells(tmp_path, data):
    calls = []

    def run():
        calls.append(1)
        return train(small_cnn, data.train, data.test, TrainConfig(max_steps=2),
                     progress=False)

    key = {"model": "small_cnn", "train": TrainConfig(max_steps=2), "seed": 0}
    first = rc.cached(key, run, directory=tmp_path)
    again = rc.cached(key, run, directory=tmp_path)
    assert len(calls) == 1 and again.from_cache and not first.from_cache
    assert again.test_acc == first.test_acc and again.loss_curve == first.loss_curve
    rc.cached(key, run, directory=tmp_path, enabled=False)  # --no-cache recomputes
    assert len(calls) == 2
    rc.cached({**key, "seed": 1}, run, directory=tmp_path)  # another key is another cell
    assert len(calls) == 3


def test_corrupt_cache_entry_is_recomputed(tmp_path, data):
    key = {"k": 1}

    def run():
        return train(small_cnn, data.train, data.test, TrainConfig(max_steps=1),
                     progress=False)

    rc.cached(key, run, directory=tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_text("{broken")
    rec = rc.cached(key, run, directory=tmp_path)
    assert not rec.from_cache and rc.cached(key, run, directory=tmp_path).from_cache


def test_diverged_record_round_trips_through_the_cache(tmp_path):
    rec = TrainRecord(math.nan, math.nan, True, 3, [(2, math.inf)], [0.1], 1.0, None, 0.1)
    got = rc.cached({"d": 1}, lambda: rec, directory=tmp_path)
    got = rc.cached({"d": 1}, lambda: rec, directory=tmp_path)
    assert got.from_cache and got.diverged and math.isnan(got.test_acc)


def test_code_given_to_the_key_changes_it():
    assert rc.cache_key({"a": 1}, code="x") != rc.cache_key({"a": 1}, code="y")


def test_records_of_a_job_depend_on_its_model_code(tmp_path):
    def model_a():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

    x, y = torch.randn(16, 3, 2, 2), torch.randint(0, 3, (16,))
    cfg = TrainConfig(epochs=1, batch_size=8, warmup_epochs=0)
    job = rj.TrainJob({"m": 1}, model_a, (x, y), (x, y), cfg)
    assert rc._defining_file(model_a) == Path(__file__).resolve()
    assert job.code() == rc.code_fingerprint(model_a)


@pytest.mark.slow
def test_a_data_generator_change_invalidates_the_cache(tmp_path):
    tree, cache = _copy_tree(tmp_path / "tree"), tmp_path / "cache"
    cold = _probe(tree, cache)
    gen = tree / "harness" / "data" / "synthetic.py"
    gen.write_text(gen.read_text() + "\n# an edit to the generator\n")
    changed = _probe(tree, cache)
    assert changed["key"] != cold["key"] and not changed["from_cache"]


def _linear():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


# ------------------------------------------------ surviving interruption and concurrent runs
# Real processes, as on a cluster: a run killed midway (SIGINT, SIGKILL to its whole process
# group, as Slurm or the OOM killer would) leaves only whole cache entries, and the rerun reuses
# them; two runs sharing a cache train a key once.

RUN_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import torch, torch.nn as nn
    from harness.runs.cache import cache_key
    from harness.runs.executors import ExecutorSpec
    from harness.runs.jobs import TrainJob, run_jobs
    from harness.train import TrainConfig

    class SlowStep:  # a cell takes ~0.8 s, so a kill lands between cells
        def __call__(self, state):
            time.sleep(0.1)

    def model():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

    def main(executor, out):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, 3, 2, 2, generator=g), torch.randint(0, 3, (64,), generator=g)
        jobs = [TrainJob({"interrupt": seed}, model, (x, y), (x, y),
                         TrainConfig(epochs=1, batch_size=8, warmup_epochs=0, seed=seed),
                         before_step=[SlowStep()], desc=f"seed {seed}")
                for seed in range(8)]
        spec = ExecutorSpec(executor, workers=2 if executor == "processes" else None)
        records = run_jobs(jobs, executor=spec, progress=False)
        keys = [cache_key(j.key, j.code()) for j in jobs]
        with open(out, "w") as f:
            json.dump([{"key": k, "acc": r.test_acc, "loss": r.test_loss,
                        "curve": r.loss_curve, "from_cache": r.from_cache}
                       for k, r in zip(keys, records)], f)

    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2])
""")


def _script(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _start(script: Path, cache: Path, *args: str) -> subprocess.Popen:
    # Its own process group, so a kill reaches the workers too, as a scheduler's would.
    return subprocess.Popen([sys.executable, str(script), *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "HARNESS_CACHE": str(cache)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=default_sigint)


def _run(script: Path, cache: Path, *args: str) -> None:
    proc = _start(script, cache, *args)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    script = _script(tmp, RUN_SCRIPT, "cells.py")
    _run(script, tmp / "cache", "processes", str(tmp / "out.json"))
    return json.loads((tmp / "out.json").read_text())


# SIGKILL of a processes run is tests/test_interrupted_claims.py's, through a whole claims run.
@pytest.mark.parametrize(("sig", "executor"), [(signal.SIGINT, "processes"),
                                               (signal.SIGINT, "local")])
def test_a_killed_run_leaves_whole_entries_and_the_rerun_reuses_them(tmp_path, uninterrupted, sig,
                                                                      executor):
    script, cache, out = _script(tmp_path, RUN_SCRIPT, "cells.py"), tmp_path / "cache", tmp_path / "o"
    proc = _start(script, cache, executor, str(out))
    wait_for_an_entry(cache, proc)
    os.killpg(proc.pid, sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and not out.exists()
    finished = {p.stem for p in cache.glob("*.json")}
    assert 0 < len(finished) < 8, "the kill should land midway"
    for p in cache.glob("*.json"):
        json.loads(p.read_text())  # whole, or not there at all
    assert {p.suffix for p in cache.iterdir()} <= {".json", ".lock", ".tmp"}  # tmp never read

    _run(script, cache, executor, str(out))
    rerun = json.loads(out.read_text())
    assert {r["key"] for r in rerun if r["from_cache"]} == finished
    drop = ("from_cache",)
    assert ([{k: v for k, v in r.items() if k not in drop} for r in rerun]
            == [{k: v for k, v in r.items() if k not in drop} for r in uninterrupted])


CONCURRENT_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import torch, torch.nn as nn
    from harness.runs.jobs import TrainJob, run_jobs
    from harness.train import TrainConfig

    def model():
        with open(os.environ["MARKERS"], "a") as f:  # one line per run that really trains
            f.write(f"{os.getpid()}\\n")
        time.sleep(2)  # hold the key's lock long enough for the other run to queue behind it
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

    if __name__ == "__main__":
        ready = os.path.join(os.path.dirname(os.environ["MARKERS"]), f"ready-{os.getpid()}")
        open(ready, "w").close()
        while len([n for n in os.listdir(os.path.dirname(ready)) if n.startswith("ready-")]) < 2:
            time.sleep(0.01)  # both runs start the cell together
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(32, 3, 2, 2, generator=g), torch.randint(0, 3, (32,), generator=g)
        job = TrainJob({"shared": 1}, model, (x, y), (x, y),
                       TrainConfig(epochs=1, batch_size=8, warmup_epochs=0))
        (rec,) = run_jobs([job], progress=False)
        with open(sys.argv[1], "w") as f:
            json.dump({"acc": rec.test_acc, "curve": rec.loss_curve,
                       "from_cache": rec.from_cache}, f)
""")


def test_two_runs_sharing_a_cache_train_a_key_once(tmp_path, monkeypatch):
    script, cache = _script(tmp_path, CONCURRENT_SCRIPT, "shared.py"), tmp_path / "cache"
    (tmp_path / "sync").mkdir()
    monkeypatch.setenv("MARKERS", str(tmp_path / "sync" / "markers"))
    procs = [_start(script, cache, str(tmp_path / f"out{i}.json")) for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    assert len((tmp_path / "sync" / "markers").read_text().split()) == 1  # trained once
    a, b = (json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2))
    assert sorted([a["from_cache"], b["from_cache"]]) == [False, True]  # the other one waited
    assert (a["acc"], a["curve"]) == (b["acc"], b["curve"])  # and read the first one's record
    assert len(list(cache.glob("*.json"))) == 1


@pytest.mark.parametrize("content", ['{"key": {}, "record": {"test_acc": 0.5, "st',
                                     json.dumps({"key": {}, "record": {"accuracy": 1}})])
def test_run_jobs_recomputes_a_corrupt_entry_with_a_warning(tmp_path, content):
    x, y = torch.randn(16, 3, 2, 2), torch.randint(0, 3, (16,))
    job = rj.TrainJob({"corrupt-run": 1}, _linear, (x, y), (x, y),
                         TrainConfig(epochs=1, batch_size=8, warmup_epochs=0))
    (first,) = rj.run_jobs([job], directory=tmp_path)
    (entry,) = tmp_path.glob("*.json")
    entry.write_text(content)  # truncated JSON, or a record of the wrong schema
    with pytest.warns(rc.CorruptCacheEntry, match="corrupt training-cache entry"):
        (again,) = rj.run_jobs([job], directory=tmp_path)
    assert not again.from_cache and again.test_acc == first.test_acc  # recomputed, same run
    assert entry.with_suffix(".corrupt").read_text() == content
    (third,) = rj.run_jobs([job], directory=tmp_path)
    assert third.from_cache


HOOK_MODULE = """
def hook(ctx):
    return {n}  # the body a user edits
"""


@pytest.mark.parametrize("where", ["before_step", "after_step", "step_fn"])
def test_editing_a_hooks_module_retrains_at_every_hook_point(tmp_path, monkeypatch, where):
    """A hook that runs before the optimizer step, after it (the sparse masks) or instead of the
    step is code the record depends on: editing its module changes the key, and run_jobs trains
    again instead of reading the stale record."""
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))
    source = tmp_path / f"user_hook_{where}.py"
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 2, 2, generator=g), torch.randint(0, 3, (16,), generator=g)
    cfg = TrainConfig(epochs=1, batch_size=8, warmup_epochs=0)

    def job_and_key(n: int):
        source.write_text(HOOK_MODULE.format(n=n))  # a new size: the fingerprint memo sees it
        module = importlib.reload(importlib.import_module(source.stem)) if n else \
            importlib.import_module(source.stem)
        hook = {"step_fn": module.hook} if where == "step_fn" else {where: (module.hook,)}
        job = rj.TrainJob({"hook": where}, _linear, (x, y), (x, y), cfg, **hook)
        return job, rc.cache_key(job.key, job.code())

    (_, key0), (_, key1) = job_and_key(0), job_and_key(11)
    assert key0 != key1, f"editing the {where} hook's module kept the cache key"

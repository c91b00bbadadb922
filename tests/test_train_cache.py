"""The training cache: a record is reused only when config, data, kernel path and code match.

The code tests run in a copy of the tree, in fresh processes, as a user would: a one-line change
to the loss must give another key and retrain; a README edit must not.
"""

from __future__ import annotations

import json
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

from harness import train as tr
from tests.killable import default_sigint, wait_for_an_entry

REPO = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent("""
    import json, sys, torch, torch.nn as nn
    from harness import train as tr

    def model():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 2, 2, generator=g), torch.randint(0, 3, (32,), generator=g)
    cfg = tr.TrainConfig(epochs=1, batch_size=16, warmup_epochs=0)
    job = tr.TrainJob({"probe": 1}, model, (x, y), (x, y), cfg)
    (rec,) = tr.run_jobs([job], progress=False)
    print(json.dumps({"key": tr.cache_key(job.key, job.code()), "from_cache": rec.from_cache}))
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


def test_fingerprint_covers_the_loop_models_data_and_the_hook_modules():
    files = tr._closure({Path(tr.__file__).resolve(), tr._HARNESS_ROOT / "models" / "__init__.py",
                         tr._HARNESS_ROOT / "data" / "__init__.py"})
    names = {f.relative_to(tr._HARNESS_ROOT).as_posix() for f in files}
    assert {"train.py", "batches.py", "data/synthetic.py", "data/cifar.py", "models/__init__.py",
            "models/nf_resnet.py"} <= names
    # How results are reported or judged does not determine a run, so it is not hashed.
    assert not names & {"claim.py", "reporting.py", "references.py", "bands.py", "stats.py"}
    from harness.agc.study import AGCHook

    hook_files = tr._closure({tr._defining_file(AGCHook(0.01))})
    assert {f.name for f in hook_files} >= {"study.py", "rule.py"}
    assert tr.code_fingerprint(AGCHook(0.01)) != tr.code_fingerprint()


def _record() -> tr.TrainRecord:
    return tr.TrainRecord(test_acc=0.5, test_loss=1.0, diverged=False, steps=2,
                          loss_curve=[(2, 1.0)], epoch_seconds=[0.1], images_per_second=1.0,
                          peak_memory_mb=None, train_seconds=0.1)


@pytest.mark.parametrize("content", ["{truncated", json.dumps({"key": {}, "record": {"x": 1}}),
                                     json.dumps([1, 2]), ""])
def test_a_corrupt_entry_is_reported_moved_aside_and_recomputed(tmp_path, content):
    key = {"corrupt": 1}
    path = tr._cache_path(tr.cache_key(key), tmp_path)
    path.write_text(content)
    runs = []
    with pytest.warns(tr.CorruptCacheEntry, match="corrupt training-cache entry"):
        rec = tr.cached(key, lambda: runs.append(1) or _record(), directory=tmp_path)
    assert runs == [1] and not rec.from_cache
    assert path.with_suffix(".corrupt").read_text() == content  # kept for a look, not reused
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = tr.cached(key, lambda: runs.append(1) or _record(), directory=tmp_path)
    assert again.from_cache and runs == [1]


def test_code_given_to_the_key_changes_it():
    assert tr.cache_key({"a": 1}, code="x") != tr.cache_key({"a": 1}, code="y")


def test_records_of_a_job_depend_on_its_model_code(tmp_path):
    def model_a():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

    x, y = torch.randn(16, 3, 2, 2), torch.randint(0, 3, (16,))
    cfg = tr.TrainConfig(epochs=1, batch_size=8, warmup_epochs=0)
    job = tr.TrainJob({"m": 1}, model_a, (x, y), (x, y), cfg)
    assert tr._defining_file(model_a) == Path(__file__).resolve()
    assert job.code() == tr.code_fingerprint(model_a)


def test_fewer_samples_than_one_batch_is_a_clear_error_not_a_hang():
    x, y = torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))
    cfg = tr.TrainConfig(epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="4 training samples for batch size 8"):
        tr.train(lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (x, y), (x, y), cfg,
                 progress=False)


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


def test_kept_weights_come_back_with_the_record_and_a_missing_or_corrupt_file_retrains(
        tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 2, 2), torch.randint(0, 3, (16,))
    cfg = tr.TrainConfig(epochs=1, batch_size=8, warmup_epochs=0)
    job = tr.TrainJob({"w": 1}, _linear, (x, y), (x, y), cfg, keep_weights=True)
    (first,) = tr.run_jobs([job], directory=tmp_path)
    weights = tr.trained_weights(first, tmp_path)
    assert not first.from_cache and set(weights) == {"1.weight", "1.bias"}
    (again,) = tr.run_jobs([job], directory=tmp_path)
    assert again.from_cache
    assert all(torch.equal(weights[k], v) for k, v in tr.trained_weights(again, tmp_path).items())
    pt = next(tmp_path.glob("*.pt"))
    pt.unlink()
    (after_loss,) = tr.run_jobs([job], directory=tmp_path)
    assert not after_loss.from_cache and pt.exists()
    pt.write_bytes(b"not a checkpoint")
    with pytest.warns(tr.CorruptCacheEntry, match="unreadable cached weights"):
        (after_corrupt,) = tr.run_jobs([job], directory=tmp_path)
    assert not after_corrupt.from_cache
    assert all(torch.equal(weights[k], v) for k, v in
               tr.trained_weights(after_corrupt, tmp_path).items())  # same seed, same run
    plain = tr.TrainJob({"w": 2}, _linear, (x, y), (x, y), cfg)
    (no_weights,) = tr.run_jobs([plain], directory=tmp_path)
    with pytest.raises(ValueError, match="without keep_weights"):
        tr.trained_weights(no_weights, tmp_path)


# ------------------------------------------------ surviving interruption and concurrent runs
# Real processes, as on a cluster: a run killed midway (SIGINT, SIGKILL to its whole process
# group, as Slurm or the OOM killer would) leaves only whole cache entries, and the rerun reuses
# them; two runs sharing a cache train a key once.

RUN_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import torch, torch.nn as nn
    from harness import train as tr
    from harness.executors import ExecutorSpec

    class SlowStep:  # a cell takes ~0.8 s, so a kill lands between cells
        def __call__(self, state):
            time.sleep(0.1)

    def model():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

    def main(executor, out):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, 3, 2, 2, generator=g), torch.randint(0, 3, (64,), generator=g)
        jobs = [tr.TrainJob({"interrupt": seed}, model, (x, y), (x, y),
                            tr.TrainConfig(epochs=1, batch_size=8, warmup_epochs=0, seed=seed),
                            before_step=[SlowStep()], desc=f"seed {seed}")
                for seed in range(8)]
        spec = ExecutorSpec(executor, workers=2 if executor == "processes" else None)
        records = tr.run_jobs(jobs, executor=spec, progress=False)
        keys = [tr.cache_key(j.key, j.code()) for j in jobs]
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


@pytest.mark.parametrize(("sig", "executor"), [(signal.SIGINT, "processes"),
                                               (signal.SIGKILL, "processes"),
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
    from harness import train as tr

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
        job = tr.TrainJob({"shared": 1}, model, (x, y), (x, y),
                          tr.TrainConfig(epochs=1, batch_size=8, warmup_epochs=0))
        (rec,) = tr.run_jobs([job], progress=False)
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
    job = tr.TrainJob({"corrupt-run": 1}, _linear, (x, y), (x, y),
                      tr.TrainConfig(epochs=1, batch_size=8, warmup_epochs=0))
    (first,) = tr.run_jobs([job], directory=tmp_path)
    (entry,) = tmp_path.glob("*.json")
    entry.write_text(content)  # truncated JSON, or a record of the wrong schema
    with pytest.warns(tr.CorruptCacheEntry, match="corrupt training-cache entry"):
        (again,) = tr.run_jobs([job], directory=tmp_path)
    assert not again.from_cache and again.test_acc == first.test_acc  # recomputed, same run
    assert entry.with_suffix(".corrupt").read_text() == content
    (third,) = tr.run_jobs([job], directory=tmp_path)
    assert third.from_cache


def _exit_in_model():
    os._exit(7)


def test_a_cell_whose_worker_dies_fails_with_its_config_and_the_others_keep_theirs(tmp_path):
    from harness.executors import ExecutorSpec

    x, y = torch.randn(16, 3, 2, 2), torch.randint(0, 3, (16,))
    cfg = tr.TrainConfig(epochs=1, batch_size=8, warmup_epochs=0)
    good = tr.TrainJob({"dies": 0}, _linear, (x, y), (x, y), cfg, desc="good cell")
    bad = tr.TrainJob({"dies": 1}, _exit_in_model, (x, y), (x, y), cfg, desc="dying cell")
    with pytest.raises(tr.CellsFailed) as failed:
        tr.run_jobs([bad, good], executor=ExecutorSpec("processes", workers=1),
                    directory=tmp_path, progress=False)
    (failure,) = failed.value.failures
    assert "dying cell" in failure.label and '"dies": 1' in failure.label
    assert "exit status 7" in failure.error and "dying cell" in str(failed.value)
    (kept,) = tr.run_jobs([good], directory=tmp_path)
    assert kept.from_cache


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
    cfg = tr.TrainConfig(epochs=1, batch_size=8, warmup_epochs=0)

    def job_and_key(n: int):
        source.write_text(HOOK_MODULE.format(n=n))  # a new size: the fingerprint memo sees it
        module = importlib.reload(importlib.import_module(source.stem)) if n else \
            importlib.import_module(source.stem)
        hook = {"step_fn": module.hook} if where == "step_fn" else {where: (module.hook,)}
        job = tr.TrainJob({"hook": where}, _linear, (x, y), (x, y), cfg, **hook)
        return job, tr.cache_key(job.key, job.code())

    (_, key0), (_, key1) = job_and_key(0), job_and_key(11)
    assert key0 != key1, f"editing the {where} hook's module kept the cache key"

"""The training cache: a record is reused only when config, data, kernel path and code match.

The code tests run in a copy of the tree, in fresh processes, as a user would: a one-line change
to the loss must give another key and retrain; a README edit must not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from harness import train as tr

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

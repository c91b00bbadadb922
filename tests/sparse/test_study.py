"""harness.sparse.study: the invariant suite passes the harness and catches every known-bad
variant; the grid's cells, keys, cached runs, tables and plots."""

from __future__ import annotations

import dataclasses

import pytest

from harness.data import DataSpec, load_dataset
from harness.sparse import study
from harness.sparse.known_bad import KNOWN_BAD
from harness.train import TrainConfig

LAWS = study.InvariantConfig(model="vgg_tiny", model_overrides=(("stages", ((8,), (16, 16))),
                                                                ("resolution", 8)),
                             resolution=8, sparsities=(0.9,), steps=16, update_interval=2,
                             prune_fractions=(0.1, 0.5))

GRID = study.GridConfig(
    model="vgg_tiny", model_overrides=(("stages", ((8,), (16, 16))),),
    data=DataSpec("synthetic", train_size=64, test_size=32, seed=1), resolution=8,
    sparsity=0.9, batch_size=16, intervals=(4, 2, 1), ref_interval=2, batch_sizes=(8, 16),
    seeds=(0, 1), train=TrainConfig(epochs=1, warmup_epochs=0, check_every=2))


def test_invariant_suite_passes_the_harness_and_catches_every_known_bad():
    report = study.invariant_study(LAWS)
    assert report.violations == [], report.violations
    assert set(report.bad_caught) == set(KNOWN_BAD)
    assert all(n > 0 for n in report.bad_caught.values()), report.bad_caught
    assert report.rates["S=0.9 SET ΔT"] > report.rates["S=0.9 SET 4ΔT"]


def test_grid_cells_and_keys():
    cells = study.grid_cells(GRID)
    assert len(cells) == 2 * (2 + 3 + 1 + 1)
    key = study.cell_job(GRID, cells[2], load_dataset(GRID.data, 8, None), "cpu").key
    assert key["sparse"].update_interval == 4 and key["train"].batch_size == 16
    assert study.sparse_config(GRID, cells[0]) is None  # dense


def test_cells_train_once_then_come_from_the_cache(tmp_path, monkeypatch):
    # The first call trains every cell (one run_jobs ``train`` call each, one cache entry
    # each); the second trains nothing, leaves the entries as they were and reads every record
    # through the cache's loader.
    from harness.runs import jobs

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    trained, loaded = [], []
    real_train, real_load = jobs.train, jobs.load_cached

    def counting_train(*args, **kwargs):
        trained.append(kwargs["desc"])
        return real_train(*args, **kwargs)

    def counting_load(path):
        rec = real_load(path)
        loaded.append((path.name, rec is not None))
        return rec

    monkeypatch.setattr(jobs, "train", counting_train)
    monkeypatch.setattr(jobs, "load_cached", counting_load)
    cells = study.grid_cells(GRID)[:7]
    assert len(set(cells)) == 7  # seven distinct keys: seven runs, none shared
    first = study.train_sparse_cells(GRID, cells, device="cpu",
                                     load=lambda: load_dataset(GRID.data, 8, None))
    assert sorted(trained) == sorted(c.label() for c in cells)  # each cell trained once
    entries = sorted(tmp_path.glob("*.json"))
    assert len(entries) == 7
    stamps = {e.name: e.stat().st_mtime_ns for e in entries}
    trained.clear()
    loaded.clear()
    again = study.train_sparse_cells(GRID, cells, device="cpu",
                                     load=lambda: load_dataset(GRID.data, 8, None))
    assert trained == []  # nothing trained the second time
    assert sorted(loaded) == sorted((name, True) for name in stamps)  # every record a hit
    assert {e.name: e.stat().st_mtime_ns for e in tmp_path.glob("*.json")} == stamps
    assert first.drop(columns="rs_curve").equals(again.drop(columns="rs_curve"))
    sparse = first[first.method != study.DENSE]
    assert (sparse.rs >= 0.1 - 0.01).all() and (first[first.method == study.DENSE].rs == 1).all()
    assert first[first.method == study.STATIC].rs.iloc[0] == pytest.approx(0.1, abs=0.01)
    summary = study.cell_summary(first)
    assert len(summary) == 7  # one seed of each of the 7 cells
    assert study.plot_accuracy_vs_rs(first, 0.1).axes[0].get_xlabel().startswith("ITOP")
    assert study.plot_rs_curves(first).axes[0].get_ylabel() == "R_s"


def test_dry_run_keeps_every_cell_distinct_and_tiny():
    dry = GRID.dry_run()
    cells = study.grid_cells(dry)
    assert len({c for c in cells}) == len(cells)
    assert dry.train.max_steps == 2 and dry.data.train_size == 64


def test_full_grid_is_sized_as_stated():
    full = dataclasses.replace(GRID, batch_sizes=(64, 128, 256), batch_size=128,
                               intervals=(800, 200, 50))
    assert [c.interval for c in study.grid_cells(full) if c.method == study.SET][:3] == \
        [800, 200, 50]


def test_the_invariant_runs_take_the_configured_steps():
    seen = []
    hook = study.DynamicSparse(study.SparseConfig(0.9, update_interval=2, stop_fraction=1.0))
    data = study.synthetic_dataset(resolution=8, train_size=64, test_size=16, seed=0)
    study._probed_run(type(hook), hook.cfg, LAWS, data, seen)
    assert seen == []
    got = study._probed_run(study.DynamicSparse, hook.cfg, LAWS, data, seen)
    assert got.curve[-1][0] == LAWS.steps - 2 and got.updates == LAWS.steps // 2 - 1


def test_a_claims_cells_run_through_submitit_match_serial_runs(tmp_path, monkeypatch):
    # The ITOP claims' own full grid, shrunk as --profile full --dry-run shrinks it; three of its
    # cells through the slurm executor on submitit's local cluster (each cell a job in its own
    # process, as on Slurm), and the same cells serially: the same table.
    import importlib.util
    from pathlib import Path

    import pandas as pd

    from harness.runs.executors import ExecutorSpec

    path = Path(__file__).resolve().parents[2] / "claims" / "test_itop.py"
    spec = importlib.util.spec_from_file_location("_itop_claims", path)
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    dry = claims.FULL_GRID.dry_run()
    cells = study.grid_cells(dry)[:3]

    def load():
        return load_dataset(dry.data, dry.resolution, None)

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "serial" / "cache"))
    serial = study.train_sparse_cells(dry, cells, device="cpu", load=load)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "slurm" / "cache"))
    slurm = study.train_sparse_cells(dry, cells, device="cpu", load=load,
                            executor=ExecutorSpec("slurm", (("cluster", "local"),)))
    pd.testing.assert_frame_equal(serial, slurm)
    assert len(list((tmp_path / "slurm" / "cache").glob("*.json"))) == 3
    assert len(list((tmp_path / "slurm" / "submitit").iterdir())) >= 3  # one job folder a cell

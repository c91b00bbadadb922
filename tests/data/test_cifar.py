"""harness.data.cifar and load_dataset: the CIFAR readers, on files each test writes (offline),
and every way a data directory can be missing or corrupt."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import (
    CIFAR_STATS,
    DATA_ENV_VAR,
    DatasetCorrupt,
    DatasetMissing,
    DataSpec,
    load_cifar,
    load_dataset,
    resolve_data_root,
    synthetic_dataset,
)

# --------------------------------------------------------------------------------------------
# CIFAR loaders
# --------------------------------------------------------------------------------------------


def _dump(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def _fake_batch(rng: np.random.Generator, n: int, label_key: bytes, num_classes: int) -> dict:
    return {
        b"batch_label": b"fake",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, size=n)],
    }


def _write_cifar10(root: Path, per_batch: int = 3, n_test: int = 4) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _dump(base / f"data_batch_{i}", _fake_batch(rng, per_batch, b"labels", 10))
    _dump(base / "test_batch", _fake_batch(rng, n_test, b"labels", 10))
    _dump(base / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)],
                                  b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return base


def _write_cifar100(root: Path, n_train: int = 5, n_test: int = 3) -> Path:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = _fake_batch(rng, n, b"fine_labels", 100)
        batch[b"coarse_labels"] = [int(v) for v in rng.integers(0, 20, size=n)]
        _dump(base / name, batch)
    _dump(base / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                          b"coarse_label_names": [f"k{i}".encode() for i in range(20)]})
    return base


def _unnormalise(x: torch.Tensor, name: str) -> torch.Tensor:
    mean, std = CIFAR_STATS[name]
    return x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


def test_load_cifar10(tmp_path: Path) -> None:
    base = _write_cifar10(tmp_path)
    ds = load_cifar("cifar10", tmp_path)
    (xtr, ytr), (xte, yte) = ds.train, ds.test
    assert xtr.shape == (15, 3, 32, 32) and xte.shape == (4, 3, 32, 32)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert ds.num_classes == 10 and ds.resolution == 32
    # Batches are concatenated in order 1..5, rows are channel-major 32x32 planes.
    with (base / "data_batch_2").open("rb") as f:
        b2 = pickle.load(f, encoding="bytes")
    expected = torch.from_numpy(b2[b"data"]).view(3, 3, 32, 32).float() / 255
    torch.testing.assert_close(_unnormalise(xtr[3:6], "cifar10"), expected, atol=1e-5, rtol=0)
    assert ytr[3:6].tolist() == b2[b"labels"]
    with (base / "test_batch").open("rb") as f:
        tb = pickle.load(f, encoding="bytes")
    assert yte.tolist() == tb[b"labels"]
    # Red plane of the first test image is the first 1024 bytes.
    red = torch.from_numpy(tb[b"data"][0, :1024]).view(32, 32).float() / 255
    torch.testing.assert_close(_unnormalise(xte[:1], "cifar10")[0, 0], red, atol=1e-5, rtol=0)


def test_load_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    base = _write_cifar100(tmp_path)
    ds = load_cifar("cifar100", str(tmp_path))
    assert ds.num_classes == 100
    assert ds.train[0].shape == (5, 3, 32, 32) and ds.test[0].shape == (3, 3, 32, 32)
    with (base / "train").open("rb") as f:
        tr = pickle.load(f, encoding="bytes")
    assert ds.train[1].tolist() == tr[b"fine_labels"]
    expected = torch.from_numpy(tr[b"data"]).view(5, 3, 32, 32).float() / 255
    torch.testing.assert_close(_unnormalise(ds.train[0], "cifar100"), expected, atol=1e-5,
                               rtol=0)


def test_cifar_missing_directory_says_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing) as info:
        load_cifar("cifar10", tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    for needle in ("cifar-10-batches-py", "data_batch_1", "data_batch_5", "test_batch",
                   "batches.meta", f"tar xzf cifar-10-python.tar.gz -C {tmp_path}"):
        assert needle in msg, needle
    with pytest.raises(DatasetMissing, match=r"cifar-100-python.*train, test, meta"):
        load_cifar("cifar100", tmp_path)


def test_cifar_missing_file_is_named(tmp_path: Path) -> None:
    base = _write_cifar10(tmp_path)
    (base / "data_batch_3").unlink()
    with pytest.raises(DatasetMissing, match=r"cifar-10-batches-py/data_batch_3"):
        load_cifar("cifar10", tmp_path)
    base100 = _write_cifar100(tmp_path)
    (base100 / "meta").unlink()
    with pytest.raises(DatasetMissing, match=r"cifar-100-python/meta"):
        load_cifar("cifar100", tmp_path)


def test_cifar_no_root_mentions_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetMissing) as info:
        load_cifar("cifar10", None)
    assert "--data-root" in str(info.value) and DATA_ENV_VAR in str(info.value)


def test_cifar_corrupt_pickle_names_file(tmp_path: Path) -> None:
    base = _write_cifar10(tmp_path)
    (base / "data_batch_2").write_bytes(b"this is not a pickle")
    with pytest.raises(DatasetCorrupt, match="data_batch_2"):
        load_cifar("cifar10", tmp_path)


@pytest.mark.parametrize(
    "bad",
    [
        {b"data": np.zeros((3, 100), dtype=np.uint8), b"labels": [0, 1, 2]},  # wrong width
        {b"data": np.zeros((3, 3072), dtype=np.float32), b"labels": [0, 1, 2]},  # wrong dtype
        {b"data": np.zeros((3, 3072), dtype=np.uint8), b"labels": [0, 1]},  # label count
        {b"data": np.zeros((3, 3072), dtype=np.uint8), b"labels": [0, 1, 10]},  # label range
        {b"data": np.zeros((3, 3072), dtype=np.uint8)},  # missing labels key
        [1, 2, 3],  # not a dict
    ],
)
def test_cifar_malformed_batch_names_file(tmp_path: Path, bad: object) -> None:
    base = _write_cifar10(tmp_path)
    _dump(base / "test_batch", bad)
    with pytest.raises(DatasetCorrupt, match="test_batch"):
        load_cifar("cifar10", tmp_path)


def test_cifar_bad_meta_names_file(tmp_path: Path) -> None:
    base = _write_cifar10(tmp_path)
    _dump(base / "batches.meta", {b"label_names": [b"a", b"b"]})
    with pytest.raises(DatasetCorrupt, match="batches.meta"):
        load_cifar("cifar10", tmp_path)


def test_cifar_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar("svhn", tmp_path)


def test_resolve_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    assert resolve_data_root(None) is None
    assert resolve_data_root("") is None
    assert resolve_data_root(str(tmp_path)) == tmp_path
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root(str(tmp_path / "cli")) == tmp_path / "cli"  # flag wins
    monkeypatch.setenv(DATA_ENV_VAR, "~/data")
    assert resolve_data_root(None) == Path("~/data").expanduser()


def test_resolved_env_root_feeds_loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    ds = load_cifar("cifar10", resolve_data_root(None))
    assert ds.train[0].shape[0] == 15


def test_load_dataset_cifar_subset_and_resize(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    ds = load_dataset(DataSpec("cifar10", train_size=7, test_size=2), 24, tmp_path)
    assert ds.train[0].shape == (7, 3, 24, 24) and ds.test[0].shape == (2, 3, 24, 24)
    assert ds.resolution == 24 and ds.num_classes == 10
    full = load_cifar("cifar10", tmp_path)
    assert torch.equal(ds.train[1], full.train[1][:7])
    same = load_dataset(DataSpec("cifar10"), 32, tmp_path)
    assert torch.equal(same.train[0], full.train[0])


def test_load_dataset_synthetic_and_errors(tmp_path: Path) -> None:
    ds = load_dataset(DataSpec("synthetic", train_size=20, test_size=10, seed=4), 16, None)
    ref = synthetic_dataset(resolution=16, train_size=20, test_size=10, seed=4)
    assert torch.equal(ds.train[0], ref.train[0]) and torch.equal(ds.test[1], ref.test[1])
    with pytest.raises(DatasetMissing):
        load_dataset(DataSpec("cifar100"), 32, tmp_path)
    with pytest.raises(ValueError):
        load_dataset(DataSpec("imagenet"), 32, tmp_path)
    assert DataSpec("cifar100").dry_run().name == "synthetic"

"""harness.data.download: the whole fetch path offline, on a file:// URL serving a small
tarball the test builds: MD5 checked, extracted atomically, nothing left on failure."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from harness.data import DatasetCorrupt, DatasetMissing, DataSpec, load_dataset
from harness.data.download import Source, fetch_cifar, present
from tests.data.test_cifar import _write_cifar10


def _tarball(tmp_path: Path) -> Path:
    """A tiny CIFAR-10 archive in the official layout (cifar-10-batches-py/...)."""
    src = tmp_path / "src"
    _write_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def _source(archive: Path, md5: str | None = None) -> Source:
    return Source(archive.as_uri(), md5 or hashlib.md5(archive.read_bytes()).hexdigest())


def test_fetch_downloads_checks_and_extracts_once(tmp_path):
    archive = _tarball(tmp_path)
    root = tmp_path / "data"
    assert fetch_cifar("cifar10", root, _source(archive), progress=False) == root
    assert present("cifar10", root)
    assert not list(root.glob(".download-*"))  # the temporary directory is gone
    archive.unlink()  # a second call finds the files and downloads nothing
    assert fetch_cifar("cifar10", root, _source(tmp_path / "gone.tar.gz", "0" * 32)) == root


def test_a_wrong_md5_leaves_nothing_behind(tmp_path):
    archive = _tarball(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(DatasetCorrupt, match="MD5 .* expected 0{32}.*nothing was written"):
        fetch_cifar("cifar10", root, _source(archive, "0" * 32), progress=False)
    assert list(root.iterdir()) == []


def test_a_truncated_archive_is_corrupt_and_leaves_nothing(tmp_path):
    archive = _tarball(tmp_path)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    root = tmp_path / "data"
    with pytest.raises(DatasetCorrupt, match="cannot be extracted"):
        fetch_cifar("cifar10", root, _source(cut), progress=False)
    assert list(root.iterdir()) == []


def test_an_archive_without_the_layout_is_corrupt(tmp_path):
    wrong = tmp_path / "wrong.tar.gz"
    with tarfile.open(wrong, "w:gz") as tar:
        info = tarfile.TarInfo("something/else.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DatasetCorrupt, match="lacks cifar-10-batches-py/"):
        fetch_cifar("cifar10", tmp_path / "data", _source(wrong), progress=False)


def test_an_unreachable_url_is_a_clear_missing_dataset(tmp_path):
    with pytest.raises(DatasetMissing, match="could not be downloaded from file://"):
        fetch_cifar("cifar10", tmp_path / "data",
                    Source((tmp_path / "nowhere.tar.gz").as_uri(), "0" * 32), progress=False)


def test_load_dataset_downloads_only_when_asked(tmp_path, monkeypatch):
    archive = _tarball(tmp_path)
    from harness.data import download

    monkeypatch.setitem(download.SOURCES, "cifar10", _source(archive))
    root = tmp_path / "data"
    with pytest.raises(DatasetMissing):  # offline: today's behaviour
        load_dataset(DataSpec("cifar10"), 32, root)
    ds = load_dataset(DataSpec("cifar10"), 32, root, download=True)
    assert len(ds.train[1]) == 15 and present("cifar10", root)
    monkeypatch.setenv("HARNESS_DATA_CACHE", str(tmp_path / "cache"))
    ds = load_dataset(DataSpec("cifar10"), 32, None, download=True)  # no root: the cache
    assert present("cifar10", tmp_path / "cache")

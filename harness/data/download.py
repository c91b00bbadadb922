"""CIFAR fetched on first use: the official python tarball from its canonical URL, its
published MD5 checked, extracted atomically (a partial or corrupt download leaves nothing
behind), with a progress bar. ``--offline`` skips all of this (the data must be there)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness.data.cifar import _CIFAR, DatasetCorrupt, DatasetMissing


@dataclass(frozen=True)
class Source:
    url: str
    md5: str  # as published with the dataset (and checked by torchvision)


SOURCES = {
    "cifar10": Source("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "c58f30108f718f92721af3b95e74349a"),
    "cifar100": Source("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                       "eb9058c3a382ffc7106e4002c42a8d85"),
}
DATA_CACHE_VAR = "HARNESS_DATA_CACHE"


def default_data_root() -> Path:
    """Where downloads go when no ``--data-root`` / ``$CLAIMS_DATA`` is given."""
    return Path(os.environ.get(DATA_CACHE_VAR) or Path.home() / ".cache" / "harness-data")


def present(name: str, root: Path) -> bool:
    layout = _CIFAR[name]
    base = root / layout.subdir
    return all((base / f).is_file()
               for f in (*layout.train_files, layout.test_file, layout.meta_file))


def fetch_cifar(name: str, root: Path, source: Source | None = None,
                progress: bool | None = None) -> Path:
    """``root`` with ``name``'s files under it, downloading and extracting them if absent.

    The archive goes to a temporary directory inside ``root``; only a verified, complete
    extraction is moved into place (one rename), so an interrupted or corrupt download never
    leaves a half-written dataset."""
    if name not in _CIFAR:
        raise ValueError(f"unknown CIFAR variant {name!r}; expected one of {sorted(_CIFAR)}")
    root = Path(root).expanduser()
    if present(name, root):
        return root
    layout, source = _CIFAR[name], source or SOURCES[name]
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = Path(tmp) / layout.tarball
        _download(source.url, archive, layout.pretty, progress)
        digest = _md5(archive)
        if digest != source.md5:
            raise DatasetCorrupt(f"{layout.pretty} download from {source.url} has MD5 {digest}, "
                                 f"expected {source.md5} (truncated or corrupt); nothing was "
                                 f"written under {root}")
        extracted = Path(tmp) / "extracted"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # "data": no absolute paths, links out of the tree or devices (3.10.12+)
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(extracted, **safe)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetCorrupt(f"{layout.pretty} archive from {source.url} cannot be "
                                 f"extracted: {e!r}; nothing was written under {root}") from e
        if not present(name, extracted):
            raise DatasetCorrupt(f"{layout.pretty} archive from {source.url} lacks "
                                 f"{layout.subdir}/ with the expected files; nothing written")
        target = root / layout.subdir
        if target.exists():  # an incomplete earlier copy (its files were not all present)
            shutil.rmtree(target)
        os.replace(extracted / layout.subdir, target)
    return root


def _download(url: str, dest: Path, pretty: str, progress: bool | None) -> None:
    from harness.progress import progress_bar

    try:
        with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            bar = progress_bar(total or None, f"downloading {pretty}", progress, unit="B")
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
            bar.close()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DatasetMissing(f"{pretty} could not be downloaded from {url} ({e}); download "
                             f"it by hand and pass --data-root, or run with --offline and "
                             f"$CLAIMS_DATA set") from e


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

"""harness.atomic: a file is replaced whole or left as it was, with no temporary left behind."""

from __future__ import annotations

import json
import os

import pytest

from harness import atomic


def test_writes_json_readable_by_everyone(tmp_path):
    path = tmp_path / "sub" / "ref.json"
    atomic.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert path.read_text().endswith("\n")
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ref.json"
    path.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ref.json"]


def test_an_unserialisable_document_writes_nothing(tmp_path):
    path = tmp_path / "ref.json"
    with pytest.raises(TypeError):
        atomic.write_json(path, {"x": object()})
    assert not path.exists()

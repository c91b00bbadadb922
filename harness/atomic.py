"""Files written whole or not at all: a temporary file beside the target, flushed to disk, then
one rename. A reader (or a run killed midway) sees the old file or the new one, never half.

Used for references, noise tables, speed baselines, reports and the training cache's entries
(how a file is written does not change a run, so this module is not part of the cache's key)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by everyone (0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private; these files are for reading
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, doc: Any, indent: int = 2) -> None:
    """``doc`` as JSON (with a final newline), atomically."""
    write_text(path, json.dumps(doc, indent=indent) + "\n")

"""Progress bars for long work (training runs, timing populations).

Kept apart from the results module so that the training loop, whose source is part of every cache key,
does not depend on how results are reported."""

from __future__ import annotations

import sys


def progress_bar(total: int | None, desc: str, enabled: bool | None = None, unit: str = "it"):
    """A tqdm bar on the real stderr, so it shows through pytest's capture on a terminal."""
    from tqdm.auto import tqdm

    disable = (not sys.__stderr__.isatty()) if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.__stderr__,
                disable=disable, unit_scale=unit == "B")

"""The claims report: one self-contained HTML file per run (``report.html``, images embedded),
and two runs compared metric by metric.

Read from what a run leaves (``results/<run>/claims.json`` and the plots beside it) and from
the reference store (each metric's stored value and band), rendered with Jinja2 from
``harness/templates/report.html.j2``. ``python -m harness.html_report RUN`` writes RUN/report.html;
``python -m harness.html_report A B`` prints each metric's change and writes B/compare.html.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import atomic
from harness import references as refs
from harness.claim import format_value
from harness.results import ClaimRow

TEMPLATE = "report.html.j2"
MAX_TABLE_ROWS = 40  # a CSV artifact longer than this is linked by name, not inlined


class ReportError(Exception):
    """A run folder that cannot be reported: missing or malformed claims.json."""


@dataclass(frozen=True)
class Run:
    path: Path
    context: dict[str, Any]
    rows: list[ClaimRow]

    @property
    def name(self) -> str:
        return self.path.name


def load_run(run_dir: Path) -> Run:
    """A run as the plugin wrote it; a clear error when it is not one."""
    path = Path(run_dir) / "claims.json"
    try:
        doc = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(ClaimRow)}
        rows = [ClaimRow(**{k: v for k, v in c.items() if k in known}) for c in doc["claims"]]
    except OSError as e:
        raise ReportError(f"{run_dir} is not a results folder: cannot read {path} ({e})") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ReportError(f"malformed {path}: {type(e).__name__}: {e}") from None
    context = {k: v for k, v in doc.items() if k != "claims"}
    return Run(Path(run_dir), context, rows)


# ------------------------------------------ one run ------------------------------------------ #


@dataclass(frozen=True)
class MetricLine:
    """A measured number beside the paper's figure and the reference's band."""

    name: str
    measured: str
    paper: str
    reference: str  # the stored value
    band: str  # the values that pass
    status: str  # "in band", "OUT OF BAND", "no reference"
    why: str  # the band's justification


@dataclass(frozen=True)
class Image:
    name: str
    data_uri: str


@dataclass(frozen=True)
class Table:
    name: str
    html: str


@dataclass(frozen=True)
class ClaimView:
    row: ClaimRow
    anchor: str
    metrics: list[MetricLine]
    images: list[Image]
    tables: list[Table]
    other_files: list[str]
    reference_path: str | None


def _reference(run: Run, claim_id: str) -> refs.Reference | None:
    root = Path(run.context.get("references_dir") or refs.DEFAULT_ROOT)
    path = refs.reference_path(root, run.context.get("profile", ""),
                               run.context.get("device_class", ""), claim_id)
    try:
        return refs.load_reference(path) if path.exists() else None
    except refs.ReferenceError:
        return None  # the run's own row already says BAD_REFERENCE and why


def _band(tol, value: float | None) -> str:
    if value is None:
        return "nan only"
    lo, hi = tol.band(value)
    return f"[{_num(lo)}, {_num(hi)}]"


def _num(x: float | None) -> str:
    if x is None:
        return "nan"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return format_value(x)


def metric_lines(row: ClaimRow, reference: refs.Reference | None) -> list[MetricLine]:
    lines = []
    stored = reference.metrics if reference else {}
    papers = row.metric_papers
    raw = (reference.raw.get("metrics", {}) if reference else {})
    names = list(row.metrics) + [n for n in stored if n not in row.metrics]
    for name in names:
        value = row.metrics.get(name)
        paper = papers.get(name) or (raw.get(name, {}).get("paper") or "")
        if name in stored:
            s = stored[name]
            problem = s.tolerance.violation(name, value, s.value) if name in row.metrics else "absent"
            status = "OUT OF BAND" if problem else "in band"
            lines.append(MetricLine(name, _num(value) if name in row.metrics else "not measured",
                                    paper, _num(s.value), _band(s.tolerance, s.value), status,
                                    s.tolerance.why))
        else:
            lines.append(MetricLine(name, _num(value), paper, "-", "-", "no reference", ""))
    for name, value in row.observed.items():
        lines.append(MetricLine(name, _num(value), papers.get(name, ""), "-", "-",
                                "reported, not guarded", ""))
    return lines


def _artifact(run: Run, row: ClaimRow, artifact: str) -> Path:
    """The file itself, or, when the run folder has moved, the same name beside this run."""
    p = Path(artifact)
    return p if p.exists() else run.path / row.claim / p.name


def _table_html(path: Path) -> str | None:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except Exception:  # noqa: BLE001 - an unreadable table is listed by name instead
        return None
    if len(frame) > MAX_TABLE_ROWS:
        return None
    return frame.to_html(index=False, border=0, classes="data", float_format=lambda x: f"{x:.4g}")


def claim_view(run: Run, row: ClaimRow) -> ClaimView:
    reference = _reference(run, row.claim)
    images, tables, others = [], [], []
    for a in row.artifacts:
        path = _artifact(run, row, a)
        if path.suffix == ".png" and path.exists():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            images.append(Image(path.name, f"data:image/png;base64,{data}"))
        elif path.suffix == ".csv" and path.exists() and (html := _table_html(path)):
            tables.append(Table(path.name, html))
        else:
            others.append(path.name + ("" if path.exists() else " (missing)"))
    return ClaimView(row, "claim-" + row.claim.replace(".", "-"), metric_lines(row, reference),
                     images, tables, others, str(reference.path) if reference else None)


def _environment(context: dict[str, Any]) -> list[tuple[str, str]]:
    env = context.get("environment", {}) or {}
    items = [("profile", f"{context.get('profile')}{' (dry run)' if context.get('dry_run') else ''}"),
             ("device class", str(context.get("device_class")))]
    for k, v in env.items():
        if isinstance(v, dict):
            items += [(f"{k}.{kk}", str(vv)) for kk, vv in v.items()]
        else:
            items.append((k, str(v)))
    return items


def _jinja():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("harness", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def render_run(run: Run) -> str:
    views = [claim_view(run, r) for r in run.rows]
    verdicts = Counter(r.verdict for r in run.rows)
    statuses = Counter(r.reference for r in run.rows)
    regressed = [r.claim for r in run.rows if r.reference in ("REGRESSED", "BAD_REFERENCE")
                 or r.verdict in ("ERROR", "NO_VERDICT")]
    return _jinja().get_template(TEMPLATE).render(
        mode="run", title=f"Claims report: {run.name}", run=run, views=views,
        verdicts=sorted(verdicts.items()), statuses=sorted(statuses.items()),
        regressed=regressed, environment=_environment(run.context), changes=[])


def write_html(run_dir: Path, out: Path | None = None) -> Path:
    """Render ``run_dir``'s report to ``out`` (default ``run_dir/report.html``), atomically."""
    run = load_run(run_dir)
    out = Path(out) if out else Path(run_dir) / "report.html"
    atomic.write_text(out, render_run(run))
    return out


# ------------------------------------------ two runs ------------------------------------------ #


@dataclass(frozen=True)
class MetricChange:
    """One metric (or a claim's verdict) in run A and in run B."""

    claim: str
    metric: str  # "verdict" for the claim's verdict
    a: str
    b: str
    change: str  # b - a (and relative), or "changed" / "same"

    @property
    def changed(self) -> bool:
        return self.change not in ("same", "0")


def _delta(a: Any, b: Any) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if a == b:
            return "0"
        rel = f" ({(b - a) / abs(a):+.1%})" if a else ""
        return f"{b - a:+.4g}{rel}"
    return "same" if a == b else "changed"


def compare_runs(a: Run, b: Run) -> list[MetricChange]:
    """Every claim in either run: its verdict, reference status and each metric, A against B."""
    rows_a, rows_b = {r.claim: r for r in a.rows}, {r.claim: r for r in b.rows}
    out = []
    for claim in list(rows_a) + [c for c in rows_b if c not in rows_a]:
        ra, rb = rows_a.get(claim), rows_b.get(claim)
        va, vb = (ra.verdict if ra else "(absent)"), (rb.verdict if rb else "(absent)")
        out.append(MetricChange(claim, "verdict", va, vb, _delta(va, vb)))
        ma = {**(ra.metrics if ra else {}), **(ra.observed if ra else {})}
        mb = {**(rb.metrics if rb else {}), **(rb.observed if rb else {})}
        for name in list(ma) + [n for n in mb if n not in ma]:
            xa, xb = ma.get(name, "(absent)"), mb.get(name, "(absent)")
            out.append(MetricChange(claim, name, _show(xa), _show(xb), _delta(xa, xb)))
    return out


def _show(x: Any) -> str:
    return _num(x) if isinstance(x, (int, float)) or x is None else str(x)


def changes_table(changes: list[MetricChange]) -> str:
    import pandas as pd

    frame = pd.DataFrame([dataclasses.asdict(c) for c in changes],
                         columns=["claim", "metric", "a", "b", "change"])
    return frame.to_string(index=False) if len(frame) else "(no claims in either run)"


def render_comparison(a: Run, b: Run, changes: list[MetricChange]) -> str:
    return _jinja().get_template(TEMPLATE).render(
        mode="compare", title=f"Claims compared: {a.name} → {b.name}", run=b, run_a=a,
        views=[], verdicts=[], statuses=[], regressed=[], changes=changes,
        environment=_environment(b.context), environment_a=_environment(a.context))


def write_comparison(a_dir: Path, b_dir: Path, out: Path | None = None) -> tuple[Path, list[MetricChange]]:
    a, b = load_run(a_dir), load_run(b_dir)
    changes = compare_runs(a, b)
    out = Path(out) if out else Path(b_dir) / "compare.html"
    atomic.write_text(out, render_comparison(a, b, changes))
    return out, changes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.html_report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                   help="results/<run>; two runs: A B compares them")
    p.add_argument("--out", type=Path, default=None, help="where the HTML goes")
    args = p.parse_args(argv)
    if len(args.runs) > 2:
        p.error("one run (its report) or two (A B, compared)")
    try:
        if len(args.runs) == 1:
            print(f"report: {write_html(args.runs[0], args.out)}")
        else:
            out, changes = write_comparison(args.runs[0], args.runs[1], args.out)
            print(changes_table(changes))
            moved = sum(c.changed for c in changes)
            print(f"\n{moved} of {len(changes)} values changed; comparison: {out}")
    except ReportError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Results as a pandas table, a terminal table and a readable Markdown report."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.claim import Claim
from harness.evidence import Evidence
from harness.jsonable import to_jsonable
from harness.progress import progress_bar  # noqa: F401 (re-exported)
from harness.references import Comparison


@dataclass
class ClaimRow:
    """One claim's outcome in a run."""

    claim: str
    verdict: str
    reason: str
    measured: str
    paper: str
    reference: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    statement: str = ""
    source: str = ""
    seeds: list[int] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    samples: dict[str, list[float | None]] = field(default_factory=dict)  # per-seed values
    observed: dict[str, float | None] = field(default_factory=dict)  # reported, not guarded
    metric_papers: dict[str, str] = field(default_factory=dict)  # the paper's figure per metric
    verdict_odds: dict[str, Any] | None = None  # harness.odds.VerdictOdds.to_json()


def row_from(evidence: Evidence, comparison: Comparison, seconds: float) -> ClaimRow:
    claim = evidence.claim
    return ClaimRow(
        claim=claim.id,
        verdict=evidence.verdict.value if evidence.verdict else "NO_VERDICT",
        reason=evidence.reason,
        measured=evidence.key_numbers(),
        paper="; ".join(f"{k}: {v}" for k, v in claim.paper.items()),
        reference=comparison.status,
        problems=list(comparison.problems),
        seconds=round(seconds, 2),
        metrics={k: m.value for k, m in evidence.measurements.items()},
        artifacts=[str(p) for p in evidence.artifacts],
        statement=claim.statement,
        source=claim.source,
        seeds=list(evidence.seeds),
        config=evidence.config,
        notes=list(evidence.notes),
        samples={k: list(m.samples) for k, m in evidence.measurements.items() if m.samples},
        observed=dict(evidence.observed),
        metric_papers={k: m.paper for k, m in evidence.measurements.items() if m.paper},
        verdict_odds=None if evidence.odds is None else evidence.odds.to_json(),
    )


def error_row(claim_id: str, statement: str, reason: str, status: str, seconds: float) -> ClaimRow:
    """A claim whose check errored or was skipped: no verdict, and why."""
    return ClaimRow(claim_id, status, reason, "", "", status, seconds=round(seconds, 2),
                    statement=statement)


def claim_row(claim: Claim, report: Any, evidence: Evidence | None, comparison: Comparison | None,
              seconds: float) -> ClaimRow | None:
    """The row a claim check's pytest report (``pytest.TestReport``) adds: its evidence against
    the reference, or why there is none (skipped, or an error); None for a report that adds
    no row (a setup that went well, a teardown)."""
    if report.when == "call":
        if report.skipped:
            return error_row(claim.id, claim.statement, short_reason(report), "SKIPPED", 0.0)
        if evidence is not None and evidence.verdict is not None and comparison is not None:
            return row_from(evidence, comparison, seconds)
        return error_row(claim.id, claim.statement, short_reason(report), "ERROR", seconds)
    if report.when == "setup" and (report.skipped or report.failed):
        status = "SKIPPED" if report.skipped else "ERROR"
        return error_row(claim.id, claim.statement, short_reason(report), status, 0.0)
    return None


def short_reason(report: Any) -> str:
    """Why a check was skipped or failed, in a line: the skip's reason, or the error's lines."""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    text = str(report.longrepr or "")
    lines = [ln for ln in text.splitlines() if ln.startswith("E ")] or text.splitlines()[-1:]
    return " ".join(ln[1:].strip() for ln in lines[:6])[:600]


def print_summary(tr: Any, rows: list[ClaimRow], run_dir: Path, context: dict[str, Any],
                  warning: str | None = None) -> None:
    """On pytest's terminal reporter ``tr``: the table of the run (and ``warning``), then its
    results written to ``run_dir`` (``write_results``)."""
    dry = " (dry run)" if context.get("dry_run") else ""
    tr.section(f"claims: profile {context.get('profile')}{dry} on {context.get('device_class')}")
    tr.write_line(terminal_table(rows, width=max(120, tr._tw.fullwidth)))
    if warning:
        tr.write_line(f"\n{warning}", yellow=True, bold=True)
    write_results(run_dir, rows, context)
    tr.write_line(f"\nresults: {run_dir}/claims.csv, claims.json, report.md")


def to_frame(rows: list[ClaimRow]) -> pd.DataFrame:
    columns = ["claim", "verdict", "reason", "measured", "paper", "reference", "problems", "seconds"]
    return pd.DataFrame([{c: getattr(r, c) for c in columns} for r in rows], columns=columns)


def terminal_table(rows: list[ClaimRow], width: int = 120) -> str:
    """A fixed-width table: one block per claim, measured numbers beside the paper's."""
    if not rows:
        return "no claims ran"
    id_w = max(len(r.claim) for r in rows)
    verdict_w = max(len(r.verdict) for r in rows)
    ref_w = max(len(r.reference) for r in rows)
    head = f"{'claim':<{id_w}}  {'verdict':<{verdict_w}}  {'reference':<{ref_w}}  evidence"
    lines = [head, "-" * min(width, max(len(head), 80))]
    indent = " " * (id_w + verdict_w + ref_w + 6)
    body_w = max(40, width - len(indent))
    for r in rows:
        details = [f"why: {r.reason}"] if r.reason else []
        if r.measured:
            details.append(f"measured: {r.measured}")
        if r.paper:
            details.append(f"paper: {r.paper}")
        details += [f"note: {n}" for n in r.notes]
        details += [f"! {p}" for p in r.problems]
        wrapped = [w for d in details for w in textwrap.wrap(
            d, body_w, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)]
        first = wrapped[0] if wrapped else ""
        lines.append(f"{r.claim:<{id_w}}  {r.verdict:<{verdict_w}}  {r.reference:<{ref_w}}  {first}")
        lines += [indent + w for w in wrapped[1:]]
    return "\n".join(lines)


def write_results(run_dir: Path, rows: list[ClaimRow], context: dict[str, Any]) -> pd.DataFrame:
    """``claims.csv``, ``claims.json`` and ``report.md`` in ``run_dir``; returns the frame."""
    run_dir.mkdir(parents=True, exist_ok=True)
    frame = to_frame(rows)
    frame.to_csv(run_dir / "claims.csv", index=False)
    doc = {**to_jsonable(context), "claims": [to_jsonable(r) for r in rows]}
    (run_dir / "claims.json").write_text(json.dumps(doc, indent=2) + "\n")
    (run_dir / "report.md").write_text(markdown_report(rows, context, run_dir))
    return frame


def markdown_report(rows: list[ClaimRow], context: dict[str, Any], run_dir: Path) -> str:
    env = context.get("environment", {})
    out = [
        "# Claims report",
        "",
        f"Profile **{context.get('profile')}**{' (dry run)' if context.get('dry_run') else ''} "
        f"on **{env.get('device_name')}** ({context.get('device_class')}), torch {env.get('torch')}, "
        f"CUDA {env.get('cuda')}, commit `{env.get('harness_commit')}`.",
        "",
        "| claim | verdict | reference | measured | paper |",
        "| --- | --- | --- | --- | --- |",
    ]
    out += [
        f"| `{r.claim}` | {r.verdict} | {r.reference} | {r.measured} | {r.paper} |" for r in rows
    ]
    for r in rows:
        out += ["", f"## `{r.claim}`: {r.verdict}", "", f"> {r.statement}", ""]
        if r.source:
            out.append(f"Source: {r.source}.")
        out += [f"Why: {r.reason}", ""]
        out += [f"Note: {n}" for n in r.notes] + ([""] if r.notes else [])
        if r.metrics:
            out += ["| metric | value |", "| --- | --- |"]
            out += [f"| {k} | {v} |" for k, v in r.metrics.items()]
        if r.problems:
            out += ["", "Reference comparison:"] + [f"- {p}" for p in r.problems]
        for a in r.artifacts:
            rel = Path(a).relative_to(run_dir) if Path(a).is_relative_to(run_dir) else Path(a)
            out.append(f"\n![{rel.name}]({rel})" if rel.suffix == ".png" else f"\n[{rel.name}]({rel})")
    return "\n".join(out) + "\n"

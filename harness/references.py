"""The reference store: what each claim measured when its reference was last regenerated.

Layout: ``reference_results/<profile>/<device class>/<claim id>.json``, one file per claim.
A check fails when a metric leaves its tolerance band or the verdict differs from the stored one.
Only ``write_reference`` (called by ``--regen-references``) ever writes there, atomically.
``check_reference`` is what the plugin runs after each claim check: compare, regenerate, or
neither on a dry run, as pytest-regressions' ``perform_regression_check`` does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness import atomic
from harness.claim import Tolerance, format_value
from harness.costs import ESTIMATE_NAME  # a profile's priced plan, beside its references
from harness.evidence import Evidence

SCHEMA_VERSION = 1
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "reference_results"


class ReferenceError(Exception):
    """A reference file that cannot be used: corrupt, unknown schema or malformed."""


@dataclass(frozen=True)
class StoredMetric:
    value: float | None
    tolerance: Tolerance
    samples: tuple[float | None, ...] = ()


@dataclass(frozen=True)
class Reference:
    path: Path
    claim: str
    verdict: str
    metrics: dict[str, StoredMetric]
    raw: dict[str, Any] = field(repr=False)

    @property
    def verdicts_allowed(self) -> list[str]:
        """The stored verdict, those measured under other kernel paths, and those a redraw of
        the seeds reaches plausibly (``harness.odds``): a design near its decision boundary may
        land on either side on a user's CPU."""
        return sorted({self.verdict, *self.raw.get("verdicts_seen", []),
                       *self.raw.get("verdicts_plausible", []),
                       *self.raw.get("verdicts_declared", {})})


@dataclass(frozen=True)
class Comparison:
    """How a run compares with its reference: PASS, REGRESSED or NO_REFERENCE."""

    status: str
    problems: tuple[str, ...] = ()
    path: Path | None = None

    @property
    def failed(self) -> bool:
        return self.status == "REGRESSED"


def reference_path(root: Path, profile: str, device_class: str, claim_id: str) -> Path:
    return Path(root) / profile / device_class / f"{claim_id}.json"


BENCHMARKS_DIR = "benchmarks"  # speed baselines (harness.benchgate) live beside the references


def reference_files(root: Path = DEFAULT_ROOT) -> list[Path]:
    """Every stored reference under ``root`` (not the measured noise beside them, the speed
    baselines under ``benchmarks/``, nor a profile's ``estimate.json``)."""
    return sorted(p for p in Path(root).rglob("*.json") if "noise" not in p.parent.parts
                  and p.relative_to(root).parts[0] != BENCHMARKS_DIR and p.name != ESTIMATE_NAME)


def regen_command(profile: str, device: str, claim_id: str) -> str:
    """The exact command that stores (or refreshes) one claim's reference."""
    return f"nox -s regen -- --profile {profile} --device {device} --claim {claim_id}"


def load_reference(path: Path) -> Reference:
    """Read and validate one reference file; every failure names the file."""
    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ReferenceError(f"corrupt reference file {path}: {e}") from None
    except OSError as e:
        raise ReferenceError(f"cannot read reference file {path}: {e}") from None
    if not isinstance(raw, dict):
        raise ReferenceError(f"reference file {path}: expected a JSON object")
    schema = raw.get("schema")
    if schema != SCHEMA_VERSION:
        raise ReferenceError(
            f"reference file {path} has schema {schema!r}; this harness reads schema "
            f"{SCHEMA_VERSION}. Regenerate it deliberately with --regen-references."
        )
    try:
        metrics = {
            name: StoredMetric(
                value=None if m["value"] is None else float(m["value"]),
                tolerance=Tolerance(
                    why=m["justification"],
                    abs=float(m.get("abs_tol", 0.0)),
                    rel=float(m.get("rel_tol", 0.0)),
                    direction=m.get("direction", "two-sided"),
                    domain=_domain(m.get("domain")),
                ),
                samples=tuple(None if x is None else float(x) for x in m.get("samples", ())),
            )
            for name, m in raw["metrics"].items()
        }
        return Reference(Path(path), raw["claim"], raw["verdict"], metrics, raw)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ReferenceError(f"malformed reference file {path}: {type(e).__name__}: {e}") from None


def _domain(raw: Any) -> tuple[float, float] | None:
    if raw is None:
        return None
    lo, hi = raw
    return (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))


def unstorable(evidence: Evidence) -> list[str]:
    """Why this evidence must not become a reference (empty when it may).

    A band that covers its metric's whole domain guards nothing; a trained claim whose
    baseline did not learn (``baseline_learned`` 0 or missing) guards nothing either, unless
    the claim declares that chance is the expected result."""
    problems = [
        f"{m.name}: the band {_band_text(m.tolerance, m.value)} covers the metric's whole domain "
        f"{list(m.tolerance.domain)}: it cannot fail (narrow it from measured noise, or drop it)"
        for m in evidence.measurements.values() if m.tolerance.covers_domain(m.value)]
    seen = set(verdicts_seen(evidence))
    if {"REPRODUCED", "NOT_REPRODUCED"} <= seen:
        problems.append(f"verdict: across kernel paths it was {sorted(seen)}: both ways, so the "
                        "design cannot decide the claim on another CPU (more or paired seeds)")
    elif {"REPRODUCED", "NOT_REPRODUCED"} <= (plausible := set(verdicts_plausible(evidence))):
        problems.append(f"verdict: on redraws of the seeds it is {_odds_text(evidence)}: both "
                        f"{sorted(plausible)} are plausible, so the design cannot decide the "
                        "claim on another CPU (more or paired seeds, or a larger effect)")
    claim = evidence.claim
    if claim.trained and not claim.chance_expected:
        learned = evidence.measurements.get("baseline_learned")
        if learned is None:
            problems.append("a trained claim must record baseline_learned (Evidence.baseline)")
        elif learned.value != 1:
            problems.append("baseline_learned is 0: the baseline is within "
                            "5 points of chance, so this reference would be made from nets at "
                            "chance; make the task learnable at this profile, or declare "
                            "chance_expected=True on the claim if chance is the result")
    return problems


def verdicts_seen(evidence: Evidence) -> list[str]:
    """This run's verdict and those its measured noise recorded under other kernel paths."""
    noise = getattr(evidence.noise, "verdicts", None) or {}
    mine = evidence.verdict.value if evidence.verdict else None
    return sorted({v for v in (mine, *noise.values()) if v})


def verdicts_plausible(evidence: Evidence) -> list[str]:
    """Every verdict reached on at least ``odds.PLAUSIBLE`` of the seed redraws, in this run or
    under a measured kernel path, plus those seen (``verdicts_seen``)."""
    mine = evidence.odds.plausible() if evidence.odds is not None else []
    noise = evidence.noise.verdicts_plausible() if evidence.noise is not None else set()
    return sorted({*verdicts_seen(evidence), *mine, *noise, *evidence.claim.boundary})


def _odds_text(evidence: Evidence) -> str:
    parts = [f"here {evidence.odds.text()}"] if evidence.odds is not None else []
    odds = getattr(evidence.noise, "odds", None) or {}
    parts += [f"{s} {o.text()}" for s, o in odds.items()]
    return "; ".join(parts) or "(no redraws)"


def _band_text(tol: Tolerance, value: float | None) -> str:
    if value is None:
        return "(nan)"
    lo, hi = tol.band(value)
    return f"[{format_value(lo)}, {format_value(hi)}]"


def compare(evidence: Evidence, reference: Reference) -> Comparison:
    """Every metric inside its stored band, and the same verdict, or the list of what moved."""
    problems: list[str] = []
    verdict = evidence.verdict.value if evidence.verdict else None
    if verdict not in reference.verdicts_allowed:
        seen = reference.verdicts_allowed
        problems.append(f"verdict: {verdict} but reference {reference.verdict}"
                        + (f" (measured across kernel paths: {', '.join(seen)})" if len(seen) > 1 else ""))
    for name, stored in reference.metrics.items():
        m = evidence.measurements.get(name)
        if m is None:
            problems.append(f"{name}: in the reference but not measured")
            continue
        msg = stored.tolerance.violation(name, m.value, stored.value)
        if msg:
            problems.append(msg)
    for name in evidence.measurements.keys() - reference.metrics.keys():
        problems.append(f"{name}: measured but not in the reference (regenerate to add it)")
    status = "REGRESSED" if problems else "PASS"
    return Comparison(status, tuple(problems), reference.path)


def reference_record(evidence: Evidence, profile: str, env: dict[str, Any]) -> dict[str, Any]:
    """The JSON document stored for a claim's evidence."""
    return {
        "schema": SCHEMA_VERSION,
        "claim": evidence.claim.id,
        "statement": evidence.claim.statement,
        "trained": evidence.claim.trained,
        "chance_expected": evidence.claim.chance_expected,
        "profile": profile,
        "verdict": evidence.verdict.value if evidence.verdict else None,
        **({"verdicts_seen": seen} if len(seen := verdicts_seen(evidence)) > 1 else {}),
        **({"verdicts_plausible": plausible}
           if len(plausible := verdicts_plausible(evidence)) > 1 else {}),
        **({"verdict_odds": evidence.odds.to_json()} if evidence.odds is not None else {}),
        **({"verdicts_declared": dict(evidence.claim.boundary)} if evidence.claim.boundary
           else {}),
        "reason": evidence.reason,
        "metrics": {
            m.name: {
                "value": m.value,
                "abs_tol": m.tolerance.abs,
                "rel_tol": m.tolerance.rel,
                "direction": m.tolerance.direction,
                "justification": m.tolerance.why,
                "domain": None if m.tolerance.domain is None else [
                    None if math.isinf(x) else x for x in m.tolerance.domain],
                "unit": m.unit,
                "paper": m.paper,
                **({"samples": list(m.samples)} if m.samples else {}),
                **({"rule": m.tolerance.rule} if m.tolerance.rule else {}),
            }
            for m in evidence.measurements.values()
        },
        "config": evidence.config,
        "seeds": evidence.seeds,
        "environment": env,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


MODES = ("compare", "strict", "regenerate", "dry-run")


def check_reference(evidence: Evidence, root: Path, profile: str, device: str, device_class: str,
                    mode: str, run_dir: Path, environment: dict[str, Any]
                    ) -> tuple[Comparison, list[str]]:
    """Settle one claim check against its reference under ``root``: (the ``Comparison``, lines
    for the regeneration log).

    ``mode``: ``compare`` (``strict``: a missing reference fails too), ``regenerate`` (store
    this evidence, refusing one that guards nothing) or ``dry-run`` (neither). A regression or
    an unreadable reference writes this run's record to ``run_dir/<claim>.obtained.json``.
    Fails with an AssertionError whose ``comparison`` attribute is the Comparison (None when
    the reference was refused)."""
    __tracebackhide__ = True
    claim = evidence.claim
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} not in {MODES}")
    if evidence.verdict is None:
        raise _failure(f"{claim.id}: the check recorded no verdict", None)
    path = reference_path(root, profile, device_class, claim.id)
    log: list[str] = []
    if mode == "dry-run":
        comparison = Comparison("DRY_RUN")
    elif mode == "regenerate":
        refused = unstorable(evidence)
        if refused:
            raise _failure(f"{claim.id}: refusing to store a reference that guards nothing "
                           f"({path} is unchanged):\n  " + "\n  ".join(refused), None)
        changes = write_reference(path, reference_record(evidence, profile, environment))
        log = [f"{path}:"] + ([f"  {c}" for c in changes] or ["  (unchanged)"])
        comparison = Comparison("REGENERATED", path=path)
    elif not path.exists():
        cmd = regen_command(profile, device, claim.id)
        comparison = Comparison("NO_REFERENCE", (f"no reference at {path}", f"store one: {cmd}"))
    else:
        try:
            comparison = compare(evidence, load_reference(path))
        except ReferenceError as e:
            comparison = Comparison("BAD_REFERENCE", (str(e),), path)
    if comparison.status in ("REGRESSED", "BAD_REFERENCE"):
        obtained = run_dir / f"{claim.id}.obtained.json"
        obtained.parent.mkdir(parents=True, exist_ok=True)
        obtained.write_text(json.dumps(reference_record(evidence, profile, environment),
                                       indent=2) + "\n")
        raise _failure(
            f"{claim.id} {comparison.status.lower().replace('_', ' ')} against {path}:\n  "
            + "\n  ".join(comparison.problems)
            + f"\n(this run's record: {obtained}; if the change is intended: "
            + regen_command(profile, device, claim.id) + ")", comparison)
    if comparison.status == "NO_REFERENCE" and mode == "strict":
        raise _failure("; ".join(comparison.problems), comparison)
    return comparison, log


def _failure(message: str, comparison: Comparison | None) -> AssertionError:
    error = AssertionError(message)
    error.comparison = comparison  # type: ignore[attr-defined]
    return error


def write_reference(path: Path, record: dict[str, Any]) -> list[str]:
    """Atomically replace ``path`` with ``record``; return old-vs-new lines for every metric."""
    path = Path(path)
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}  # a corrupt file is being replaced on purpose
    changes = _describe_changes(old, record)
    atomic.write_json(path, record)
    return changes


def _describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = []
    if old.get("verdict") != new.get("verdict"):
        lines.append(f"verdict: {old.get('verdict', '(none)')} -> {new.get('verdict')}")

    def allowed(doc: dict[str, Any]) -> list[str]:
        return sorted({v for v in (doc.get("verdict"), *doc.get("verdicts_seen", []),
                                   *doc.get("verdicts_plausible", []),
                                   *doc.get("verdicts_declared", {})) if v})
    widened = len(allowed(old)) > 1 or len(allowed(new)) > 1  # else the verdict line says it
    if allowed(old) != allowed(new) and widened:
        lines.append(f"verdicts accepted: {allowed(old) or '(none)'} -> {allowed(new)}")
    old_m, new_m = old.get("metrics", {}), new.get("metrics", {})
    for name in list(new_m) + [n for n in old_m if n not in new_m]:
        before = old_m.get(name, {}).get("value", "(absent)") if name in old_m else "(absent)"
        after = new_m[name]["value"] if name in new_m else "(removed)"
        lines.append(f"{name}: {_show(before)} -> {_show(after)}")
        if name in old_m and name in new_m:
            for key in ("abs_tol", "rel_tol", "direction", "domain"):
                if old_m[name].get(key) != new_m[name].get(key):
                    lines.append(f"  {key}: {old_m[name].get(key)} -> {new_m[name].get(key)}")
    return lines


def _show(x: Any) -> str:
    return format_value(x) if isinstance(x, (int, float)) or x is None else str(x)

"""Tolerance bands from measured noise: what a user's machine adds, not what a rerun adds.

A rerun on one machine is bit-identical, so it says nothing about another CPU, whose kernels
round differently and move a trained number like a new seed. So a band is measured: the claims
run under several CPU kernel paths (``environment.KERNEL_SETTINGS``: native, ATen's scalar
``default`` kernels, and AVX2 for ATen and oneDNN), each with its seeds, and

``nox -s noise`` -> ``reference_results/<profile>/<device>/noise/<claim>.json``

stores every metric's value (and per-seed samples) per setting. A check declares a metric's band
as ``Measured(...)``; ``Evidence.metric`` resolves it here, by one rule:

    σ_paths = standard deviation of the metric across the kernel paths
    σ_seed  = pooled within-path standard deviation of the per-seed samples (when the metric
              is a mean over n seeds; pooled over the claim's metrics named by ``pool``),
              σ_mean = σ_seed / √n
    σ       = max(σ_paths, σ_mean)        — a new machine is a new draw of the metric
    band    = max(floor, K · √2 · σ, largest deviation of a path from the stored value)

√2 because the reference and the user's run are both draws; K = 3 (two-sided, about 0.3% per
metric for a normal draw). The justification stored with the reference states the values per
path and each term. A band that covers the metric's whole domain is refused at regeneration
(``references.unstorable``): then the design is too weak to guard anything and must change
(more or paired seeds), not the band.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness import atomic
from harness.claim import ACCURACY, Tolerance, format_value
from harness.environment import CUDA_KERNEL_SETTINGS, KERNEL_SETTINGS
from harness.odds import VerdictOdds
from harness.timing import dispatch_bound

K = 3.0
SCHEMA = 1
REFERENCE_SETTING = "native"  # references are regenerated under the native kernels (CPU and CUDA)


class NoiseError(Exception):
    """A noise file that cannot be used: corrupt or malformed."""


@dataclass(frozen=True)
class PathValue:
    value: float | None
    samples: tuple[float | None, ...] = ()


@dataclass(frozen=True)
class NoiseTable:
    """One claim's measured values per kernel path: ``metrics[name][setting]``."""

    claim: str
    metrics: dict[str, dict[str, PathValue]]
    settings: dict[str, dict[str, Any]]
    cpu: str = ""
    path: Path | None = None
    verdicts: dict[str, str] = field(default_factory=dict)  # per kernel path
    odds: dict[str, VerdictOdds] = field(default_factory=dict)  # per kernel path (harness.odds)

    def of(self, name: str) -> dict[str, PathValue]:
        return self.metrics.get(name, {})

    def without(self, setting: str) -> NoiseTable:
        """The table as if ``setting`` had not been measured (the held-out check)."""
        return dataclasses.replace(
            self, metrics={n: {s: v for s, v in per.items() if s != setting}
                           for n, per in self.metrics.items()},
            settings={s: v for s, v in self.settings.items() if s != setting},
            verdicts={s: v for s, v in self.verdicts.items() if s != setting},
            odds={s: v for s, v in self.odds.items() if s != setting})

    def verdicts_plausible(self) -> set[str]:
        """Every verdict a measured path gave or made plausible on its seed redraws."""
        return {*self.verdicts.values(), *(v for o in self.odds.values() for v in o.plausible())}


def noise_path(root: Path, profile: str, device_class: str, claim_id: str) -> Path:
    return Path(root) / profile / device_class / "noise" / f"{claim_id}.json"


def load_noise(path: Path) -> NoiseTable | None:
    """The claim's noise table, None when none was measured; a bad file is an error naming it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        metrics = {
            name: {s: PathValue(_num(v["value"]), tuple(_num(x) for x in v.get("samples", ())))
                   for s, v in per.items()}
            for name, per in raw["metrics"].items()}
        if raw.get("schema") != SCHEMA:
            raise NoiseError(f"noise file {path} has schema {raw.get('schema')!r}, not {SCHEMA}")
        return NoiseTable(raw["claim"], metrics, raw.get("settings", {}), raw.get("cpu", ""), path,
                          {s: v for s, v in raw.get("verdicts", {}).items() if v},
                          {s: VerdictOdds.from_json(o)
                           for s, o in raw.get("verdict_odds", {}).items() if o})
    except json.JSONDecodeError as e:
        raise NoiseError(f"corrupt noise file {path}: {e}; re-measure it with nox -s noise") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise NoiseError(f"malformed noise file {path}: {type(e).__name__}: {e}") from None


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclass(frozen=True)
class Measured:
    """A band spec resolved from the claim's measured noise (see the module docstring).

    ``what`` says what the metric is; ``floor`` (absolute) and ``floor_rel`` are the least band,
    for noise the measurement cannot see (e.g. load on a shared CPU for timings); ``pool``: the
    seed samples of every metric of the claim whose name contains it are pooled for σ_seed."""

    what: str
    domain: tuple[float, float] | None
    floor: float = 0.0
    floor_rel: float = 0.0
    pool: str | None = None
    direction: str = "two-sided"
    k: float = K

    def resolve(self, name: str, noise: NoiseTable | None, value: float | None = None) -> Tolerance:
        """The band around ``value`` (the number about to be stored; by default the native
        path's): it covers every measured path's value, even for a timing that moved since."""
        per = noise.of(name) if noise is not None else {}
        if not per:
            return Tolerance(
                why=f"{self.what}. NOT MEASURED across kernel paths (no noise file for this "
                    f"profile and device; run nox -s noise): the floor only",
                abs=self.floor, rel=self.floor_rel, direction=self.direction, domain=self.domain,
                rule=self.spec())
        band = band_from(per, self._pooled_seed_sd(name, noise), self.k, value)
        ref = value if value is not None else per.get(REFERENCE_SETTING,
                                                      next(iter(per.values()))).value
        floor = max(self.floor, self.floor_rel * abs(ref or 0.0))
        half = max(floor, band.half)
        why = (f"{self.what}. Measured{f' on {noise.cpu}' if noise.cpu else ''} under "
               f"{len(per)} kernel paths: {band.values_text}. σ across paths "
               f"{format_value(band.sd_paths)}" + (
                   f"; seed σ {format_value(band.sd_seed)} "
                   f"(pooled{f' over *{self.pool}*' if self.pool else ''})"
                   f" → σ of a {band.n}-seed mean {format_value(band.sd_mean)}" if band.n > 1 else "")
               + f". Rule: max(floor {format_value(floor)}, {self.k:g}·√2·σ = {format_value(band.k_term)}, "
                 f"largest deviation {format_value(band.deviation)}) = {format_value(half)}")
        return Tolerance(why=why, abs=half, direction=self.direction, domain=self.domain,
                         rule=self.spec())

    def spec(self) -> dict[str, Any]:
        """The fields that rebuild this spec (``Measured.from_spec``), for the reference."""
        d = dataclasses.asdict(self)
        d["domain"] = None if self.domain is None else [
            None if math.isinf(x) else x for x in self.domain]
        return d

    @classmethod
    def from_spec(cls, raw: dict[str, Any]) -> Measured:
        domain = raw.get("domain")
        if domain is not None:
            domain = (-math.inf if domain[0] is None else domain[0],
                      math.inf if domain[1] is None else domain[1])
        return cls(**{**raw, "domain": domain})

    def _pooled_seed_sd(self, name: str, noise: NoiseTable | None) -> tuple[float, int]:
        """(pooled within-path seed σ, samples per mean) of ``name`` or of its pool."""
        names = [name] if self.pool is None or noise is None else \
            [m for m in noise.metrics if self.pool in m] or [name]
        groups = [[x for x in pv.samples if x is not None]
                  for m in names for pv in (noise.of(m).values() if noise else ())]
        n = max((len(pv.samples) for pv in (noise.of(name).values() if noise else ())), default=0)
        return pooled_sd(groups), n


def mean_accuracy(what: str) -> Measured:
    """The band spec of a mean test accuracy over seeds, a diverged run counted at chance:
    the one every trained family stores (floor one point)."""
    return Measured(what=f"{what}: mean test accuracy over seeds (diverged = chance)",
                    domain=ACCURACY, floor=0.01)


def record_min_doubling(evidence, doubling: float, what: str, device: str, cpu_why: str) -> bool:
    """Record a timing's smallest t(2B)/t(B) as ``min_batch_doubling``: on CUDA guarded by a
    band from measured noise (floor 0.2), on the CPU only reported (``what`` + ``cpu_why``).
    The one rule every timed claim applies; returns whether the timing was dispatch-bound."""
    if device == "cuda":
        evidence.metric("min_batch_doubling", doubling, Measured(
            what=what + " (GPU timing)", domain=(0, math.inf), floor=0.2))
    else:
        evidence.observe("min_batch_doubling", doubling, f"{what}; {cpu_why}")
    return dispatch_bound(doubling)


@dataclass(frozen=True)
class Band:
    half: float
    sd_paths: float
    sd_seed: float
    sd_mean: float
    n: int
    k_term: float
    deviation: float
    values_text: str


def band_from(per: dict[str, PathValue], seed: tuple[float, int], k: float = K,
              reference: float | None = None) -> Band:
    """The rule of the module docstring for one metric's values per kernel path, around
    ``reference`` (default: the native path's value)."""
    values = {s: pv.value for s, pv in per.items()}
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    sd_paths = statistics.stdev(finite) if len(finite) > 1 else 0.0
    sd_seed, n = seed
    sd_mean = sd_seed / math.sqrt(n) if n > 1 and math.isfinite(sd_seed) else 0.0
    sigma = max(sd_paths, sd_mean)
    ref = reference if reference is not None and math.isfinite(reference) else \
        values.get(REFERENCE_SETTING)
    ref = ref if ref is not None else (finite[0] if finite else None)
    deviation = max((abs(v - ref) for v in finite), default=0.0) if ref is not None else 0.0
    k_term = k * math.sqrt(2) * sigma
    text = ", ".join(
        f"{s} {format_value(pv.value)}" + (f" (seeds {', '.join(format_value(x) for x in pv.samples)})"
                                   if pv.samples else "")
        for s, pv in per.items())
    return Band(max(k_term, deviation), sd_paths, sd_seed, sd_mean, n, k_term, deviation, text)


def pooled_sd(groups: Sequence[Sequence[float]]) -> float:
    """Pooled within-group sample standard deviation (each group's own mean removed)."""
    ss, df = 0.0, 0
    for g in groups:
        if len(g) > 1:
            m = sum(g) / len(g)
            ss += sum((x - m) ** 2 for x in g)
            df += len(g) - 1
    return math.sqrt(ss / df) if df else 0.0


# ------------------------------------------------------------------ the held-out check


def held_out_problems(metrics: dict[str, Any], verdict_noise: NoiseTable, held_out: str,
                      declared: Sequence[str] = ()) -> list[str]:
    """What fails when ``held_out``'s run is judged against a reference made without it.

    ``metrics``: a stored reference's metrics (``references.StoredMetric`` by name). Each band
    with a stored rule (``Measured.spec``) is rebuilt from the other paths, around the native
    path's value (or the first other path's when native is the one held out); a fixed band is
    reused around that value. The verdict must be among those the other paths gave or made
    plausible on their seed redraws (``harness.odds``), or the claim's declared ``boundary``
    verdicts (``declared``, each stored with why). This is the rule's test on a machine
    nobody measured: every committed reference must pass it for every path it was measured on.
    """
    rest = verdict_noise.without(held_out)
    problems = []
    for name, stored in metrics.items():
        per, others = verdict_noise.of(name), rest.of(name)
        if held_out not in per or not others:
            continue
        center = others.get(REFERENCE_SETTING, next(iter(others.values()))).value
        rule = stored.tolerance.rule
        tol = Measured.from_spec(rule).resolve(name, rest, center) if rule else stored.tolerance
        msg = tol.violation(name, per[held_out].value, center)
        if msg:
            problems.append(f"{held_out}: {msg}")
    verdict = verdict_noise.verdicts.get(held_out)
    allowed = rest.verdicts_plausible() | set(declared)
    if verdict and allowed and verdict not in allowed:
        odds = "; ".join(f"{s} {o.text()}" for s, o in rest.odds.items()) or "no redraws stored"
        problems.append(f"{held_out}: verdict {verdict}, but the other paths accept only "
                        f"{sorted(allowed)} ({odds})")
    return problems


# ------------------------------------------------------------------ collecting a measurement


def collect(run_dirs: Sequence[Path], root: Path, profile: str, device_class: str) -> list[str]:
    """Merge the claims of ``run_dirs`` (one ``nox -s noise`` run per kernel path, each a
    results folder with ``claims.json``) into the claims' noise files; returns change lines.
    A ``cuda-*`` device class takes the CUDA settings (``CUDA_KERNEL_SETTINGS``, measured by
    ``nox -s calibrate``), any other the CPU kernel paths."""
    known = CUDA_KERNEL_SETTINGS if device_class.startswith("cuda") else KERNEL_SETTINGS
    tables: dict[str, dict[str, Any]] = {}
    for run_dir in run_dirs:
        doc = json.loads((Path(run_dir) / "claims.json").read_text())
        env = doc.get("environment", {})
        setting = env.get("kernel_setting", "custom")
        if setting not in known:
            raise NoiseError(f"{run_dir}: ran under an unnamed kernel setting {env.get('kernel_path')} "
                             f"(known on {device_class}: {', '.join(known)})")
        for row in doc["claims"]:
            if not row.get("metrics"):
                continue
            t = tables.setdefault(row["claim"], {
                "schema": SCHEMA, "claim": row["claim"], "profile": profile,
                "device_class": device_class, "cpu": env.get("cpu", ""), "settings": {},
                "verdicts": {}, "verdict_odds": {}, "metrics": {}})
            t["settings"][setting] = env.get("kernel_path", {})
            t["verdicts"][setting] = row.get("verdict")
            t["verdict_odds"][setting] = row.get("verdict_odds")
            samples = row.get("samples", {})
            for name, value in row["metrics"].items():
                entry: dict[str, Any] = {"value": value}
                if samples.get(name):
                    entry["samples"] = samples[name]
                t["metrics"].setdefault(name, {})[setting] = entry
    lines = []
    for claim, table in sorted(tables.items()):
        table["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        path = noise_path(root, profile, device_class, claim)
        lines.append(f"{path}: settings {', '.join(table['settings'])}")
        atomic.write_json(path, table, indent=1)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from harness.references import DEFAULT_ROOT

    ap = argparse.ArgumentParser(prog="python -m harness.bands",
                                 description="store measured noise from results folders")
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--device-class", default="cpu")
    ap.add_argument("--references-dir", type=Path, default=DEFAULT_ROOT)
    args = ap.parse_args(argv)
    for line in collect(args.run_dirs, args.references_dir, args.profile, args.device_class):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""References for a new device class in one command: ``nox -s calibrate``.

A band is measured noise (``harness.bands``): the claims run under each kernel setting of the
device (``environment.CUDA_KERNEL_SETTINGS`` on a GPU: native TF32, no TF32, deterministic;
``KERNEL_SETTINGS`` on a CPU), the values are stored as the claims' noise, and the references
are regenerated under the native setting, taking their bands from that noise. On a first GPU
run::

    python -m harness.calibrate --profile full --device cuda [--claim GLOB ...] [--yes]

1. prints the estimated cost first (the stored estimate of the full profile,
   ``harness.costs.load_estimate``, × the number of settings) and the device class, and asks
   before starting (``--yes``, or a stdin that is not a terminal, does not ask);
2. runs ``pytest claims`` once per setting, each with that setting's environment, against an
   empty reference store (there is nothing to compare yet, so exit status 1 is accepted),
   results in ``<results>/calibrate/<setting>/``;
3. stores the noise (``bands.collect``) in ``<references>/<profile>/<device class>/noise/``;
4. regenerates the references (``pytest claims --regen-references``, as ``nox -s regen``);
5. prints what it wrote.

A stopped calibration resumes: finished training runs are in the training cache (each CUDA
setting has its own key, so no setting reuses another's record), and a setting whose run
finished is recorded in ``<results>/calibrate/state-<profile>-<device class>.json`` and not
run again while the code and the arguments are the same (``--fresh`` measures everything
again). ``--has-references`` only answers whether references exist for the device class
(exit status 0 or 1), for CI.

Arguments it does not know go to every pytest run (e.g. ``--data-root``, ``--offline``).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.environment import REPO_ROOT, setting_environment, settings_for

STATE_SCHEMA = 1


# ------------------------------------------------------------------ what exists, what it costs


def reference_dir(root: Path, profile: str, device_class: str) -> Path:
    return Path(root) / profile / device_class


def has_references(root: Path, profile: str, device_class: str) -> bool:
    """Whether any claim's reference is stored for this profile and device class (the noise
    beside them does not count)."""
    d = reference_dir(root, profile, device_class)
    return d.is_dir() and any(p.is_file() for p in d.glob("*.json"))


def load_estimate() -> dict[str, Any] | None:
    """The stored estimate of the full profile (``harness.costs.load_estimate``), None when
    there is none (or harness.costs cannot give one)."""
    try:
        from harness import costs

        return costs.load_estimate()
    except Exception:  # noqa: BLE001 - a planning figure: without one, say so
        return None


def estimated_minutes(estimate: dict[str, Any] | None, claims: Sequence[str] = ()) -> float | None:
    """Minutes of one pass of the full profile: in total, or the families the claim globs can
    reach (a family is a claim ID's prefix: ``agc.rule`` -> ``agc``)."""
    if not estimate:
        return None
    if not claims:
        return float(estimate["total_minutes"])
    families = estimate.get("families") or {}
    heads = [c.split(".", 1)[0] for c in claims]
    picked = [float(m) for f, m in families.items() if any(fnmatch.fnmatch(f, h) for h in heads)]
    return sum(picked) if picked else float(estimate["total_minutes"])


def _setting_words(device: str) -> str:
    names = list(settings_for(device))
    kind = "CUDA kernel settings" if device == "cuda" else "CPU kernel paths"
    return f"{len(names)} {kind} ({', '.join(names)})"


def calibrate_command(profile: str, device: str) -> str:
    """``nox -s calibrate`` with the arguments it would not choose itself."""
    if profile == "full" and device == "cuda":
        return "nox -s calibrate"
    return f"nox -s calibrate -- --profile {profile} --device {device}"


def cost_text(profile: str, device: str, claims: Sequence[str] = (),
              estimate: dict[str, Any] | None = None) -> tuple[float | None, str]:
    """(total minutes or None, the sentence that says it)."""
    n = len(settings_for(device))
    words = _setting_words(device)
    minutes = estimated_minutes(estimate, claims) if profile == "full" else None
    if minutes is None:
        why = ("no stored estimate of the full profile (harness/costs.py)" if profile == "full"
               else "the stored estimate covers the full profile only")
        return None, f"{words} × one {profile} profile run each; not estimated: {why}"
    unit = "GPU-minutes" if device == "cuda" else "minutes"
    scope = "the full profile's" if not claims else f"the full profile's ({', '.join(claims)})"
    total = minutes * n
    return total, f"about {_minutes(total)} {unit}: {words} × {scope} estimated {_minutes(minutes)} min"


def _minutes(m: float) -> str:
    return f"{m:.0f}" if m >= 10 else f"{m:.1f}".rstrip("0").rstrip(".")


def no_references_message(profile: str, device: str, device_class: str) -> str:
    """What a claims run says when nothing is stored for its device class."""
    _, cost = cost_text(profile, device, estimate=load_estimate())
    return (f"no references for {device_class}: every row is NO_REFERENCE and gates nothing. "
            f"Make them: {calibrate_command(profile, device)} ({cost})")


# ------------------------------------------------------------------ resuming


def _code_hash() -> str:
    """A hash of the harness's and the claims' sources: measurements made by other code are
    not resumed."""
    h = hashlib.sha256()
    for folder in ("harness", "claims"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(REPO_ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _state_path(results: Path, profile: str, device_class: str) -> Path:
    return results / "calibrate" / f"state-{profile}-{device_class}.json"


def _load_state(path: Path, signature: dict[str, Any]) -> dict[str, Any]:
    fresh = {"schema": STATE_SCHEMA, "signature": signature, "finished": {}, "wrote": None}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return fresh
    if state.get("schema") != STATE_SCHEMA or state.get("signature") != signature:
        if path.exists():
            print(f"calibrate: the code or the arguments changed since {path} was written: "
                  "measuring every setting again (finished training runs are still cached)")
        return fresh
    return state


def _save_state(path: Path, state: dict[str, Any]) -> None:
    from harness import atomic

    atomic.write_json(path, state, indent=1)


def run_folders(folder: Path, profile: str, device_class: str) -> list[Path]:
    """The finished run folders (with ``claims.json``) of this profile and device class in
    ``folder``, oldest first (a run folder's name starts with its time stamp)."""
    if not folder.is_dir():
        return []
    suffix = f"-{profile}-{device_class}"
    runs = [p for p in folder.iterdir()
            if p.is_dir() and p.name.endswith(suffix) and (p / "claims.json").is_file()]
    return sorted(runs, key=lambda p: (p.name, p.stat().st_mtime_ns))


# ------------------------------------------------------------------ the runs


def _pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "claims", *args]


def run(cmd: list[str], env: dict[str, str]) -> int:
    """One pytest run in the repository, its output on ours (a seam for tests)."""
    sys.stdout.flush()
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env).returncode


def _selection(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    return [*(a for c in args.claim for a in ("--claim", c)), *extra]


def _measure(args: argparse.Namespace, extra: Sequence[str], name: str, dclass: str,
             empty: Path) -> Path:
    out = args.results_dir / "calibrate" / name
    before = set(run_folders(out, args.profile, dclass))
    env = setting_environment(args.device, name)
    shown = {k: v for k, v in env.items() if os.environ.get(k) != v}
    env["HARNESS_CALIBRATING"] = "1"  # an empty store on purpose: no "no references" advice
    print(f"\ncalibrate: setting {name} ({shown or 'as the machine resolves it'})", flush=True)
    rc = run(_pytest("-q", "-p", "no:cacheprovider", "--profile", args.profile,
                     "--device", args.device, "--references-dir", str(empty),
                     "--results-dir", str(out), *_selection(args, extra)), env)
    if rc not in (0, 1):  # 1: claims failed or regressed, which is fine while measuring
        raise CalibrationError(f"pytest exited {rc} under setting {name} (see above); fix it and "
                               f"run the command again: what finished is kept")
    new = [p for p in run_folders(out, args.profile, dclass) if p not in before]
    if not new:
        raise CalibrationError(f"the run under setting {name} left no claims.json in {out}")
    run_dir = new[-1]
    setting = json.loads((run_dir / "claims.json").read_text()).get("environment", {}).get(
        "kernel_setting")
    if setting != name:
        raise CalibrationError(f"{run_dir} ran under kernel setting {setting!r}, not {name!r}: "
                               "is a kernel variable forced somewhere (sitecustomize, pytest.ini)?")
    return run_dir


class CalibrationError(Exception):
    pass


def _written(root: Path, before: dict[Path, int]) -> list[Path]:
    return [p for p in sorted(root.rglob("*.json")) if before.get(p) != p.stat().st_mtime_ns]


def _stamps(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*.json")} if root.is_dir() else {}


def calibrate(args: argparse.Namespace, extra: Sequence[str], dclass: str) -> int:
    """Steps 2-5 of the module docstring; returns the exit status."""
    import tempfile

    from harness import bands

    signature = {"profile": args.profile, "device": args.device, "device_class": dclass,
                 "claims": sorted(args.claim), "extra": list(extra),
                 "references_dir": str(args.references_dir), "code": _code_hash()}
    state_file = _state_path(args.results_dir, args.profile, dclass)
    state = {"schema": STATE_SCHEMA, "signature": signature, "finished": {}, "wrote": None} \
        if args.fresh else _load_state(state_file, signature)
    target = reference_dir(args.references_dir, args.profile, dclass)
    wrote = state.get("wrote")
    if wrote is not None and all(Path(p).is_file() for p in wrote):
        print(f"calibrate: {args.profile} on {dclass} is calibrated already ({state_file}); "
              f"nothing to do (--fresh measures again). It wrote:")
        for p in wrote:
            print(f"  {p}")
        return 0

    empty = Path(tempfile.mkdtemp(prefix="calibrate-references-"))  # measure, compare nothing
    runs: list[Path] = []
    for name in settings_for(args.device):
        done = state["finished"].get(name)
        if done and (Path(done) / "claims.json").is_file():
            print(f"calibrate: setting {name} measured already: {done} (resumed)")
            runs.append(Path(done))
            continue
        run_dir = _measure(args, extra, name, dclass, empty)
        state["finished"][name] = str(run_dir)
        _save_state(state_file, state)
        runs.append(run_dir)

    before = _stamps(target)
    print(f"\ncalibrate: the noise across {len(runs)} settings -> {target / 'noise'}")
    for line in bands.collect(runs, args.references_dir, args.profile, dclass):
        print(f"  {line}")

    print(f"\ncalibrate: references under setting {bands.REFERENCE_SETTING}, bands from that noise",
          flush=True)
    rc = run(_pytest("-rfEs", "-p", "no:cacheprovider", "--regen-references",
                     "--profile", args.profile, "--device", args.device,
                     "--references-dir", str(args.references_dir),
                     "--results-dir", str(args.results_dir / "calibrate" / "regen"),
                     *_selection(args, extra)),
             setting_environment(args.device, bands.REFERENCE_SETTING))
    written = _written(target, before)
    print(f"\ncalibrate: wrote {len(written)} files under {target}:")
    for p in written:
        print(f"  {p}")
    if rc != 0:
        print(f"calibrate: the reference run exited {rc}: a claim above was refused or failed, "
              "and its reference is not stored (the message says why). The noise is stored; "
              "fix the claim and run the command again.")
        return rc
    state["wrote"] = [str(p) for p in written] or [str(p) for p in sorted(target.glob("*.json"))]
    _save_state(state_file, state)
    claims = "nox -s claims" + ("" if (args.profile, args.device) == ("full", "cuda") else
                                f" -- --profile {args.profile} --device {args.device}")
    claims += " --strict-references" if " -- " in claims else " -- --strict-references"
    print(f"calibrate: done. Commit {target} with a note of the machine (GPU, driver); from now "
          f"on `{claims}` gates {dclass}.")
    return 0


# ------------------------------------------------------------------ the command


def parser() -> argparse.ArgumentParser:
    from harness.references import DEFAULT_ROOT

    ap = argparse.ArgumentParser(
        prog="python -m harness.calibrate",
        description="measure the claims under every kernel setting of the device, store the "
                    "noise and regenerate the references from it (unknown arguments go to "
                    "pytest)")
    ap.add_argument("--profile", choices=["smoke", "full"], required=True)
    ap.add_argument("--device", choices=["cpu", "cuda"], required=True)
    ap.add_argument("--claim", action="append", default=[], metavar="GLOB",
                    help="only the claims whose ID matches (repeatable)")
    ap.add_argument("--references-dir", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    ap.add_argument("--yes", "-y", action="store_true", help="do not ask before starting")
    ap.add_argument("--fresh", action="store_true",
                    help="measure every setting again, even those a stopped run finished")
    ap.add_argument("--has-references", action="store_true",
                    help="only say whether references exist for the device class: exit 0 "
                         "if so, 1 if not")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parser().parse_known_args(argv)
    args.references_dir = args.references_dir.resolve()
    args.results_dir = args.results_dir.resolve()
    try:
        from harness.profiles import device_class

        dclass = device_class(args.device)
    except Exception as e:  # noqa: BLE001 - e.g. no CUDA device: say which and stop
        print(f"calibrate: cannot name the {args.device} device class: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 2
    if args.has_references:
        found = has_references(args.references_dir, args.profile, dclass)
        where = reference_dir(args.references_dir, args.profile, dclass)
        print(f"{dclass}: {'references in' if found else 'no references at'} {where}")
        if not found:
            print(f"make them: {calibrate_command(args.profile, args.device)}")
        return 0 if found else 1

    total, cost = cost_text(args.profile, args.device, args.claim, load_estimate())
    print(f"calibrate: estimated cost {cost}, plus one reference run (training cached); "
          f"device class {dclass}", flush=True)
    if not args.yes and sys.stdin.isatty():
        shown = f"estimated {_minutes(total)} minutes" if total is not None else "cost not estimated"
        if input(f"{shown}, continue? [y/N] ").strip().lower() not in ("y", "yes"):
            print("calibrate: stopped before starting")
            return 1
    try:
        return calibrate(args, extra, dclass)
    except CalibrationError as e:
        print(f"calibrate: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

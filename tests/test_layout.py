"""The layout's import rules: no cycle inside ``harness/`` (lazy imports included, since they
only hide one), and the one-way order claims → studies → methods → models → complexity, with
the runs (cache, jobs, executors) above the training loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "harness"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """The harness modules ``path`` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            names = {a.name for a in node.names} - {s.rsplit(".", 1)[1] for s in subs}
            found |= subs
            if names and node.module in MODULES:
                found.add(node.module)  # a name from a package or module, not a submodule
    return found - {module_name(path)}


GRAPH = {m: imports_of(p) for m, p in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycle_inside_harness():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_complexity_depends_on_torch_alone():
    assert GRAPH["harness.complexity"] == set()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("harness.models")))
def test_models_import_only_models_and_complexity(module):
    allowed = {m for m in MODULES if m.startswith("harness.models")} | {"harness.complexity"}
    assert GRAPH[module] <= allowed, f"{module} reaches up for {GRAPH[module] - allowed}"


def test_the_loop_never_imports_the_runs():
    """``harness.runs`` (cache, jobs, executors) sits on the loop: ``train`` imports none of it,
    not even through another module, and the runs do import it."""
    runs = {m for m in MODULES if m == "harness.runs" or m.startswith("harness.runs.")}
    assert {"harness.runs", "harness.runs.cache", "harness.runs.jobs",
            "harness.runs.executors"} <= runs
    assert not reaches("harness.train") & runs, "the loop reaches up for the runs"
    assert "harness.train" in GRAPH["harness.runs.jobs"] | GRAPH["harness.runs.cache"]


def test_methods_do_not_import_their_studies():
    for method, study in (("harness.scaling.strategies", "harness.scaling.study"),
                          ("harness.agc.rule", "harness.agc.study")):
        assert study not in GRAPH[method]


def reaches(module: str) -> set[str]:
    """Every harness module ``module`` imports, directly or through others (lazily included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for n in GRAPH.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


@pytest.mark.parametrize("module", ["harness.claim", "harness.evidence"])
def test_the_claim_and_evidence_types_sit_below_every_family(module):
    """What a claim and its evidence are imports no costs, training or runs, even lazily: the
    dry run's pricing is ``harness.dry_run``'s."""
    above = {"harness.costs", "harness.train", "harness.dry_run"}
    found = {m for m in reaches(module) if m in above or m.startswith("harness.runs")
             or m.endswith("executors")}
    assert not found, f"{module} reaches up for {sorted(found)}"


# Each family: its method(s), its study, its verdicts. The method is usable on its own model
# (no study, no verdicts); the verdicts are pure rules over measured numbers (neither the study
# nor the method, nor anything that trains or times); nothing in harness/ reaches a claim file.
FAMILIES = {
    "scaling": ["harness.scaling.strategies"],
    "agc": ["harness.agc.rule", "harness.agc.known_bad"],
    "sparse": ["harness.sparse.masks", "harness.sparse.known_bad"],
    "decompose": ["harness.decompose.tucker", "harness.decompose.deploy"],
    "supernet": ["harness.supernet.sandwich", "harness.supernet.known_bad"],
}
# What a pure rule may read: seed statistics and verdict odds.
VERDICT_MAY_IMPORT = {"harness.stats", "harness.odds"}


def test_every_family_has_a_method_a_study_and_verdicts():
    for family, methods in FAMILIES.items():
        assert {f"harness.{family}.study", f"harness.{family}.verdicts", *methods} <= MODULES.keys()
    found = {m.split(".")[1] for m in MODULES if m.endswith(".verdicts")}
    assert found == FAMILIES.keys(), "a new family: add it to FAMILIES"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_familys_method_reaches_neither_its_study_nor_its_verdicts(family):
    for method in FAMILIES[family]:
        up = {f"harness.{family}.study", f"harness.{family}.verdicts"} & reaches(method)
        assert not up, f"{method} reaches up for {sorted(up)}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_familys_verdicts_are_pure_rules(family):
    verdicts = f"harness.{family}.verdicts"
    assert reaches(verdicts) <= VERDICT_MAY_IMPORT, (
        f"{verdicts} reaches {sorted(reaches(verdicts) - VERDICT_MAY_IMPORT)}")


def test_the_layout_rules_catch_a_wrong_way_import(monkeypatch):
    monkeypatch.setitem(GRAPH, "harness.agc.rule", GRAPH["harness.agc.rule"] | {"harness.agc.study"})
    with pytest.raises(AssertionError, match="reaches up"):
        test_a_familys_method_reaches_neither_its_study_nor_its_verdicts("agc")
    monkeypatch.setitem(GRAPH, "harness.sparse.verdicts", {"harness.stats", "harness.train"})
    with pytest.raises(AssertionError, match="harness.train"):
        test_a_familys_verdicts_are_pure_rules("sparse")

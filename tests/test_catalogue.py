"""One source for each claim: its ``Claim`` in ``claims/``. The catalogue (claims/README.md), the
stored references and pytest's selection must agree with it.

Claims are read from the claim files' syntax (``ast``), not imported, so this runs in a second
and says which file and line disagree. The statement in claims/README.md's family tables is the
``Claim.statement`` word for word (the report and the references copy it from there too); a
claim file is named by its claims' ID prefix, and each test by its claim's ID.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "claims"
CATALOGUE = CLAIMS / "README.md"
REFERENCES = ROOT / "reference_results"


@dataclass(frozen=True)
class DeclaredClaim:
    id: str
    statement: str
    file: Path
    test: str  # the name of the test marked with it


def _keyword(call: ast.Call, name: str) -> str | None:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
            return kw.value.value
    return None


def declared_claims(files: list[Path] | None = None) -> list[DeclaredClaim]:
    """Every ``NAME = Claim(id=..., statement=...)`` in the claim files, with the test that
    ``@pytest.mark.claim(NAME)`` marks."""
    out = []
    for path in files or sorted(CLAIMS.glob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        by_name: dict[str, tuple[str, str]] = {}
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", None) == "Claim"):
                cid, statement = _keyword(node.value, "id"), _keyword(node.value, "statement")
                assert cid and statement, f"{path}:{node.lineno}: a Claim needs literal id and statement"
                by_name[node.targets[0].id] = (cid, statement)
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for dec in node.decorator_list:
                if (isinstance(dec, ast.Call) and getattr(dec.func, "attr", None) == "claim"
                        and isinstance(dec.args[0], ast.Name)):
                    cid, statement = by_name.pop(dec.args[0].id)
                    out.append(DeclaredClaim(cid, statement, path, node.name))
        assert not by_name, f"{path}: claims without a test: {sorted(by_name)}"
    return out


def catalogue_rows() -> dict[str, list[list[str]]]:
    """claims/README.md's table rows that start with a claim ID, by ID (family tables first,
    then the index): the cells of each, in order."""
    rows: dict[str, list[list[str]]] = {}
    for line in CATALOGUE.read_text().splitlines():
        if line.startswith("| `") and "` |" in line:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if re.fullmatch(r"`[a-z]+\.\w+`", cells[0]):  # a claim ID, not a verdict or a bug
                rows.setdefault(cells[0].strip("`"), []).append(cells)
    return rows


def catalogue_statements() -> dict[str, list[str]]:
    """Each claim's statement in claims/README.md, by ID: the third cell of a family table's
    row (``| ID | scope | statement | notes |``), or the ``- *Statement.*`` item under a
    ``**`ID`**`` heading (its wrapped lines joined)."""
    found: dict[str, list[str]] = {}
    for cid, rows in catalogue_rows().items():
        found.setdefault(cid, []).extend(cells[2] for cells in rows if len(cells) == 4
                                         and cells[1] not in FAMILY_NAMES)
    lines = CATALOGUE.read_text().splitlines()
    for i, line in enumerate(lines):
        heading = re.match(r"\*\*`([\w.]+)`\*\*", line)
        if not heading:
            continue
        for j in range(i + 1, len(lines)):
            if lines[j].startswith("- *Statement.* "):
                text = [lines[j].removeprefix("- *Statement.* ")]
                k = j + 1
                while k < len(lines) and lines[k].startswith("  "):
                    text.append(lines[k].strip())
                    k += 1
                found.setdefault(heading.group(1), []).append(" ".join(text))
                break
            if not lines[j].strip() or lines[j].startswith("**"):
                break
    return found


# The index table's second column (``| ID | family | scope | checked by |``).
FAMILY_NAMES = {"scaling", "AGC", "ITOP", "decomposition", "deployment", "NASViT"}

DECLARED = declared_claims()


def test_the_claim_files_declare_the_28_claims_once_each():
    ids = [c.id for c in DECLARED]
    assert len(ids) == len(set(ids)) == 28


@pytest.mark.parametrize("claim", DECLARED, ids=lambda c: c.id)
def test_a_claim_lives_in_the_file_and_test_its_id_names(claim):
    family, name = claim.id.split(".", 1)
    assert claim.file.name == f"test_{family}.py"
    assert claim.test == f"test_{name}"


@pytest.mark.parametrize("claim", DECLARED, ids=lambda c: c.id)
def test_the_catalogue_states_each_claim_as_its_claim_file_does(claim):
    statements = catalogue_statements().get(claim.id)
    assert statements == [claim.statement], (
        f"claims/README.md states {claim.id} as {statements}, not as {claim.file.name} does; "
        f"write it there as:\n{claim.statement}")
    index = [cells for cells in catalogue_rows()[claim.id] if cells[1] in FAMILY_NAMES]
    assert len(index) == 1 and index[0][-1] == f"`claims/{claim.file.name}`"


def test_the_catalogue_names_no_claim_that_no_file_declares():
    assert set(catalogue_rows()) == {c.id for c in DECLARED}


def test_every_stored_reference_states_its_claim_as_the_claim_file_does():
    statements = {c.id: c.statement for c in DECLARED}
    checked = 0
    for path in REFERENCES.glob("*/*/*.json"):
        record = json.loads(path.read_text())
        assert record["claim"] in statements, f"{path}: no claim file declares {record['claim']}"
        assert path.stem == record["claim"], f"{path}: holds {record['claim']}"
        assert record["statement"] == statements[record["claim"]], (
            f"{path} states {record['claim']} differently from its claim file; regenerate it")
        checked += 1
    assert checked >= 28


def test_the_declared_claims_reader_sees_a_claim_and_its_test(tmp_path):
    f = tmp_path / "test_demo.py"
    f.write_text('X = Claim(id="demo.one", statement="It holds.", source="s")\n\n'
                 "@pytest.mark.claim(X)\ndef test_one(evidence):\n    pass\n")
    assert declared_claims([f]) == [DeclaredClaim("demo.one", "It holds.", f, "test_one")]
    f.write_text('X = Claim(id="demo.one", statement="It holds.", source="s")\n')
    with pytest.raises(AssertionError, match="without a test"):
        declared_claims([f])


# ------------------------------------------------------------------- -k by claim ID

class _Selected:
    def __init__(self) -> None:
        self.names: list[str] = []

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.names = [item.name for item in session.items]


def _selected(expression: str) -> set[str]:
    seen = _Selected()
    code = pytest.main([str(CLAIMS), "--collect-only", "-q", "-p", "no:cacheprovider",
                        "-k", expression, f"--rootdir={ROOT}"], plugins=[seen])
    assert code in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    return set(seen.names)


@pytest.mark.slow
def test_k_selects_a_family_or_one_claim_by_its_id():
    by_family: dict[str, set[str]] = {}
    for c in DECLARED:
        by_family.setdefault(c.id.split(".")[0], set()).add(c.test)
    for family, tests in by_family.items():
        assert _selected(family) == tests, family
    assert _selected("agc.rule") == {"test_rule"}
    assert _selected("itop.reaches_dense or nasvit.projection_rule") == {
        "test_reaches_dense", "test_projection_rule"}

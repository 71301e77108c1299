"""The guide's "Resume and DDP guarantees" table has a row for every callback, no empty cell,
and every test it names exists (read from the source, without importing or running it)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import lightning as L

import lightning_losses.callbacks as callbacks
from lightning_losses.callbacks import TrainSamplerOwner

ROOT = Path(__file__).resolve().parents[2]
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[([\w-]+)\])?`")


def _table() -> list[list[str]]:
    text = (ROOT / "docs" / "guide.md").read_text()
    section = text.split("## Resume and DDP guarantees", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "callback",
        "resume",
        "mid-epoch resume",
        "DDP",
    ]
    return [[c.strip() for c in row.strip("|").split("|")] for row in body if "---" not in row]


def _parametrised_ids(tree: ast.Module, name: str) -> set[str] | None:
    """The ``ids=`` (or the string values / dict keys) of the test's parametrize, if any."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "attr", "") == "parametrize":
                    ids = next((k.value for k in deco.keywords if k.arg == "ids"), None)
                    source = ids if ids is not None else deco.args[1]
                    return _strings(tree, source)
            return None
    raise AssertionError(f"no test function {name}")


def _strings(tree: ast.Module, node: ast.expr) -> set[str]:
    if isinstance(node, ast.List | ast.Tuple):
        return {e.value for e in node.elts if isinstance(e, ast.Constant)}
    # list(METHODS): the keys of a module-level dict
    target = node.args[0].id if isinstance(node, ast.Call) else node.id  # type: ignore[attr-defined]
    for stmt in tree.body:
        names = [t.id for t in getattr(stmt, "targets", []) if isinstance(t, ast.Name)]
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            names.append(stmt.target.id)
        if target in names and isinstance(stmt.value, ast.Dict):
            return {k.value for k in stmt.value.keys if isinstance(k, ast.Constant)}
    raise AssertionError(f"cannot read the parameters of {ast.dump(node)}")


def test_every_callback_has_a_row_without_gaps():
    rows = _table()
    named = {re.match(r"`(\w+)", row[0]).group(1) for row in rows}
    public = {
        name
        for name, obj in vars(callbacks).items()
        if inspect.isclass(obj)
        and issubclass(obj, L.Callback)
        and obj is not TrainSamplerOwner  # a base class; InfoBatch is its row
    }
    assert public <= named, f"callbacks without a row: {sorted(public - named)}"
    for row in rows:
        assert len(row) == 4 and all(row), row
        for cell in (row[1], row[3]):  # resume and DDP: a named test in every row
            assert TEST_ID.search(cell), row


def test_every_named_test_exists():
    text = (ROOT / "docs" / "guide.md").read_text()
    section = text.split("## Resume and DDP guarantees", 1)[1].split("\n## ", 1)[0]
    found = TEST_ID.findall(section)
    assert len(found) > 20
    for path, name, case in found:
        tree = ast.parse((ROOT / path).read_text())
        ids = _parametrised_ids(tree, name)
        if case:
            assert ids is not None and case in ids, (path, name, case, ids)

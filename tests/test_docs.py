"""The pages users read stay true to the tree: every test the README's guarantees table names exists, and
docs/architecture.md and the README's Layout name every module of the package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def guarantee_rows() -> list[str]:
    table = README.split("## What bertnli guarantees, and the test that proves each", 1)[1].split("\n## ", 1)[0]
    return [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| guarantee")]


def named_tests(row: str) -> list[tuple[str, str | None]]:
    """(file, test name or None) for each `tests/....py[::name]` in a row; `::name` alone continues the last file."""
    out, last = [], None
    for path, name, bare in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?[^`]*`|`::(\w+)", row.split(" | ")[-1]):
        if path:
            last = path
            out.append((path, name or None))
        else:
            out.append((last, bare))
    return out


def test_every_guarantee_names_a_test_that_exists():
    rows = guarantee_rows()
    assert len(rows) > 40
    missing = []
    for row in rows:
        tests = named_tests(row)
        if not tests:
            missing.append(f"no test named: {row[:80]}")
        for path, name in tests:
            file = ROOT / path
            if not file.is_file():
                missing.append(f"{path}: no such file")
                continue
            defined = {n.name for n in ast.walk(ast.parse(file.read_text())) if isinstance(n, ast.FunctionDef)}
            if name is not None and name not in defined:
                missing.append(f"{path}::{name}: no such test")
    assert not missing, "\n".join(missing)


def test_the_layout_pages_name_every_module():
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    layout = README.split("## Layout", 1)[1]
    modules = [
        p.relative_to(ROOT / "bertnli") for p in (ROOT / "bertnli").rglob("*.py") if "__pycache__" not in p.parts
    ]
    unnamed = [
        str(m)
        for m in modules
        if m.name not in ("__init__.py", "__main__.py") and not (m.name in architecture and m.name in layout)
    ]
    assert not unnamed, f"modules missing from docs/architecture.md or README's Layout: {unnamed}"


def test_the_checks_catch_a_missing_test_and_an_unnamed_module():
    assert named_tests("| x | `tests/test_docs.py::nope`, `::test_docs_b` |") == [
        ("tests/test_docs.py", "nope"),
        ("tests/test_docs.py", "test_docs_b"),
    ]
    assert named_tests("| x | `tests/sweep/test_sweep.py::test_a[2,4]` |") == [("tests/sweep/test_sweep.py", "test_a")]

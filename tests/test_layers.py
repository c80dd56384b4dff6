"""The package's shape, checked like transformers' utils/check_repo.py: imports point one way, down the layers
of docs/architecture.md, with no cycle, including imports inside functions; MLflow and Optuna stay in the
layers that own them; subpackages re-export nothing; modules and functions stay readable."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bertnli"

# Lowest first; a module may import from its own layer or any layer before it.
LAYERS = [
    ("bertnli", "bertnli.config", "bertnli.files", "bertnli.retry"),
    ("bertnli.data",),
    ("bertnli.model",),
    ("bertnli.train",),
    ("bertnli.tracking",),
    ("bertnli.analysis",),
    ("bertnli.sweep", "bertnli.experiments"),
    ("bertnli.cli",),
]
# Third-party packages only some layers may import (the GPU machines have neither MLflow nor Optuna).
OWNED = {"mlflow": ("bertnli.tracking", "bertnli.sweep"), "optuna": ("bertnli.sweep",)}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def layer_of(module: str) -> int:
    """The layer of a module: the longest layer prefix that names it or a package holding it."""
    best = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (i, prefix)
    assert best is not None, f"{module} is in no layer; add it to LAYERS and docs/architecture.md"
    return best[0]


def imports(module: str) -> list[tuple[str, int]]:
    """Every (imported module, line) of a module, at any depth of its code: top level, functions, classes."""
    tree = ast.parse(MODULES[module].read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for a in node.names:  # `from bertnli.sweep import halving` imports the module bertnli.sweep.halving
                out.append((f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base, node.lineno))
    return out


def internal_edges() -> dict[str, set[str]]:
    return {m: {t for t, _ in imports(m) if t in MODULES and t != m} for m in MODULES}


def test_every_import_points_down_the_layers():
    upward = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {target} (layer {layer_of(target)} > {layer_of(m)})"
        for m in MODULES
        for target, line in imports(m)
        if target in MODULES and layer_of(target) > layer_of(m)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules():
    graph, state, cycles = internal_edges(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join([*path[path.index(t) :], t]))
            elif t not in state:
                visit(t, [*path, t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("library", sorted(OWNED))
def test_mlflow_and_optuna_are_imported_only_by_the_layers_that_own_them(library):
    strays = [
        f"{MODULES[m].relative_to(ROOT)}:{line}"
        for m in MODULES
        for target, line in imports(m)
        if target.split(".")[0] == library and not any(m == p or m.startswith(p + ".") for p in OWNED[library])
    ]
    assert not strays, f"{library} imported outside {', '.join(OWNED[library])}: {strays}"


def reexports(path: Path) -> list[str]:
    """Names a module imports without using them: a re-export (or an `__all__`)."""
    tree = ast.parse(path.read_text())
    imported = {
        a.asname or a.name.split(".")[0]
        for n in tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
        if a.name != "annotations"
    }
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    defines_all = any(
        isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets) for n in tree.body
    )
    return sorted(imported - used) + (["__all__"] if defines_all else [])


def test_packages_reexport_nothing():
    """Every name has one home: an import says where a name lives (`from bertnli.train.fit import fit`),
    never a package that merely passes it on. A subpackage's __init__ holds its docstring (cli's also
    the command group, which uses what it imports)."""
    loud = {
        str(p.relative_to(ROOT)): names for p in MODULES.values() if p.name == "__init__.py" and (names := reexports(p))
    }
    assert not loud, f"these __init__.py files re-export names: {loud}"


def test_the_reexport_check_catches_one(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text('"""A package."""\n\nfrom bertnli.train.fit import fit\n')
    assert reexports(init) == ["fit"]
    init.write_text('"""A package."""\n\nfrom bertnli.train.fit import fit\n\nRUN = fit\n')
    assert reexports(init) == []


def test_modules_and_functions_stay_short():
    long_modules = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in MODULES.values()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    long_functions = []
    for p in MODULES.values():
        for node in ast.walk(ast.parse(p.read_text())):
            # counted from `def`: a click command's options are decorators, declarations rather than code
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long_modules and not long_functions, "\n".join(long_modules + long_functions)


def test_the_layer_checks_catch_an_upward_import_and_a_cycle(tmp_path, monkeypatch):
    """The checks above can fail: a data module importing tracking, and two modules importing each other."""
    (tmp_path / "bertnli" / "data").mkdir(parents=True)
    (tmp_path / "bertnli" / "tracking").mkdir()
    (tmp_path / "bertnli" / "__init__.py").write_text("")
    (tmp_path / "bertnli" / "data" / "a.py").write_text("def f():\n    from bertnli.tracking.b import g\n")
    (tmp_path / "bertnli" / "tracking" / "b.py").write_text("from bertnli.data.a import f\n\ndef g():\n    pass\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "ROOT", tmp_path)
    monkeypatch.setattr(this, "MODULES", {module_name(p): p for p in (tmp_path / "bertnli").rglob("*.py")})
    with pytest.raises(AssertionError, match=r"bertnli/data/a.py:2 imports bertnli.tracking.b"):
        test_every_import_points_down_the_layers()
    with pytest.raises(AssertionError, match="bertnli.data.a -> bertnli.tracking.b -> bertnli.data.a"):
        test_no_import_cycle_between_modules()

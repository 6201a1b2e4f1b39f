"""The floors of docs/architecture.md, checked on the import graph.

``probes`` is the floor, ``plots`` reads its records, ``diagnostics`` sits on both; no arrow points up, and
``plots`` never loads torch. Checked twice: statically (every import statement, lazy ones inside functions too)
and in a fresh interpreter (what importing a package really loads). Within the floors no two files import each
other, directly or round a longer circle: what two modules share lives in a third one below both. Imports under
``if TYPE_CHECKING:`` are left out, as they never run.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> the toolkit packages it may import
ALLOWED = {"probes": {"probes"}, "plots": {"plots", "probes"}, "diagnostics": {"diagnostics", "probes", "plots"}}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every import statement in a file, at any depth (lazy imports count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def module_files() -> dict[str, Path]:
    """Every module of the three packages by dotted name (a package by its ``__init__.py``)."""
    found = {}
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of every node inside an ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) block."""
    skipped = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING"):
            skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return skipped


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules that the file imports, at any depth (lazy imports count), relative imports resolved:
    ``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found |= {target} if target in modules else {base} & set(modules)
    return found - {name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each is a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_two_files_import_each_other():
    modules = module_files()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph["diagnostics.surface"] >= {"diagnostics.evaluation", "diagnostics.barriers"}  # the parse sees them
    assert not import_cycles(graph), import_cycles(graph)


def test_the_cycle_finder_finds_a_circle_and_skips_type_checking_imports(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from b import g\n")
    (tmp_path / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import c\nimport a\n")
    (tmp_path / "c.py").write_text("import b\n")
    modules = {name: tmp_path / f"{name}.py" for name in "abc"}
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"b"}}
    assert import_cycles(graph) == [["a", "b"]]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package):
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        upward = (imported_packages(path) & set(ALLOWED)) - ALLOWED[package]
        if upward:
            wrong[str(path.relative_to(ROOT))] = sorted(upward)
    assert not wrong, f"imports that point up from {package}: {wrong}"


def test_plots_never_imports_torch_statically():
    users = [str(p.relative_to(ROOT)) for p in (ROOT / "plots").rglob("*.py") if "torch" in imported_packages(p)]
    assert not users


def loaded_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_floor_loads_neither_upper_package():
    loaded = loaded_after("import probes, probes.session, probes.attaching, probes.records")
    assert "torch" in loaded  # the statement really imported the probes
    assert not loaded & {"diagnostics", "plots"}


def test_plots_and_records_load_no_torch():
    loaded = loaded_after("import plots, plots.cli, plots.registry, probes.records")
    assert "matplotlib" in loaded and "h5py" in loaded
    assert not loaded & {"torch", "transformers", "diagnostics"}


ENGINE_MODULES = {"ray": "diagnostics/engines/ray_cluster.py", "submitit": "diagnostics/engines/slurm_jobs.py"}


def test_only_the_engine_modules_import_ray_and_submitit():
    users = {str(p.relative_to(ROOT)): sorted(imported_packages(p) & set(ENGINE_MODULES))
             for package in ALLOWED for p in (ROOT / package).rglob("*.py")}
    assert {path: names for path, names in users.items() if names} == {v: [k] for k, v in ENGINE_MODULES.items()}


def test_the_commands_and_the_local_engine_load_neither_ray_nor_submitit():
    loaded = loaded_after("import diagnostics.study, diagnostics.seed_bank, diagnostics.engines, "
                          "diagnostics.worker_pool")
    assert "diagnostics" in loaded and not loaded & set(ENGINE_MODULES)

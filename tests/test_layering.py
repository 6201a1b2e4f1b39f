"""The floors of the README's architecture paragraph, checked on the import graph (issue 14).

``probes`` is the floor, ``plots`` reads its records, ``diagnostics`` sits on both; no arrow points up, and
``plots`` never loads torch. Checked twice: statically (every import statement, lazy ones inside functions too)
and in a fresh interpreter (what importing a package really loads).
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

"""Record names are spelled once, in ``probes.catalogue``: the early-failure code reads records through catalogue
entries (``RunRecords.get``/``has``), never through a name typed again. This test reads the source and fails on a
string literal given as a record name to the records reader."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READERS = {"series", "frame", "grid", "grids", "names", "_series"}
EARLY_FAILURE = sorted(ROOT.glob("probes/early_failure/*.py")) + [ROOT / "diagnostics/diagnose.py"]


def spelled_names(path: Path) -> list[str]:
    """``line: call`` for each call of a records reader whose first record-name argument is a string literal."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        literals = [arg for arg in node.args[:2] if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
        literals += [kw.value for kw in node.keywords if kw.arg == "kind" and isinstance(kw.value, ast.Constant)]
        if name in READERS and literals:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", EARLY_FAILURE, ids=lambda path: str(path.relative_to(ROOT)))
def test_early_failure_code_names_records_through_the_catalogue(path):
    assert spelled_names(path) == []


def test_the_check_finds_a_spelled_name(tmp_path):
    source = tmp_path / "reader.py"
    source.write_text('run.series("layers", kind="gradient_norms")\nrun.get(catalogue.LAYER_NORMS)\n')
    assert spelled_names(source) == ["1: run.series('layers', kind='gradient_norms')"]

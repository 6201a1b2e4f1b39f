"""The README and docs/ stay true: every relative link leads to a file that exists, and every ``python -m`` command
they name answers ``--help`` with status 0.

    python3 -m pytest tests/test_docs.py

Links in fenced code blocks are code, not links, and are left out; web links are not fetched. Each distinct module
is asked once, all in subprocesses run side by side, so the test costs about as much as the slowest import.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
MODULE = re.compile(r"(?:\bpython3?|\btorchrun\b[^`\n]*?)\s+-m\s+([A-Za-z_][\w.]*)")


def prose(page: Path) -> str:
    """The page without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)


def relative_links(page: Path) -> list[str]:
    """Link targets that point into the repository (no scheme, not a bare #anchor), without their #anchor."""
    targets = [target.split("#")[0] for target in LINK.findall(prose(page))]
    return [t for t in targets if t and not re.match(r"[a-z]+:", t)]


def modules_named() -> set[str]:
    """Every module run with ``python -m`` or ``torchrun ... -m`` anywhere in the pages, code blocks included
    (a pattern such as ``python -m diagnostics.<command>`` names none)."""
    return {name for page in PAGES for name in MODULE.findall(page.read_text()) if not name.endswith(".")}


def test_the_pages_exist_and_link_somewhere():
    assert (ROOT / "README.md").is_file() and len(PAGES) > 5
    assert any(relative_links(page) for page in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file(page):
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to what does not exist: {missing}"


def test_every_python_m_command_answers_help():
    names = sorted(modules_named())
    assert {"diagnostics.study", "diagnostics.finetune", "plots", "pytest"} <= set(names), names
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    running = {name: subprocess.Popen([sys.executable, "-m", name, "--help"], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for name in names}
    failed = {}
    for name, process in running.items():
        _, stderr = process.communicate(timeout=300)
        if process.returncode != 0:
            failed[name] = (process.returncode, stderr.strip().splitlines()[-1:] if stderr else [])
    assert not failed, failed


COMMANDS = ("diagnostics.study", "diagnostics.finetune", "diagnostics.report", "diagnostics.diagnose",
            "diagnostics.forgetting", "diagnostics.surface", "diagnostics.export", "diagnostics.seed_bank",
            "plots.cli", "plots.watch")


@pytest.mark.parametrize("module", COMMANDS)
def test_help_describes_the_command_in_whole_sentences(module):
    """``--help`` opens with the module's description, ending where its sentence ends (``seed_bank``'s once
    stopped mid-sentence at the docstring's first line break)."""
    import importlib

    description = " ".join(importlib.import_module(module).build_parser().description.split())
    assert description.endswith((".", "?", "!")) and len(description) > 30, description


def test_ci_runs_exactly_the_readme_test_command():
    """``.ci/run`` installs and tests with the README's test command, character for character."""
    readme = [line for line in (ROOT / "README.md").read_text().splitlines() if line.endswith("python -m pytest -q")]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.startswith("#")]
    assert len(readme) == 1 and readme[0] in ci, (readme, ci[-1:])

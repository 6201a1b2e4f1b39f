"""A scope of the early-failure benchmark with fewer than ten runs, or runs of one outcome, is not scored: the
report (Markdown and HTML) and the early figure say "too few runs to score" instead of precision 1.00."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

import records_factory
from diagnostics.html_report import render, run_rows
from diagnostics.report import ReportConfig, run
from plots.early import plot_early
from probes.early_failure.benchmark import FRACTIONS, rows_of
from probes.records import iter_runs, open_run

matplotlib.use("Agg")
REPO = Path(__file__).resolve().parents[1]


def _runs(folder: Path, outcomes: list[bool]) -> Path:
    for seed, failed in enumerate(outcomes):
        records_factory.finetune_run(folder / f"rte-default-s{seed}.h5", failed=failed, seed=seed, steps=60,
                                     forgetting=False)
    return folder


@pytest.fixture(scope="module")
def five_failed(tmp_path_factory) -> Path:
    return _runs(tmp_path_factory.mktemp("five"), [True] * 5)


def test_markdown_report_says_too_few_runs(five_failed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "diagnostics.report", str(five_failed), "--early", "--out",
                           str(tmp_path / "report.md")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    early = (tmp_path / "report.md").read_text().split("## Early warning")[1]
    rows = [line for line in early.splitlines() if line.startswith("| default |") or line.startswith("| all |")]
    assert len(rows) == 2 * len(FRACTIONS)
    assert all("| 5 | 5 | too few runs to score |" in line for line in rows)
    assert "1.00" not in "\n".join(rows)


def test_html_report_and_figure_say_too_few_runs(five_failed, tmp_path):
    report = run(ReportConfig(runs=[str(five_failed)], early=True))
    page = render(report, run_rows([five_failed]), {}, {}, tmp_path / "report.html")
    early = page.split("Early-failure predictor on held-out seeds")[1].split("</table>")[0]
    assert early.count('<td colspan="4">too few runs to score</td>') == 2 * len(FRACTIONS)
    assert "1.00" not in early
    figure = plot_early(rows=rows_of(open_run(path) for path in iter_runs([five_failed])))
    assert [text.get_text() for axis in figure.axes for text in axis.texts] == ["too few runs to score"] * 2
    drawn = [line.get_ydata() for axis in figure.axes for line in axis.lines if line.get_label() != "target 0.9"]
    assert drawn and not any(np.isfinite(np.asarray(y, dtype="f8")).any() for y in drawn)


def test_a_scope_of_both_outcomes_and_ten_runs_is_scored(tmp_path):
    folder = _runs(tmp_path, [seed % 2 == 0 for seed in range(10)])
    report = run(ReportConfig(runs=[str(folder)], early=True))
    assert all(result.scorable and result.runs == 10 and result.failed == 5 for result in report.early.results)
    assert "too few runs to score |" not in report.markdown()

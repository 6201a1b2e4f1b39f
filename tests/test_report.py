"""The multi-seed report: statistics against numpy/scipy, and the command end to end on real records files."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from probes.records import RunMeta, RunWriter, write_summary
from diagnostics.seed_statistics import Outcome, group_rows, levene_by_task

VALUES = {"default": [0.5, 0.5, 0.62, 0.66, 0.5], "mosbach": [0.64, 0.66, 0.65, 0.61, 0.67]}


def outcomes() -> list[Outcome]:
    return [Outcome("rte", recipe, seed, "accuracy", value, 0.5)
            for recipe, values in VALUES.items() for seed, value in enumerate(values)]


def test_group_rows_match_numpy():
    rows = {r.recipe: r for r in group_rows(outcomes())}
    default = np.array(VALUES["default"])
    assert rows["default"].failed == 3 and rows["mosbach"].failed == 0
    assert rows["default"].std == pytest.approx(default.std(ddof=1))
    assert rows["default"].median == pytest.approx(np.median(default))
    assert rows["mosbach"].max == pytest.approx(0.67) and rows["default"].seeds == 5


def test_levene_matches_scipy_and_skips_single_recipe_tasks():
    rows = group_rows(outcomes() + [Outcome("cola", "default", 0, "mcc", 0.1, 0.0)])
    result = levene_by_task(rows)
    assert set(result) == {"rte"}
    assert result["rte"] == pytest.approx(stats.levene(VALUES["default"], VALUES["mosbach"]))


def write_runs(folder):
    for recipe, values in VALUES.items():
        for seed, value in enumerate(values):
            path = folder / f"rte-{recipe}-s{seed}" / "run.h5"
            path.parent.mkdir(parents=True)
            with RunWriter.create(path, RunMeta(task="rte", recipe=recipe, seed=seed)) as run:
                run.add_series("train", ["loss"])
                run.start()
                run.append("train", 0, [0.69])
            write_summary(path, {"final_dev_metric": value, "metric": "accuracy", "majority": 0.5})
    unfinished = folder / "rte-default-s9" / "run.h5"
    unfinished.parent.mkdir()
    RunWriter.create(unfinished, RunMeta(task="rte", recipe="default", seed=9)).close()


@pytest.mark.slow
def test_report_command_end_to_end(tmp_path, repo_root):
    write_runs(tmp_path / "runs")
    command = [sys.executable, "-m", "diagnostics.report", str(tmp_path / "runs")]
    out = subprocess.run(command + ["--json"], capture_output=True, text=True, cwd=repo_root, check=True)
    rows = {row["recipe"]: row for row in json.loads(out.stdout)}
    assert rows["default"]["failed"] == 3 and rows["default"]["seeds"] == 5
    for key in ("task", "recipe", "seeds", "failed", "std", "mean", "median", "max", "majority"):
        assert key in rows["mosbach"]
    markdown = tmp_path / "report.md"
    text = subprocess.run(command + ["--out", str(markdown)], capture_output=True, text=True, cwd=repo_root,
                          check=True).stdout
    assert "Levene" in text and "rte-default-s9" in text and markdown.read_text() == text
    again = subprocess.run(command + ["--out", str(markdown)], capture_output=True, text=True, cwd=repo_root)
    assert again.returncode != 0 and "already exists" in again.stderr and markdown.read_text() == text


def test_report_errors_are_one_line(tmp_path, repo_root):
    empty = tmp_path / "empty"
    empty.mkdir()
    for argument in (str(tmp_path / "missing"), str(empty)):
        out = subprocess.run([sys.executable, "-m", "diagnostics.report", argument], capture_output=True,
                             text=True, cwd=repo_root)
        assert out.returncode == 1 and out.stderr.count("\n") == 1 and out.stderr.startswith("error:")

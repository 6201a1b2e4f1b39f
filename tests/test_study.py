"""The main job end to end: ``python -m diagnostics.study --quick`` on the embedded default, then a re-run."""
from __future__ import annotations

import subprocess
import sys

import pytest

from diagnostics.embedded import DEFAULT_MODEL
from probes.records import open_run
from diagnostics.study import _seeds, pick_basin_runs, pick_runs
from diagnostics.finetune import FinetuneResult


def test_seed_ranges():
    assert _seeds("0-3") == [0, 1, 2, 3] and _seeds("2,5") == [2, 5]


def test_pick_runs_prefers_the_default_recipe(tmp_path):
    def result(name, failed):
        return FinetuneResult(tmp_path / name, False, 0.0, "mcc", 0.0, failed, 10, 1.0)
    results = [result("t-mosbach-s0", True), result("t-default-s1", True), result("t-default-s0", False),
               result("u-default-s0", True)]
    failed, successful = pick_runs(results, "t", 3)
    assert [p.name for p in failed] == ["t-default-s1", "t-mosbach-s0"]
    assert [p.name for p in successful] == ["t-default-s0"]


def test_barriers_take_the_recipe_with_most_successful_runs(tmp_path):
    def result(name, failed):
        return FinetuneResult(tmp_path / name, False, 0.0, "mcc", 0.0, failed, 10, 1.0)
    results = [result("t-default-s0", False), result("t-default-s1", True), result("t-mosbach-s1", False),
               result("t-mosbach-s0", False), result("u-mosbach-s2", False)]
    recipe, runs = pick_basin_runs(results, "t")
    assert recipe == "mosbach" and [p.name for p in runs] == ["t-mosbach-s0", "t-mosbach-s1"]
    recipe, runs = pick_basin_runs(results[:2], "t")  # one success only: every run of that recipe
    assert recipe == "default" and [p.name for p in runs] == ["t-default-s0", "t-default-s1"]
    assert pick_basin_runs([], "t") == (None, [])


@pytest.mark.slow
@pytest.mark.skipif(not (DEFAULT_MODEL / "model.safetensors").exists(), reason="embedded default not built")
def test_quick_study_end_to_end_and_rerun_skips(quick_study, repo_root):
    out, first = quick_study
    command = [sys.executable, "-m", "diagnostics.study", "--out", str(out), "--quick"]
    assert first.returncode == 0, first.stderr[-2000:]
    runs = sorted(out.glob("*/run.h5"))
    assert len(runs) == 4
    for path in runs:
        run = open_run(path)
        assert "final_dev_metric" in run.summary and run.series("layers", kind="gradient_norms").steps.size > 0
    report = (out / "report.md").read_text()
    assert report.count("| hedge |") == 2 and "| disagreement | CKA |" in report
    assert "## Loss barriers between seeds" in report and (out / "figures" / "barriers.pdf").is_file()
    assert {p.name for p in (out / "figures").glob("*.pdf")} >= {"training.pdf", "seeds.pdf", "gradients.pdf"}
    page = (out / "report.html").read_text()  # one page with every figure and links to the records
    assert 'id="figure-gradients"' in page and all(f'href="{p.parent.name}/run.h5"' in page for p in runs)
    assert {p.name for p in (out / "figures").glob("*.png")} >= {"training.png", "profile.png"}
    assert "## Forgetting" in (out / "report.md").read_text() and "block 1 alone" in (out / "report.md").read_text()
    before = {path: path.stat().st_mtime_ns for path in runs}
    second = subprocess.run(command, capture_output=True, text=True, cwd=repo_root, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (second.stdout + second.stderr).count("skipped (finished before)") == 4
    assert {path: path.stat().st_mtime_ns for path in runs} == before, "finished runs are left untouched"
    assert (out / "report.html").read_text() == page

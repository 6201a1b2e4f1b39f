"""Stopping doomed seeds early: the rules, a real run stopped by each, and what the bank's report says it saved."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from diagnostics.embedded import DEFAULT_MODEL
from diagnostics.finetune import FinetuneConfig, finished_run, run
from diagnostics.stop_early import LEDGER, StopRule, StopRuleError, Stopper
from diagnostics.stop_early_report import savings
from probes.early_failure.benchmark import rows_of
from probes.records import open_run

EMBEDDED = pytest.mark.skipif(not (DEFAULT_MODEL / "model.safetensors").exists(), reason="embedded default not built")
SMALL = dict(task="hedge", recipe="default", seed=0, max_length=16, evals=2, epochs=1, dev_examples=32, threads=1)


def test_rules_parse_with_their_defaults_and_refuse_what_they_do_not_take():
    assert StopRule.parse("dodge") == StopRule("dodge", at=0.25, keep=0.5)
    assert str(StopRule.parse("dodge:at=0.3,keep=0.25")) == "dodge:at=0.3,keep=0.25"
    assert StopRule.parse("predictor:threshold=0.7").threshold == 0.7
    assert StopRule.parse("dodge").decision_step(30) == 8 and StopRule.parse("predictor").decision_step(30) is None
    for bad in ("hyperband", "dodge:at=0", "dodge:keep=1.5", "dodge:threshold=0.5", "predictor:threshold=high"):
        with pytest.raises(StopRuleError, match="--stop-early"):
            StopRule.parse(bad)


def test_dodge_keeps_the_best_share_of_the_runs_of_its_recipe_so_far(tmp_path):
    def decide(seed: int, metric: float, recipe: str = "default", loss: float = 0.7) -> str | None:
        stopper = Stopper(StopRule("dodge", at=0.5, keep=0.5), tmp_path / f"hedge-{recipe}-s{seed}", total=10)
        assert stopper.after_step(4, None, None) is None  # before its evaluation at step 5
        decision = stopper.after_step(5, None, (metric, loss))
        assert stopper.after_step(6, None, None) is None  # decided once
        return decision

    assert decide(0, 0.2) is None  # the first run always goes on
    assert "below the best 50% of 2 runs so far (0.200, loss 0.700)" in decide(1, 0.1)
    assert decide(2, 0.3) is None
    assert decide(3, 0.2, loss=0.6) is None  # best 2 of 4: 0.3, then 0.2 at the lower loss (this one)
    assert decide(4, 0.2, loss=0.65) is None  # best 3 of 5: 0.3, 0.2 (0.6), 0.2 (0.65)
    assert decide(5, 0.2, loss=0.69) is not None  # best 3 of 6 as before: equal metric, higher loss
    assert decide(0, 0.0, recipe="mosbach") is None  # another recipe is another sweep
    assert sorted(p.name for p in (tmp_path / LEDGER).iterdir()) == [
        *(f"hedge-default-s{seed}.json" for seed in range(6)), "hedge-mosbach-s0.json"]


@pytest.mark.slow
@EMBEDDED
def test_a_run_stopped_by_dodge_is_recorded_as_stopped_and_counted_against_its_run_to_the_end(tmp_path):
    full = run(FinetuneConfig(out=tmp_path / "full", train_examples=64, probes=False, **SMALL))
    ledger = tmp_path / "dodge" / LEDGER
    ledger.mkdir(parents=True)
    (ledger / "hedge-default-s9.json").write_text(json.dumps({"step": 1, "dev_metric": 2.0, "dev_loss": 0.0}))
    config = FinetuneConfig(out=tmp_path / "dodge", train_examples=64, probes=False, stop_early="dodge:at=0.25",
                            **SMALL)
    stopped = run(config)
    assert stopped.stopped.startswith("dodge:at=0.25,keep=0.5: dev metric") and stopped.steps == 1
    records = open_run(stopped.run_dir / "run.h5")
    assert {"final_dev_metric", "failed"}.isdisjoint(records.summary)
    assert (records.summary["stopped_at"], records.summary["planned_steps"]) == (1, 4)
    assert records.series("eval").steps.tolist() == [1] and not (stopped.run_dir / "final").exists()
    kept = run(FinetuneConfig(out=tmp_path / "kept", train_examples=64, probes=False, stop_early="dodge:at=0.25",
                              **SMALL))  # the first run of its sweep: always kept
    ran, ended = open_run(kept.run_dir / "run.h5"), open_run(full.run_dir / "run.h5")
    assert np.array_equal(ran.series("train").values, ended.series("train").values, equal_nan=True), \
        "the evaluation added for the decision does not change the training"
    assert ran.series("eval").steps.tolist() == [1, 2, 4] and kept.final_dev_metric == full.final_dev_metric
    assert finished_run(stopped.run_dir) is not None and run(config).skipped and run(config).stopped == stopped.stopped
    assert rows_of([records]) == [], "a stopped run has no outcome to train the predictor on"
    saved = savings(tmp_path / "dodge", against=tmp_path / "full")
    assert (saved.runs, saved.stopped, saved.steps_run, saved.steps_planned, saved.saved) == (1, 1, 1, 4, 0.75)
    name = ("hedge-default-s0",)
    assert (saved.lost, saved.caught) == (((), name) if full.failed else (name, ()))


@pytest.mark.slow
@EMBEDDED
def test_the_predictor_rule_stops_at_the_early_warnings_decision(tmp_path):
    """A real run with the probes on, of a length the shipped predictor is calibrated for: the early warning
    decides at 15% of the steps; a threshold no P(fail) is below stops the run there, and the reason quotes the
    probability the probe recorded."""
    config = FinetuneConfig(out=tmp_path, train_examples=960, stop_early="predictor:threshold=1e-300", **SMALL)
    stopped = run(config)  # 60 steps, inside the shipped bank's run lengths: the early warning decides after 8
    assert stopped.stopped, "the run went to the end"
    records = open_run(stopped.run_dir / "run.h5")
    assert records.series("eval").steps.tolist() == [stopped.steps], "evaluated where it stopped"
    warning = records.series("early_warning")
    probability = float(warning.column("probability")[0])
    expected = f"predictor:threshold=1e-300: P(fail) {probability:.2f} >= 1e-300 at step {stopped.steps}"
    assert stopped.stopped == expected
    assert int(warning.steps[0]) <= stopped.steps < 60 * 0.3


@pytest.mark.slow
@EMBEDDED
def test_the_bank_reports_the_compute_saved_and_the_good_runs_lost(tmp_path, repo_root):
    bank = [sys.executable, "-m", "diagnostics.seed_bank", "--tasks", "hedge", "--lrs", "2e-4", "--seeds", "2",
            "--corrected-seeds", "0", "--epochs", "1", "--train-examples", "64"]
    to_the_end = subprocess.run([*bank, "--out", str(tmp_path / "full")], capture_output=True, text=True,
                                cwd=repo_root, timeout=600)
    assert to_the_end.returncode == 0, to_the_end.stderr[-2000:]
    dodge = subprocess.run([*bank, "--out", str(tmp_path / "dodge"), "--stop-early", "dodge:at=0.5,keep=0.5",
                            "--against", str(tmp_path / "full")], capture_output=True, text=True, cwd=repo_root,
                           timeout=600)
    assert dodge.returncode == 0, dodge.stderr[-2000:]
    report = (tmp_path / "dodge" / "stop-early.md").read_text()
    assert report.startswith("# Stopping doomed seeds early\n\n`--stop-early dodge:at=0.5,keep=0.5` on the bank")
    saved = savings(tmp_path / "dodge", against=tmp_path / "full")
    assert saved.runs == 2 and len(saved.lost) + len(saved.caught) == saved.stopped and not saved.unmatched
    row = f"| compute saved | {saved.saved:.0%} |"
    assert row in report and row in dodge.stdout

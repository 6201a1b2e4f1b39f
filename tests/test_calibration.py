"""Calibrating on one's own model, end to end through the commands: a tiny RoBERTa's run is outside the shipped
bank (no P(fail), one line saying why and how), and inside a bank built on that RoBERTa with ``seed_bank --model``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tiny
from probes.records import open_run

REPO = Path(__file__).resolve().parents[1]
# Tiny runs of 24 steps: at lr 3e-2 without bias correction both seeds fail; bias-corrected at 1e-2 one does not.
BANK = ["--lrs", "3e-2", "--corrected-lrs", "1e-2", "--seeds", "2", "--corrected-seeds", "2", "--epochs", "4",
        "--train-examples", "96", "--max-length", "16", "--evals", "4", "--workers", "1"]


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_a_tiny_roberta_is_uncalibrated_until_its_own_bank_calibrates_it(tmp_path):
    model = tiny.save(tiny.masked_lm("roberta", seed=0), tmp_path / "roberta")
    task = tiny.lexical_task(tmp_path / "lexical")
    runs, table, predictor = tmp_path / "bank", tmp_path / "features.csv", tmp_path / "roberta.json"
    built = _cli("diagnostics.seed_bank", "--model", model, "--task", task, "--out", runs, *BANK)
    assert built.returncode == 0, built.stderr
    printed = built.stdout + built.stderr
    assert "lr0.03/lexical-default-s0: UserWarning: optimiser audit" in printed, "a worker's warning names its run"
    assert "return probes.attach" not in printed, "a worker's warning comes without the echo of its source line"
    assert _cli("diagnostics.seed_bank", "--out", runs, "--features", table).returncode == 0
    fitted = _cli("diagnostics.seed_bank", "--fit", table, "--predictor-out", predictor)
    assert fitted.returncode == 0, fitted.stderr
    assert "domain: roberta, 4 layers, 32 wide, 2 classes, 24 steps" in fitted.stdout

    run = runs / "lr0.01" / "lexical-mosbach-s0"
    shipped = _cli("diagnostics.diagnose", run, "--json")
    assert shipped.returncode == 0, shipped.stderr
    verdict = json.loads(shipped.stdout)
    assert verdict["calibrated"] is False and verdict["predicted_failure"] is None and verdict["prior"] is None
    assert verdict["calibration"].startswith("roberta, 4 layers, 32 wide, 24 steps: outside the bank (bert, ")
    assert "--predictor-out" in verdict["calibration"] and verdict["advice"]
    text = _cli("diagnostics.diagnose", run).stdout
    assert "not calibrated: roberta" in text and "P(fail)" not in text

    own = json.loads(_cli("diagnostics.diagnose", run, "--json", "--predictor", predictor).stdout)
    assert own["calibrated"] is True and own["calibration"] is None and 0 <= own["predicted_failure"] <= 1
    assert own["update_auc"]["fraction"] == 0.3  # a finished run is judged as at 30% of its steps
    outcomes = [open_run(path).summary["failed"] for path in (runs / "lr0.01").glob("*/run.h5")]
    assert own["prior"]["runs"] == len(outcomes) == 2 and own["prior"]["failed"] == sum(outcomes)
    assert own["prior"]["correct_bias"] is True
    assert not any("bias-corrected" in item["action"] for item in own["advice"])

    missing = _cli("diagnostics.diagnose", run, "--predictor", tmp_path / "nowhere.json")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "--predictor-out" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_runner_prints_a_warning_as_one_line(tiny_mlm_dir, tmp_path):
    """The fine-tuning command shows Python's warnings as log lines, without the echo of a source line."""
    task = tiny.lexical_task(tmp_path / "lexical")
    done = _cli("diagnostics.finetune", "--task", task, "--recipe", "default", "--seed", "0", "--out", tmp_path,
                "--model", tiny_mlm_dir, "--max-length", "16", "--evals", "1", "--epochs", "1", "--precision", "fp32")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(line.startswith("UserWarning: optimiser audit: BertAdam runs Adam without bias correction")
               for line in lines)
    assert not any(line.strip().startswith("return probes.attach") for line in lines)

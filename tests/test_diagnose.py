"""``python -m diagnostics.diagnose`` on real runs of a tiny BERT: the verdict follows the run's outcome, the
evidence its records, the advice the evidence; ``--until`` judges from a prefix; a run still being written works."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tiny
from diagnostics.diagnose import cut, diagnose
from diagnostics.finetune import FinetuneConfig, run
from probes.records import open_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lexical_task(tmp_path_factory) -> Path:
    """A 96/32 single-text task: the label says whether the text holds the task's first word."""
    return tiny.lexical_task(tmp_path_factory.mktemp("tasks") / "lexical")


@pytest.fixture(scope="module")
def runs(lexical_task, tiny_mlm_dir, tmp_path_factory) -> dict[str, Path]:
    """A default-recipe run at a learning rate that makes it fail, and a bias-corrected one."""
    out = tmp_path_factory.mktemp("runs")
    common = dict(task=str(lexical_task), seed=0, model=tiny_mlm_dir, max_length=16, evals=3, epochs=3,
                  batch_size=8, precision="fp32")
    failed = run(FinetuneConfig(recipe="default", out=out / "high", lr=3e-2, **common))
    corrected = run(FinetuneConfig(recipe="mosbach", out=out / "low", lr=3e-3, **common))
    return {"failed": failed.run_dir, "corrected": corrected.run_dir}


def test_verdicts_follow_the_outcomes_and_the_advice_the_evidence(runs):
    failed, corrected = diagnose(runs["failed"]), diagnose(runs["corrected"])
    for folder, verdict in ((runs["failed"], failed), (runs["corrected"], corrected)):
        summary = open_run(folder / "run.h5").summary
        assert verdict.outcome == ("failed" if summary["failed"] else "succeeded")
        assert verdict.final_dev_metric == pytest.approx(summary["final_dev_metric"])
    assert failed.outcome == "failed", "lr 3e-2 without bias correction should fail this tiny run"
    signals = {item["signal"] for item in failed.evidence}
    assert "no_bias_correction" in signals and signals & {"loss_plateau", "prediction_collapse"}
    assert "bias-corrected Adam" in failed.advice[0]["action"]
    assert "no_bias_correction" not in {item["signal"] for item in corrected.evidence}
    assert not any("bias-corrected" in item["action"] for item in corrected.advice)


def test_until_judges_from_the_first_steps_only(runs):
    verdict = diagnose(runs["failed"], until=0.5)
    total = open_run(runs["failed"] / "run.h5").summary["steps"]
    assert verdict.outcome == "too early" and verdict.final_dev_metric is None
    assert verdict.seen_steps == total // 2 and verdict.total_steps == total
    assert all(item["step"] is None or item["step"] < total // 2 for item in verdict.evidence)


def test_cut_keeps_only_the_prefix_and_drops_the_outcome(runs):
    records = open_run(runs["failed"] / "run.h5")
    prefix = cut(records, 5)
    assert prefix.summary == {} and prefix.series("train").steps.max() == 5
    assert (prefix.series("layers").values == records.series("layers").values[:6]).all()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "diagnostics.diagnose", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_json_has_the_promised_keys(runs):
    done = _cli(str(runs["failed"]), "--json")
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    assert {"outcome", "predicted_failure", "evidence", "advice"} <= verdict.keys()
    assert verdict["outcome"] == "failed" and isinstance(verdict["evidence"], list) and verdict["advice"]
    text = _cli(str(runs["failed"] / "run.h5"))
    assert text.returncode == 0 and text.stdout.splitlines()[0].endswith(")") and "FAILED" in text.stdout


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "does not exist"),
    (["RUN", "--until", "0"], "--until 0.0 must lie in (0, 1]"),
])
def test_cli_bad_input_is_one_line(runs, args, message):
    done = _cli(*[str(runs["failed"]) if a == "RUN" else a for a in args])
    assert done.returncode == 1 and done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_run_still_being_written_is_too_early(tmp_path):
    """A real probe session left open (the writer still holds the file): diagnose reads what was flushed."""
    script = (
        "import sys, time, torch, probes, tiny\n"
        "model = tiny.classifier('bert', seed=0).train()\n"
        "optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)\n"
        "session = probes.attach(model, optimizer, sys.argv[1], probes=[probes.GradientNorms(),\n"
        "    probes.LossPlateau(), probes.PredictionCollapse()], schedule=probes.Schedule(every=1), flush_every=4)\n"
        "for step in range(9):\n"
        "    model(**tiny.batch(4, 8, seed=step)).loss.backward(); optimizer.step(); optimizer.zero_grad()\n"
        "session.writer.flush(); print('ready', flush=True); time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "live.h5")], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        verdict = diagnose(tmp_path / "live.h5")
        assert verdict.outcome == "too early" and verdict.seen_steps == 8
    finally:
        writer.kill()
        writer.wait()


def test_advice_leaves_out_what_the_run_already_does():
    """A failed run that re-initialised its top blocks (Zhang's recipe) is not told to re-initialise them; a
    bias-corrected one (no ``no_bias_correction`` evidence) is not told to correct the bias."""
    from diagnostics.diagnose import advise

    plateau = [{"signal": "loss_plateau", "step": 10, "finding": "training loss flat at ln C"}]
    for reinitialised in (False, True):
        actions = " ".join(item["action"] for item in advise(plateau, "failed", 0.9, reinitialised))
        assert ("re-initialise the top encoder blocks" in actions) is not reinitialised
        assert "bias-corrected" not in actions and "lower the learning rate" in actions

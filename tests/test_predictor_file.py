"""A predictor file knows its domain and its prior: the architecture the records carry, the one line a run outside
the bank gets, the prior of a configuration, and a prediction at every share of the steps past 5%."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

import probes
import records_factory
import tiny
from diagnostics.diagnose import diagnose
from diagnostics.early_features import read_table
from diagnostics.predictor_fit import dev_cells, fit
from probe_harness import LoopConfig, run_loop
from probes.early_failure.domain import Domain, Profile, run_profile
from probes.early_failure.benchmark import FRACTIONS, rows_of
from probes.early_failure.signals import features_at
from probes.early_failure.warning import EarlyWarning
from probes.early_failure.predictor_file import MODEL_FILE, PredictorFile
from probes.records import open_run

LENGTHS = (40, 96, 200)
GRID = (0.05, 0.06, 0.075, 0.09, 0.1, 0.12, 0.15, 0.175, 0.19, 0.2, 0.25, 0.29, 0.3, 0.45, 0.7, 1.0)


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
def test_records_carry_the_architecture_of_the_model(arch, tmp_path):
    """probes.attach writes what the model's own config says (DistilBERT names them dim and n_layers)."""
    model = tiny.classifier(arch, seed=0)
    run_loop(LoopConfig(arch=arch, steps=2), tmp_path / "r.h5", model=model)
    config = model.config.to_dict()
    expected = {"model_type": arch, "layers": config.get("num_hidden_layers", config.get("n_layers")),
                "hidden": config.get("hidden_size", config.get("dim")), "classes": 2}
    assert expected["layers"] == tiny.LAYERS and expected["hidden"] == 32
    run = open_run(tmp_path / "r.h5")
    assert run.meta["architecture"] == expected
    profile = run_profile(run)
    assert (profile.model_type, profile.layers, profile.hidden, profile.classes) == (arch, tiny.LAYERS, 32, 2)
    assert profile.correct_bias is True  # torch's AdamW corrects its moments


def test_a_run_outside_the_bank_gets_one_line_naming_what_is_outside_and_how_to_calibrate():
    bank = Domain(("bert",), (6,), (384,), (2,), (60, 200), ("default", "mosbach"), (False, True), ("hedge",))
    inside = Profile("bert", 6, 384, 2, 96, "default", False, 2e-4, "polarity")
    assert bank.note(inside) is None, "a new task on the same model is not outside"
    note = bank.note(Profile("roberta", 24, 1024, 2, 3000, "default", False, 2e-5))
    assert note.startswith("roberta, 24 layers, 1024 wide, 3,000 steps: outside the bank (bert, 6 layers, 384 wide, "
                           "2 classes, 60-200 steps); to calibrate")
    assert "python -m diagnostics.seed_bank --model PATH --task T --out RUNS" in note and "\n" not in note
    assert bank.note(Profile("bert", 6, 384, 3, 96, "zhang", None)).startswith("3 classes, recipe zhang: outside")
    assert bank.note(Profile(None, None, None, 2, 96)).startswith("architecture not recorded: outside")


def test_the_shipped_file_has_the_prior_of_its_bank():
    """The prior cells against a hand count of the committed table's runs at lr 2e-4 without bias correction."""
    shipped = PredictorFile.load(MODEL_FILE)
    table = Path(__file__).resolve().parents[1] / "data" / "seed_bank" / "features.csv"
    lines = [line.split(",") for line in table.read_text().splitlines()]
    header = lines[0]
    runs = {row[0]: row for row in lines[1:]
            if row[header.index("correct_bias")] == "False" and float(row[header.index("lr")]) == 2e-4}
    failed = sum(row[header.index("failed")] == "True" for row in runs.values())
    cell = shipped.prior_of(Profile(correct_bias=False, lr=2e-4 * (1 + 1e-8)))
    assert (cell.runs, cell.failed) == (len(runs), failed)
    assert cell.words() == (f"Adam without bias correction (BERTAdam) at lr 0.0002 on this model: "
                            f"{round(100 * failed / len(runs))}% of the bank's {len(runs)} seeds failed")
    assert shipped.prior_of(Profile(correct_bias=False, lr=5e-4)) is None


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> tuple[Path, PredictorFile]:
    """Runs of 40, 96 and 200 steps (two failed, two not, each) saved as a fine-tuning run saves them (records and
    the checkpoint's config.json), and a predictor file fitted on them."""
    root = tmp_path_factory.mktemp("bank")
    config = tiny.config("bert", len(tiny.tokenizer()), layers=6)
    for steps in LENGTHS:
        for seed in range(4):
            folder = root / f"steps{steps}" / f"rte-default-s{seed}"
            (folder / "step0").mkdir(parents=True)
            config.save_pretrained(folder / "step0")
            records_factory.finetune_run(folder / "run.h5", failed=seed % 2 == 0, seed=seed, steps=steps,
                                         depth=6, forgetting=False)
    runs = [open_run(path) for path in sorted(root.glob("*/*/run.h5"))]
    return root, fit(rows_of(runs), {"table": "test"}, resamples=20)


def test_until_predicts_at_every_share_past_five_percent(bank, tmp_path):
    """For each run length and share F: a number, from the model of the largest fraction whose window the first
    F of the steps cover, equal to that model on the uncut run's features there."""
    root, fitted = bank
    assert fitted.domain.steps == (40, 200) and fitted.domain.model_types == ("bert",)
    path = tmp_path / "predictor.json"
    path.write_text(fitted.to_json())
    for steps in LENGTHS:
        folder = root / f"steps{steps}" / "rte-default-s1"
        whole = open_run(folder / "run.h5")
        for share in GRID:
            verdict = diagnose(folder, until=share, predictor=path)
            seen = max(2, round(share * steps) - 1)
            expected = max(f for f in FRACTIONS if max(2, round(f * steps) - 1) <= seen)
            assert verdict.verdict.calibrated and verdict.predicted_failure is not None, (steps, share)
            assert verdict.verdict.fraction == expected, (steps, share)
            oracle = fitted.models[expected].probability_of(features_at(whole, expected))
            assert verdict.predicted_failure == pytest.approx(oracle, rel=1e-9), (steps, share)
    assert diagnose(root / "steps200" / "rte-default-s1", until=0.03, predictor=path).predicted_failure is None


def test_the_json_holds_prior_and_evidence_apart(bank, tmp_path):
    root, fitted = bank
    path = tmp_path / "predictor.json"
    path.write_text(fitted.to_json())
    verdict = diagnose(root / "steps96" / "rte-default-s1", until=0.2, predictor=path).as_json()
    assert verdict["calibrated"] is True and verdict["calibration"] is None
    assert verdict["update_auc"]["fraction"] == 0.2 and verdict["update_auc"]["method"] == "signals"
    assert verdict["prior"] is None, "the factory's records do not say whether Adam was bias-corrected"
    outside = diagnose(root / "steps96" / "rte-default-s1", until=0.2).as_json()  # the shipped bank: 384 wide
    assert outside["calibrated"] is False and outside["predicted_failure"] is None
    assert outside["calibration"].startswith("32 wide") and \
        "outside the bank (bert, 6 layers, 384 wide, 2 classes" in outside["calibration"]
    assert json.loads(json.dumps(outside)) == outside


def test_a_flagged_bias_corrected_run_is_not_told_to_use_bias_correction(tmp_path, caplog):
    """The live warning's advice leaves out what the run already does; a run outside the shipped bank (a tiny
    model) gets no P(fail) and is judged by its collapse score."""
    warning = EarlyWarning(window_end=6, threshold=math.inf, total_steps=10)
    with caplog.at_level(logging.INFO, logger="probes.early_failure.warning"):
        result = run_loop(LoopConfig(steps=10, probe_list=[probes.GradientNorms(), warning]), tmp_path / "r.h5")
    said = [r.getMessage() for r in caplog.records if r.name == "probes.early_failure.warning"]
    assert len(said) == 1 and "early warning at step 6" in said[0]
    assert "bias-corrected Adam" not in said[0] and "a lower learning rate" in said[0]
    assert "not calibrated: 4 layers, 32 wide, 10 steps: outside the bank (bert, 6 layers" in said[0]
    assert warning.verdict is not None and not warning.verdict.calibrated
    assert math.isnan(result.records.series("early_warning").column("probability")[0])


@pytest.mark.parametrize("text", ["not json", '{"models": {"0.2": {"features": ["collapse"]}}}'])
def test_a_malformed_predictor_file_is_one_line_naming_the_fix(tmp_path, text):
    from probes.records import RecordsError

    (tmp_path / "p.json").write_text(text)
    with pytest.raises(RecordsError, match=r"is not a predictor file .*--fit CSV --predictor-out PATH") as error:
        PredictorFile.load(tmp_path / "p.json")
    assert "\n" not in str(error.value)


def test_diagnose_reads_the_dev_metric_so_far_as_dodge_would(bank, tmp_path):
    """The last evaluation a run seen through the first F of its steps had (an evaluation after n updates counts
    once step n - 1 is seen), against the summary's majority baseline."""
    root, fitted = bank
    path = tmp_path / "predictor.json"
    path.write_text(fitted.to_json())
    folder = root / "steps200" / "rte-default-s0"
    evals = open_run(folder / "run.h5").series("eval", "scalars")
    majority = open_run(folder / "run.h5").summary["majority"]
    for share, step in ((0.2, 40), (0.19, 20), (0.3, 60), (1.0, 200)):
        dev = diagnose(folder, until=share, predictor=path).verdict.dev
        expected = float(evals.values[list(evals.steps).index(step), 0])
        assert (dev.metric, dev.step, dev.value, dev.majority) == ("accuracy", step, expected, majority), share
        assert dev.at_baseline == (expected <= majority)
    dev = diagnose(folder, until=0.2, predictor=path).verdict.dev
    words = diagnose(folder, until=0.2, predictor=path).text()
    where = "at" if dev.at_baseline else "above"
    assert f"dev metric so far: accuracy {dev.value:.3f} after 40 steps, {where} the majority baseline " \
           f"({majority:.3f})" in words


def test_dodge_cells_count_the_bank_runs_at_and_above_the_baseline():
    """Against a count by hand over the committed 200-step table: the runs without bias correction at lr 1.25e-4
    whose dev metric at 20% was at or below the majority baseline, and how many of them failed."""
    table = Path(__file__).resolve().parents[1] / "data" / "seed_bank" / "long.csv"
    lines = [line.split(",") for line in table.read_text().splitlines()]
    header = lines[0]
    column = {name: i for i, name in enumerate(header)}
    rows = read_table(table)
    chosen = [row for row in lines[1:] if row[column["correct_bias"]] == "False"
              and float(row[column["lr"]]) == 1.25e-4 and float(row[column["fraction"]]) == 0.2
              and row[column["dev_metric"]] not in ("", "nan")]
    at = [row for row in chosen if float(row[column["dev_metric"]]) <= float(row[column["majority"]])]
    cells = {(c.correct_bias, c.lr, c.fraction, c.at_baseline): c for c in dev_cells(rows)}
    cell = cells[(False, 1.25e-4, 0.2, True)]
    assert (cell.runs, cell.failed) == (len(at), sum(row[column["failed"]] == "True" for row in at))
    above = cells.get((False, 1.25e-4, 0.2, False))
    assert (above.runs if above else 0) == len(chosen) - len(at)
    shipped = PredictorFile.load(MODEL_FILE).dev_cell(Profile(correct_bias=False, lr=1.25e-4), 0.2, True)
    assert (shipped.runs, shipped.failed) == (cell.runs, cell.failed), "refit the shipped file: seed_bank --fit"

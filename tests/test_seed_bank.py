"""The seed bank's grid and order, and its feature table round trip (write, read, benchmark) on real records."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

import records_factory
from diagnostics.early_features import read_table, write_table
from diagnostics.embedded import DEFAULT_MODEL
from diagnostics.finetune import finished_run
from diagnostics.seed_bank import BankConfig, build, main
from probes import records
from probes.early_failure.signals import FEATURES


def test_grid_runs_seed_by_seed_with_the_corrected_recipe_after_its_seed():
    config = BankConfig(Path("bank"), tasks=["hedge", "polarity"], lrs=[1e-4, 2e-4], corrected_lrs=[2e-4],
                        seeds=3, corrected_seeds=2)
    runs = config.runs()
    assert len(runs) == 3 * 2 * 2 + 2 * 2
    order = [(r.seed, r.recipe, r.lr, r.task) for r in runs]
    assert order[:6] == [(0, "default", 1e-4, "hedge"), (0, "default", 1e-4, "polarity"),
                         (0, "default", 2e-4, "hedge"), (0, "default", 2e-4, "polarity"),
                         (0, "mosbach", 2e-4, "hedge"), (0, "mosbach", 2e-4, "polarity")]
    assert all(r.precision == "fp32" and r.threads == 1 and r.out == Path("bank") / f"lr{r.lr:g}" for r in runs)
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)


def test_feature_table_round_trip_and_benchmark(tmp_path, capsys):
    for seed in range(1, 7):
        out = tmp_path / "runs" / "lr2e-05" / f"rte-default-s{seed}"
        out.mkdir(parents=True)
        records_factory.finetune_run(out / "run.h5", failed=seed % 2 == 1, seed=seed, steps=60, forgetting=False)
    assert write_table(tmp_path / "runs", tmp_path / "features.csv") == 6
    rows = read_table(tmp_path / "features.csv")
    assert len(rows) == 6 * 5 and {row["fraction"] for row in rows} == {0.05, 0.1, 0.15, 0.2, 0.3}
    assert {row["run"] for row in rows} == {f"lr2e-05/rte-default-s{seed}" for seed in range(1, 7)}
    assert all(row["failed"] == (row["seed"] % 2 == 1) and set(FEATURES) <= row.keys() for row in rows)
    assert main(["--benchmark", str(tmp_path / "features.csv")]) == 0
    printed = capsys.readouterr().out
    assert "Seed bank: 6 runs" in printed and "| 20% | config + signals |" in printed


def test_bad_table_is_one_line(tmp_path, capsys):
    assert main(["--benchmark", str(tmp_path / "missing.csv")]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_the_bank_runs_on_the_model_it_is_given():
    config = BankConfig(Path("bank"), model=Path("my-model"), tasks=["lexical"], lrs=[1e-5], seeds=2,
                        corrected_seeds=0)
    assert [(r.model, r.task, r.lr) for r in config.runs()] == [(Path("my-model"), "lexical", 1e-5)] * 2
    assert BankConfig(Path("bank")).runs()[0].model == DEFAULT_MODEL


@pytest.mark.parametrize("args, message", [
    (["--model", "nowhere"], "--model"),
    (["--task", "no-such-task"], "no-such-task"),
])
def test_bad_model_or_task_is_one_line(tmp_path, capsys, args, message):
    assert main(["--out", str(tmp_path / "bank"), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bank").exists()


def test_fit_needs_both_outcomes(tmp_path, capsys):
    for seed in range(1, 4):
        out = tmp_path / "runs" / f"rte-default-s{seed}"
        out.mkdir(parents=True)
        records_factory.finetune_run(out / "run.h5", failed=True, seed=seed, steps=60, forgetting=False)
    write_table(tmp_path / "runs", tmp_path / "features.csv")
    assert main(["--fit", str(tmp_path / "features.csv"), "--predictor-out", str(tmp_path / "p.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "all failed" in err and not (tmp_path / "p.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (DEFAULT_MODEL / "model.safetensors").exists(), reason="embedded default not built")
def test_build_runs_the_grid_in_workers_and_a_rerun_skips_finished_runs(tmp_path):
    config = BankConfig(tmp_path / "bank", tasks=["hedge"], lrs=[2e-4], corrected_lrs=[2e-4], seeds=1,
                        corrected_seeds=1, workers=2, epochs=1, max_length=16, train_examples=32, dev_examples=16)
    assert build(config) == 2
    for run in config.runs():
        assert finished_run(run.run_dir("hedge")) is not None
        assert records.open_run(run.run_dir("hedge") / "run.h5").series("train").steps.size == 2
    assert build(config) == 0


def test_the_table_carries_the_model_and_older_tables_read_blank(tmp_path):
    """Model columns from the checkpoint a run saved beside its records; the committed table predates them."""
    import tiny

    for seed in range(2):
        out = tmp_path / "runs" / f"rte-default-s{seed}"
        (out / "step0").mkdir(parents=True)
        tiny.config("roberta", len(tiny.tokenizer()), layers=3).save_pretrained(out / "step0")
        records_factory.finetune_run(out / "run.h5", failed=seed == 0, seed=seed, steps=40, forgetting=False)
    write_table(tmp_path / "runs", tmp_path / "features.csv")
    rows = read_table(tmp_path / "features.csv")
    assert {(row["model_type"], row["layers"], row["hidden"], row["classes"]) for row in rows} == {("roberta", 3, 32, 2)}
    committed = Path(__file__).resolve().parents[1] / "data" / "seed_bank" / "features.csv"
    if "model_type" not in committed.read_text().splitlines()[0]:  # a table written before the model columns
        assert all(row["model_type"] == "" and math.isnan(row["layers"]) for row in read_table(committed))

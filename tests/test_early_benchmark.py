"""The early-failure benchmark's maths against plain oracles: the window features, ROC AUC, the logistic fit, and
the grouped-by-seed scoring that never lets a fit see the runs it scores."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import minimize

from probes.early_failure.benchmark import held_out_probabilities, roc_auc, score
from probes.early_failure.signals import FEATURES, log_growth, late_level, window_features
from probes.early_failure.predictor import Predictor


def test_window_features_read_the_quarters_of_the_window():
    steps = np.arange(21)
    signals = {"encoder_norm": (steps, np.where(steps < 10, 1e-1, 1e-4)),
               "head_ratio": (steps, np.where(steps < 10, 10.0, 1e4)),
               "loss_ratio": (steps, np.linspace(1.0, 0.5, 21)),
               "moment_encoder": (steps, np.full(21, 1e-6)), "moment_head": (steps, np.full(21, 1e-3))}
    found = window_features(signals, 20)
    assert found["collapse"] == pytest.approx(-3.0)
    assert found["head_ratio"] == pytest.approx(4.0) and found["head_ratio_growth"] == pytest.approx(3.0)
    assert found["loss_ratio"] == pytest.approx(np.median(np.linspace(1.0, 0.5, 21)[15:]))
    assert found["moment_ratio"] == pytest.approx(3.0)
    assert math.isnan(found["majority_share"]), "a signal nobody recorded is missing, not zero"
    assert set(found) == set(FEATURES)
    assert math.isnan(late_level(steps[:3], np.ones(3), 20)) and math.isnan(log_growth(steps, np.zeros(21), 20))


def test_roc_auc_is_the_share_of_correctly_ordered_pairs():
    rng = np.random.default_rng(0)
    scores, positive = rng.integers(0, 5, 40).astype(float), rng.random(40) < 0.4
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[positive] for n in scores[~positive]]
    assert roc_auc(scores, positive) == pytest.approx(np.mean(pairs))
    assert math.isnan(roc_auc(scores, np.ones(40, dtype=bool)))


def test_logistic_fit_minimises_the_penalised_likelihood():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3)) * [1.0, 5.0, 0.1] + [0.0, 2.0, -1.0]
    y = (x[:, 0] + 0.2 * x[:, 1] + rng.normal(size=60) > 0.4)
    model = Predictor.fit(x, y, ("a", "b", "c"), penalty=1.0)
    z = (x - np.array(model.mean)) / np.array(model.scale)

    def objective(w):
        t = w[0] + z @ w[1:]
        return np.sum(np.logaddexp(0, t) - y * t) + 0.5 * np.sum(w[1:] ** 2)

    oracle = minimize(objective, np.zeros(4), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose([model.intercept, *model.coef], oracle, atol=1e-5)
    p = 1 / (1 + np.exp(-(oracle[0] + z @ oracle[1:])))
    np.testing.assert_allclose(model.probability(x), p, atol=1e-6)
    again = Predictor.from_json(model.to_json())
    np.testing.assert_allclose(again.probability(x), model.probability(x))
    assert model.probability_of({"a": 0.0}) == pytest.approx(float(model.probability([[0.0, np.nan, np.nan]])[0]))


def _rows(seeds: int = 10, recipes=("default",)) -> list[dict]:
    rng = np.random.default_rng(2)
    rows = []  # one informative feature, the loss ratio (the plateau at 1 for failed runs), the others constant
    for seed in range(seeds):
        for recipe in recipes:
            failed = recipe == "default" and seed % 2 == 0
            features = {name: 0.0 for name in FEATURES}
            features["loss_ratio"] = 1.0 + rng.normal(0, 0.01) if failed else 0.6 + rng.normal(0, 0.01)
            rows.append({"run": f"{recipe}-s{seed}", "seed": seed, "failed": failed, "steps": 100,
                         "correct_bias": recipe != "default", "fraction": 0.2, **features})
    return rows


def test_held_out_scores_never_depend_on_their_own_labels():
    rows = _rows()
    rows = [{**row, "collapse": float(np.random.default_rng(row["seed"]).normal())} for row in rows]
    before = held_out_probabilities(rows)
    flipped = [{**row, "failed": not row["failed"]} if row["seed"] in (0, 5) else row for row in rows]
    after = held_out_probabilities(flipped)
    own = np.array([row["seed"] in (0, 5) for row in rows])  # seeds 0 and 5 share a group of 5
    np.testing.assert_array_equal(before[own], after[own])
    assert not np.allclose(before[~own], after[~own]), "the flipped labels do train the other groups' models"


def test_score_counts_and_compute_saved():
    rows = _rows(recipes=("default", "mosbach"))
    default, everything = score(rows, "default", 0.2), score(rows, "all", 0.2)
    assert (default.runs, default.failed, everything.runs, everything.failed) == (10, 5, 20, 5)
    assert default.precision == 1.0 and default.recall == 1.0 and default.auc == 1.0
    assert default.saved == pytest.approx(5 * 0.8 * 100 / 1000)
    assert everything.saved == pytest.approx(5 * 0.8 * 100 / 2000)


@pytest.mark.slow
def test_report_early_and_plots_early_end_to_end(tmp_path, repo_root):
    """Records of runs whose failures collapse (tests/records_factory.py): the report prints the held-out table
    and the figure is drawn, each in its own process."""
    import records_factory

    for seed in range(1, 11):
        out = tmp_path / "runs" / f"rte-default-s{seed}"
        out.mkdir(parents=True)
        records_factory.finetune_run(out / "run.h5", failed=seed % 2 == 1, seed=seed, steps=100, forgetting=False)
    report = subprocess.run([sys.executable, "-m", "diagnostics.report", str(tmp_path / "runs"), "--early"],
                            capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert report.returncode == 0, report.stderr
    row = next(line for line in report.stdout.splitlines() if line.startswith("| default | 20% |"))
    assert row.split("|")[3:7] == [" 10 ", " 5 ", " 1.00 ", " 1.00 "]
    figure = subprocess.run([sys.executable, "-m", "plots", "early", str(tmp_path / "runs"), "-o",
                             str(tmp_path / "early.png")], capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert figure.returncode == 0, figure.stderr
    assert (tmp_path / "early.png").stat().st_size > 10_000


def test_the_shipped_model_covers_every_fraction_and_feature():
    """probes/early_failure/model.json (fitted on the committed seed bank by `seed_bank --fit`)."""
    from probes.early_failure.benchmark import FRACTIONS
    from probes.early_failure.predictor_file import MODEL_FILE, PredictorFile

    if not MODEL_FILE.is_file():
        pytest.skip("no fitted model shipped yet")
    shipped = PredictorFile.load(MODEL_FILE)
    assert sorted(shipped.models) == list(FRACTIONS) and shipped.domain is not None and shipped.priors
    for fraction in FRACTIONS:
        model = shipped.models[fraction]
        assert model.fraction == pytest.approx(fraction) and model.features == FEATURES
        assert 0.0 <= model.probability_of({}) <= 1.0

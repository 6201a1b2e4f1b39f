"""Generalisation variance: prediction disagreement and linear CKA between seeds, against direct numpy on
hand-made predictions and matrices, and through the report command on real records files."""
from __future__ import annotations

import json
import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest

from diagnostics import instability
from probes.model.similarity import disagreement, linear_cka, mean_pairwise
from probes.records import RunMeta, RunWriter, write_grid, write_summary


def cka_by_gram_matrices(x: np.ndarray, y: np.ndarray) -> float:
    """The oracle: CKA as normalised HSIC of the example-space Gram matrices, with the centring matrix H
    (Kornblith et al. 2019, eq. 3-4), a different route from the feature-space formula under test."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(k: np.ndarray, l: np.ndarray) -> float:
        return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2

    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_disagreement_counts_differing_labels():
    assert disagreement([0, 1, 1, 0], [0, 1, 0, 1]) == 0.5
    assert disagreement(np.array([2, 2, 2]), np.array([2, 2, 2])) == 0.0
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    assert disagreement(a, b) == pytest.approx(sum(x != y for x, y in zip(a, b)) / 50)
    with pytest.raises(ValueError, match="same examples"):
        disagreement([0, 1], [0, 1, 1])


def test_linear_cka_matches_the_gram_matrix_route_and_its_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = x @ rng.normal(size=(6, 4)) + 0.5 * rng.normal(size=(40, 4))
    assert linear_cka(x, y) == pytest.approx(cka_by_gram_matrices(x, y), rel=1e-10)
    z = rng.normal(size=(40, 9))
    assert linear_cka(x, z) == pytest.approx(cka_by_gram_matrices(x, z), rel=1e-10)
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, 3.0 * x @ rotation + 7.0) == pytest.approx(1.0)  # rotation, scale and shift
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x))
    assert np.isnan(linear_cka(x, np.ones((40, 3))))  # no variance: undefined
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, z[:30])


def test_mean_pairwise_is_the_mean_over_unordered_pairs():
    items = [1.0, 4.0, 6.0]
    assert mean_pairwise(items, lambda a, b: abs(a - b)) == pytest.approx((3 + 5 + 2) / 3)
    assert np.isnan(mean_pairwise(items[:1], lambda a, b: 0.0))


# ----------------------------------------------------------------------------------------------- from records

PREDICTIONS = {  # final dev predictions of four seeds on six dev examples; seed 3 failed (one class everywhere)
    0: [0, 1, 1, 0, 1, 0], 1: [0, 1, 0, 0, 1, 1], 2: [1, 1, 1, 0, 1, 0], 3: [1, 1, 1, 1, 1, 1]}
FAILED = {0: False, 1: False, 2: False, 3: True}


def representations(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(6, 5))


def write_run(folder, seed: int, with_outputs: bool = True):
    path = folder / f"toy-mosbach-s{seed}" / "run.h5"
    path.parent.mkdir(parents=True)
    with RunWriter.create(path, RunMeta(task="toy", recipe="mosbach", seed=seed)) as run:
        if with_outputs:
            run.add_series(instability.DEV_PREDICTIONS, [str(i) for i in range(6)], kind=instability.KIND)
        run.start()
        if with_outputs:
            run.append(instability.DEV_PREDICTIONS, 5, [0] * 6)  # an earlier evaluation: not the final one
            run.append(instability.DEV_PREDICTIONS, 10, PREDICTIONS[seed])
    if with_outputs:
        write_grid(path, instability.DEV_CLS, {"example": np.arange(6), "unit": np.arange(5)},
                   {"cls": representations(seed)}, kind=instability.KIND)
    write_summary(path, {"final_dev_metric": 0.0 if FAILED[seed] else 0.6 + 0.01 * seed, "metric": "accuracy",
                         "majority": 0.0, "failed": FAILED[seed]})


def direct(seeds: list[int]) -> tuple[float, float]:
    pairs = list(combinations(seeds, 2))
    share = np.mean([np.mean(np.array(PREDICTIONS[a]) != np.array(PREDICTIONS[b])) for a, b in pairs])
    cka = np.mean([cka_by_gram_matrices(representations(a), representations(b)) for a, b in pairs])
    return float(share), float(cka)


def test_report_gives_disagreement_and_cka_over_successful_and_all_seeds(tmp_path, repo_root):
    for seed in PREDICTIONS:
        write_run(tmp_path / "runs", seed)
    out = subprocess.run([sys.executable, "-m", "diagnostics.report", str(tmp_path / "runs"), "--json"],
                         capture_output=True, text=True, cwd=repo_root, check=True)
    (row,) = json.loads(out.stdout)
    successful, everyone = direct([0, 1, 2]), direct([0, 1, 2, 3])
    assert row["disagreement"] == pytest.approx(successful[0]) and row["cka"] == pytest.approx(successful[1])
    assert row["disagreement_all"] == pytest.approx(everyone[0]) and row["cka_all"] == pytest.approx(everyone[1])
    assert row["seeds_measured"] == 4
    text = subprocess.run([sys.executable, "-m", "diagnostics.report", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=repo_root, check=True).stdout
    assert "| disagreement | CKA |" in text
    assert f"| {100 * successful[0]:.1f} | {successful[1]:.3f} |" in text


def test_runs_without_prediction_records_give_no_measure(tmp_path):
    from diagnostics.report import ReportConfig, run

    for seed in (0, 1):
        write_run(tmp_path, seed, with_outputs=False)
    report = run(ReportConfig(runs=[str(tmp_path)]))
    measures = report.measures[("toy", "mosbach")]
    assert np.isnan(measures.disagreement) and np.isnan(measures.cka) and measures.seeds_measured == 0
    assert "| - | - |" in report.markdown()
    assert report.json_rows()[0]["disagreement"] is None

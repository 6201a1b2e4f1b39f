"""The early-failure protocol on synthetic seed banks whose truth is known: within-cell AUC against counting pairs
by hand, the configuration alone at exactly 0.5 inside a cell, a signal that knows the seed found (small p,
interval above 0.5), one that does not left at chance, Dodge's rule read off the dev metric."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from probes.early_failure.protocol import (METHODS, bootstrap_interval, evaluate, paired_difference, permutation_p,
                                          scores, seed_groups, uncertain_cells, within_cell_auc)
from probes.early_failure.signals import FEATURES


def _bank(seeds: int = 60, signal: float = 2.0, rng_seed: int = 0) -> list[dict]:
    """Two tasks x lr {1e-4: rarely fails, 2e-4: fails about half the time, 4e-4: always}; within a cell the
    outcome follows a hidden per-seed draw that ``collapse`` sees with strength ``signal`` (0: not at all) and
    the dev metric at 20% sees perfectly for half the runs."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for task, lr, seed in itertools.product(("a", "b"), (1e-4, 2e-4, 4e-4), range(seeds)):
        hidden = rng.normal()
        rate = {1e-4: 0.05, 2e-4: 0.5, 4e-4: 1.0}[lr]
        failed = bool(hidden < np.quantile(np.random.default_rng(1).normal(size=10000), rate)) if 0 < rate < 1 \
            else rate == 1.0 or rng.random() < rate
        features = {name: float(rng.normal()) for name in FEATURES}
        features["collapse"] = -signal * hidden + rng.normal()
        dev = 0.0 if failed and seed % 2 == 0 else 0.3 + 0.1 * rng.random()
        rows.append({"run": f"{task}-{lr}-s{seed}", "task": task, "recipe": "default", "lr": lr,
                     "correct_bias": False, "seed": seed, "steps": 200, "final_dev_metric": 0.0 if failed else 0.4,
                     "majority": 0.0, "failed": failed, "fraction": 0.2, "dev_metric": dev, **features})
    return rows


def test_within_cell_auc_counts_pairs_of_the_same_cell_only():
    rng = np.random.default_rng(3)
    score, failed = rng.normal(size=40), rng.random(40) < 0.5
    cells = np.repeat(["x", "y", "z", "w"], 10)
    wins = pairs = 0.0
    for i, j in itertools.product(range(40), range(40)):
        if cells[i] == cells[j] and failed[i] and not failed[j]:
            pairs += 1
            wins += 1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0
    assert within_cell_auc(score, failed, cells) == pytest.approx(wins / pairs)
    shifted = score + np.where(cells == "x", 100.0, 0.0)  # a cell's offset changes no within-cell comparison
    assert within_cell_auc(shifted, failed, cells) == pytest.approx(wins / pairs)


def test_only_the_cells_where_seeds_differ_are_uncertain():
    cells = uncertain_cells(_bank())
    assert [(task, lr) for task, _, lr, _, _ in cells] == [("a", "0.0002"), ("b", "0.0002")]


def test_a_signal_that_sees_the_seed_wins_inside_the_cells_and_the_configuration_does_not():
    protocol = evaluate(_bank(signal=2.0), (0.2,), resamples=200)
    found = {r.method: r for r in protocol.results}
    assert set(found) == set(METHODS)
    assert found["config"].within == 0.5 and found["fail every run"].within == 0.5
    assert found["config"].pooled > 0.85  # pooled, the learning rate says nearly everything (at most ~0.89 here)
    assert found["signals"].within > 0.75 and found["signals"].low > 0.5 and found["signals"].p < 0.01
    assert found["Dodge"].within > 0.6 and found["Dodge"].precision == 1.0
    assert protocol.features[0.2]["collapse"][0] > 0.75  # higher in failed runs here: AUC above 0.5


def test_a_signal_blind_to_the_seed_stays_at_chance():
    protocol = evaluate(_bank(signal=0.0, rng_seed=5), (0.2,), resamples=200)
    blind = next(r for r in protocol.results if r.method == "signals")
    assert blind.low < 0.5 < blind.high and blind.p > 0.05


def test_fitted_scores_are_held_out_by_seed_group():
    rows = _bank(seeds=20)
    groups = seed_groups(rows)
    assert all(len({g for r, g in zip(rows, groups) if r["seed"] == s}) == 1 for s in range(20))
    before = scores(rows)["signals"]
    flipped = [{**row, "failed": not row["failed"]} if groups[i] == 0 else row for i, row in enumerate(rows)]
    after = scores(flipped)["signals"]
    np.testing.assert_array_equal(before[groups == 0], after[groups == 0])


def test_interval_and_p_value_of_a_perfect_score():
    failed = np.array([True, False] * 20)
    cells = np.repeat(["x", "y"], 20)
    score = failed.astype(float)
    assert bootstrap_interval(score, failed, cells, resamples=200) == (1.0, 1.0)
    assert permutation_p(score, failed, cells, resamples=200) == pytest.approx(1 / 201)
    assert math.isnan(within_cell_auc(score, np.zeros(40, dtype=bool), cells))


def test_head_to_head_with_dodge_compares_the_same_runs():
    """The difference is that of the two within-cell AUCs on the runs both score (a run without a dev evaluation
    is left out of both); a perfect score against its reverse differs by exactly 1 in every resample."""
    rows = _bank(signal=2.0)
    for i, row in enumerate(rows):
        if i % 3 == 0:
            row["dev_metric"] = math.nan  # not evaluated there
    protocol = evaluate(rows, (0.2,), resamples=100)
    duel = next(d for d in protocol.against_dodge if d.method == "signals")
    found = scores(rows)
    cells = uncertain_cells(rows)
    keep = np.array([(row["task"], f"{float(row['lr']):g}") in {(t, lr) for t, _, lr, _, _ in cells} for row in rows])
    keep &= np.isfinite(found["Dodge"])
    failed = np.array([row["failed"] for row in rows])
    keys = np.array([f"{row['task']}|{row['lr']}|{group}" for row, group in zip(rows, seed_groups(rows))])
    assert duel.runs == int(keep.sum())
    assert duel.auc == pytest.approx(within_cell_auc(found["signals"][keep], failed[keep], keys[keep]))
    assert duel.dodge == pytest.approx(within_cell_auc(found["Dodge"][keep], failed[keep], keys[keep]))
    assert duel.difference == pytest.approx(duel.auc - duel.dodge) and duel.low <= duel.difference <= duel.high
    perfect = np.array([True, False] * 20, dtype=float)
    assert paired_difference(perfect, -perfect, perfect.astype(bool), np.repeat(["x", "y"], 20),
                             resamples=50) == (1.0, 1.0, 1.0)

"""The early-failure benchmark: features and outcomes of finished runs, and the predictor scored on held-out seeds.

For each fraction of training seen (5, 10, 15, 20, 30% of the steps) every finished run gets its early features
(:func:`probes.early_failure.signals.features_at`). The logistic predictor
(:class:`probes.early_failure.predictor.Predictor`) is fitted and scored by seed: the seeds are dealt into ``folds``
groups, and each group's runs are scored by a model fitted on the runs of all other seeds, so no run is ever scored by a
fit that saw it or any run sharing its seed (same head initialisation and data order). Precision and recall (flagged at
P(fail) >= 0.5) and ROC AUC add up the held-out groups, in two scopes: ``default``, the runs without bias correction
(failed against surviving seeds of the same recipe), and ``all``, every recipe. Stopping the flagged runs at that point
saves their remaining steps. Numpy, scipy and the records reader only: ``diagnostics.report --early`` prints it and
``plots early`` draws it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy.stats import rankdata

from probes import catalogue
from probes.early_failure.domain import run_profile
from probes.early_failure.signals import FEATURES, features_at
from probes.early_failure.predictor import FLAG_AT, Predictor
from probes.records import RunRecords, iter_runs, open_run

FRACTIONS = (0.05, 0.10, 0.15, 0.20, 0.30)
FOLDS = 5
SCOPES = ("default", "all")
MIN_SCORED = 10  # a scope with fewer runs, or with one outcome only, is not scored: its numbers would mean nothing
UNSCORED = "too few runs to score"
OUTCOME_COLUMNS = ("run", "task", "recipe", "lr", "correct_bias", "seed", "steps", "final_dev_metric", "majority",
                   "failed", "model_type", "layers", "hidden", "classes")


def outcome(run) -> dict:
    """The columns of :data:`OUTCOME_COLUMNS` for a finished run (the model's columns blank where the records do
    not say; :func:`probes.early_failure.domain.run_profile`)."""
    config = run.meta.get("config", {}) or {}
    profile = run_profile(run)
    recipe = config.get("resolved_recipe", {}) or {}
    path = Path(run.path)
    name = f"{path.parent.parent.name}/{path.parent.name}" if path.name == "run.h5" else path.stem
    return {"run": name, "task": run.meta.get("task", ""), "recipe": run.meta.get("recipe", ""),
            "lr": recipe.get("lr", math.nan), "correct_bias": recipe.get("correct_bias", ""),
            "seed": int(run.meta.get("seed", -1)), "steps": int(run.summary["steps"]),
            "final_dev_metric": float(run.summary["final_dev_metric"]),
            "majority": float(run.summary.get("majority", math.nan)), "failed": bool(run.summary["failed"]),
            "model_type": profile.model_type or "", **{key: "" if getattr(profile, key) is None else
                                                       getattr(profile, key) for key in ("layers", "hidden", "classes")}}


def table(paths: list[str | Path], fractions: tuple[float, ...] = FRACTIONS) -> list[dict]:
    """One row per finished run under ``paths`` and fraction: outcome columns, ``fraction``, the features."""
    return rows_of((open_run(path) for path in iter_runs(paths)), fractions)


def rows_of(runs: Iterable[RunRecords], fractions: tuple[float, ...] = FRACTIONS) -> list[dict]:
    """The rows of :func:`table` for records already read (unfinished runs are left out)."""
    return [{**outcome(run), "fraction": fraction, "dev_metric": dev_metric_at(run, fraction),
             **features_at(run, fraction)}
            for run in runs if "final_dev_metric" in run.summary for fraction in fractions]


def dev_metric_at(run: RunRecords, fraction: float) -> float:
    """The dev metric of the first evaluation at or after ``fraction`` of the steps, if it came within the next 5%
    of the steps (what Dodge et al.'s rule reads at that point); NaN when the run was not evaluated there."""
    if not run.has(catalogue.EVAL):
        return math.nan
    evals, steps = run.get(catalogue.EVAL), int(run.summary["steps"])
    at = [i for i, step in enumerate(evals.steps) if fraction * steps - 1e-9 <= step <= (fraction + 0.05) * steps]
    return float(evals.values[at[0], 0]) if at else math.nan


@dataclass(frozen=True)
class HeldOut:
    """The predictor's held-out score in one scope at one fraction of training seen."""

    scope: str
    fraction: float
    runs: int
    failed: int
    true_positives: int
    false_positives: int
    auc: float
    saved: float  # share of the scope's steps a sweep saves by stopping the flagged runs there

    @property
    def scorable(self) -> bool:
        """At least :data:`MIN_SCORED` runs and both outcomes among them (else every score is empty or 1.00)."""
        return self.runs >= MIN_SCORED and 0 < self.failed < self.runs

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else math.nan

    @property
    def recall(self) -> float:
        return self.true_positives / self.failed if self.failed else math.nan


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney); NaN if one class
    is missing."""
    scores, positive = np.asarray(scores, dtype="f8"), np.asarray(positive, dtype=bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def held_out(x: np.ndarray, failed: np.ndarray, groups: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """P(fail) of every row from a model fitted on the rows of the other groups only (a group whose training rows
    hold one class gets that class's rate)."""
    probabilities = np.full(len(x), math.nan)
    for group in np.unique(groups):
        test, train = groups == group, groups != group
        if not train.any():
            continue
        if failed[train].all() or not failed[train].any():
            probabilities[test] = float(failed[train].mean())
            continue
        probabilities[test] = Predictor.fit(x[train], failed[train], names).probability(x[test])
    return probabilities


def seed_groups(rows: list[dict], folds: int = FOLDS) -> np.ndarray:
    """Seeds dealt into ``folds`` groups in order, so runs sharing a seed stay together."""
    seeds = sorted({row["seed"] for row in rows})
    group_of = {seed: i % min(folds, len(seeds)) for i, seed in enumerate(seeds)}
    return np.array([group_of[row["seed"]] for row in rows])


def held_out_probabilities(rows: list[dict], folds: int = FOLDS) -> np.ndarray:
    """P(fail) of every row from a predictor on the early features fitted on the rows of the other seed groups."""
    x = np.array([[row[name] for name in FEATURES] for row in rows], dtype="f8")
    failed = np.array([row["failed"] for row in rows], dtype=bool)
    return held_out(x, failed, seed_groups(rows, folds), FEATURES)


def score(rows: list[dict], scope: str, fraction: float) -> HeldOut:
    """The held-out score of the rows at ``fraction`` in ``scope``."""
    chosen = [row for row in rows if row["fraction"] == fraction and (scope == "all" or not _corrected(row))]
    p = held_out_probabilities(chosen)
    failed = np.array([row["failed"] for row in chosen], dtype=bool)
    steps = np.array([row["steps"] for row in chosen], dtype="f8")
    flagged = p >= FLAG_AT
    saved = float(((1 - fraction) * steps[flagged]).sum() / steps.sum()) if len(chosen) else math.nan
    return HeldOut(scope, fraction, len(chosen), int(failed.sum()), int((flagged & failed).sum()),
                   int((flagged & ~failed).sum()), roc_auc(p, failed), saved)


def univariate(rows: list[dict], fraction: float) -> dict[str, float]:
    """Each feature's own ROC AUC (the better direction, in-sample) over the default-recipe rows at ``fraction``."""
    at = [row for row in rows if row["fraction"] == fraction and not _corrected(row)]
    failed = np.array([row["failed"] for row in at], dtype=bool)
    aucs = {}
    for name in FEATURES:
        values = np.array([row[name] for row in at], dtype="f8")
        usable = np.isfinite(values)
        auc = roc_auc(values[usable], failed[usable])
        aucs[name] = max(auc, 1 - auc) if math.isfinite(auc) else math.nan
    return aucs


def _corrected(row: dict) -> bool:
    return str(row["correct_bias"]) in ("True", "true", "1")



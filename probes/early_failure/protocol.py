"""The early-failure protocol: does a run's own early signal know what its configuration does not?

A pooled score over a seed bank mostly measures the configuration: a high learning rate fails, a low one does
not, and any signal that tracks the learning rate looks good. So every method is scored where the question is
hard, inside the *uncertain cells*: runs of one configuration (task, recipe, learning rate, bias correction, run
length) whose failure rate lies between 15% and 85%, where only the seed differs. Within-cell ROC AUC pools the
cells' comparisons: a failed run against a surviving run of the same cell *scored by the same fitted model*
(the same group of held-out seeds). Comparing runs scored by different fits would reward a configuration model
for noise: leaving a group of seeds out lowers the cell's failure rate in training exactly when those seeds
failed, which makes held-out configuration scores anti-correlated with the outcome inside a cell. With one model
per comparison the configuration alone scores exactly 0.5 there, as it should. Intervals: bootstrap of runs within
their block (cell x seed group); p-value: outcomes shuffled within their block.

The methods, at each fraction of the steps seen:

* ``fail every run``: flags everything; no information (AUC 0.5).
* ``config``: a logistic model on the configuration alone (log10 lr, bias correction, log10 steps, task, recipe).
* ``Dodge``: Dodge et al. (2020)'s rule, no fitting: rank runs by the dev metric of the evaluation at that
  fraction, above the majority baseline; flagged when it is at or below the baseline.
* ``signals``: the logistic predictor on the early features of :mod:`probes.early_failure.signals`.
* ``config + signals``: both; its gain over ``config`` is what the signals add.

Fitted methods are scored held out by seed (:func:`held_out`): no run is scored by a fit that saw its seed. Also
leave-one-task-out and leave-one-lr-out: fitted on the other tasks (learning rates), scored on the held-out one,
pooled AUC. Whether a fitted method beats Dodge's rule is asked on the same runs (:class:`HeadToHead`: the uncertain
runs with a dev evaluation at that fraction), as the difference of the two within-cell AUCs with a paired bootstrap
interval. Numpy and scipy only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scipy.stats import rankdata

from probes.early_failure.benchmark import held_out, roc_auc, seed_groups
from probes.early_failure.signals import FEATURES
from probes.early_failure.predictor import FLAG_AT

UNCERTAIN = (0.15, 0.85)  # a cell's failure rate inside this range: its seeds really differ
MIN_CELL = 10  # runs a cell needs before its failure rate is read as uncertain
METHODS = ("fail every run", "config", "Dodge", "signals", "config + signals")
FITTED = {"config": "config", "signals": "signals", "config + signals": "both"}
RESAMPLES = 1000


def cell_of(row: dict) -> tuple:
    """A run's configuration: everything but the seed."""
    return (row["task"], row["recipe"], f"{float(row['lr']):g}", str(row["correct_bias"]), int(row["steps"]))


def uncertain_cells(rows: list[dict]) -> list[tuple]:
    """The cells with at least :data:`MIN_CELL` runs and a failure rate inside :data:`UNCERTAIN`."""
    outcomes: dict[tuple, list[bool]] = {}
    for row in rows:
        outcomes.setdefault(cell_of(row), []).append(bool(row["failed"]))
    return sorted(cell for cell, failed in outcomes.items()
                  if len(failed) >= MIN_CELL and UNCERTAIN[0] <= np.mean(failed) <= UNCERTAIN[1])


def config_matrix(rows: list[dict]) -> tuple[np.ndarray, tuple[str, ...]]:
    """The configuration as numbers: log10 lr, bias corrected, log10 steps, one column per task and recipe."""
    tasks = sorted({row["task"] for row in rows})
    recipes = sorted({row["recipe"] for row in rows})
    names = ("log10_lr", "bias_corrected", "log10_steps", *(f"task={t}" for t in tasks),
             *(f"recipe={r}" for r in recipes))
    x = [[math.log10(float(row["lr"])), float(str(row["correct_bias"]) in ("True", "true", "1")),
          math.log10(int(row["steps"])), *(float(row["task"] == t) for t in tasks),
          *(float(row["recipe"] == r) for r in recipes)] for row in rows]
    return np.array(x, dtype="f8").reshape(len(rows), len(names)), names


def design(rows: list[dict], which: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """The columns a fitted method uses: ``config``, ``signals`` or ``both``."""
    signals = np.array([[row.get(name, math.nan) for name in FEATURES] for row in rows], dtype="f8")
    signals = signals.reshape(len(rows), len(FEATURES))
    if which == "signals":
        return signals, FEATURES
    config, names = config_matrix(rows)
    if which == "config":
        return config, names
    return np.c_[config, signals], names + FEATURES


def dodge_score(rows: list[dict]) -> np.ndarray:
    """Higher for runs more likely to fail: the dev metric's margin over the majority baseline, negated."""
    return np.array([-(row.get("dev_metric", math.nan) - row["majority"]) for row in rows], dtype="f8")


def scores(rows: list[dict], groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every method's score per row (higher = more likely to fail), fitted methods held out by ``groups``."""
    groups = seed_groups(rows) if groups is None else groups
    failed = np.array([row["failed"] for row in rows], dtype=bool)
    found = {"fail every run": np.ones(len(rows)), "Dodge": dodge_score(rows)}
    for method, which in FITTED.items():
        x, names = design(rows, which)
        found[method] = held_out(x, failed, groups, names)
    return found


def flagged(method: str, score: np.ndarray) -> np.ndarray:
    """Which runs a method flags: P(fail) >= 0.5, or for Dodge a dev metric at or below the baseline."""
    if method == "Dodge":
        return np.nan_to_num(score, nan=-np.inf) >= 0
    return np.nan_to_num(score, nan=0.0) >= FLAG_AT


def within_cell_auc(score: np.ndarray, failed: np.ndarray, cells: np.ndarray) -> float:
    """ROC AUC over the pairs (failed run, surviving run) of the same cell: each cell's AUC weighted by its pairs.
    Runs without a score (NaN) are left out; NaN when no cell has both outcomes."""
    total = weight = 0.0
    for cell in np.unique(cells):
        inside = (cells == cell) & np.isfinite(score)
        pairs = float(failed[inside].sum() * (~failed[inside]).sum())
        if pairs:
            total += pairs * roc_auc(score[inside], failed[inside])
            weight += pairs
    return total / weight if weight else math.nan


def resampled(cells: np.ndarray, seed: int = 0, resamples: int = RESAMPLES):
    """Index arrays of the bootstrap: each resample draws every cell's runs with replacement, within the cell."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(cells == cell) for cell in np.unique(cells)]
    for _ in range(resamples if members else 0):
        yield np.concatenate([rng.choice(index, size=len(index)) for index in members])


def _percentiles(values: list[float]) -> tuple[float, float]:
    finite = np.array(values, dtype="f8")
    finite = finite[np.isfinite(finite)]
    return (float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))) if finite.size else \
        (math.nan, math.nan)


def bootstrap_interval(score: np.ndarray, failed: np.ndarray, cells: np.ndarray, seed: int = 0,
                       resamples: int = RESAMPLES) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of the within-cell AUC over resamples of runs within their cell (NaN for a
    bank without an uncertain cell)."""
    return _percentiles([within_cell_auc(score[chosen], failed[chosen], cells[chosen])
                         for chosen in resampled(cells, seed, resamples)])


def paired_difference(score: np.ndarray, other: np.ndarray, failed: np.ndarray, cells: np.ndarray, seed: int = 0,
                      resamples: int = RESAMPLES) -> tuple[float, float, float]:
    """Within-cell AUC of ``score`` minus that of ``other`` on the same runs, with the 95% interval of the
    difference over the same resamples for both (the runs either cannot score are left out of both)."""
    both = np.isfinite(score) & np.isfinite(other)
    score, other, failed, cells = score[both], other[both], failed[both], cells[both]
    difference = within_cell_auc(score, failed, cells) - within_cell_auc(other, failed, cells)
    return (difference, *_percentiles([within_cell_auc(score[chosen], failed[chosen], cells[chosen])
                                       - within_cell_auc(other[chosen], failed[chosen], cells[chosen])
                                       for chosen in resampled(cells, seed, resamples)]))


def permutation_p(score: np.ndarray, failed: np.ndarray, cells: np.ndarray, seed: int = 0,
                  resamples: int = RESAMPLES) -> float:
    """One-sided p-value of the within-cell AUC against outcomes shuffled within their cell."""
    observed = within_cell_auc(score, failed, cells)
    if not math.isfinite(observed):
        return math.nan
    rng = np.random.default_rng(seed)
    blocks = []  # per cell: the ranks of its scored runs (a shuffle moves outcomes, not ranks) and its outcomes
    for cell in np.unique(cells):
        inside = (cells == cell) & np.isfinite(score)
        positives = int(failed[inside].sum())
        if positives and positives < inside.sum():
            blocks.append((rankdata(score[inside]), failed[inside], positives))
    weight = sum(p * (len(r) - p) for r, _, p in blocks)
    above = 0
    for _ in range(resamples):
        total = 0.0
        for ranks, outcomes, positives in blocks:
            shuffled = rng.permutation(outcomes)
            total += ranks[shuffled].sum() - positives * (positives + 1) / 2
        above += total / weight >= observed - 1e-12
    return (above + 1) / (resamples + 1)


def comparisons(failed: np.ndarray, cells: np.ndarray) -> int:
    """How many (failed, surviving) pairs share a cell: the evidence behind a within-cell AUC."""
    return int(sum(failed[cells == cell].sum() * (~failed[cells == cell]).sum() for cell in np.unique(cells)))


@dataclass(frozen=True)
class MethodScore:
    """One method at one fraction: within the uncertain cells, pooled, and on held-out tasks and learning rates."""

    method: str
    fraction: float
    runs: int  # runs the method could score (Dodge: those with a dev evaluation at the fraction)
    pairs: int  # within-cell comparisons behind ``within`` (failed vs surviving, same cell, same fit)
    within: float
    low: float
    high: float
    p: float
    pooled: float
    precision: float
    recall: float
    task_out: float
    lr_out: float


@dataclass(frozen=True)
class HeadToHead:
    """A fitted method against Dodge's rule on the same runs (those with a dev evaluation at the fraction, inside
    the uncertain cells): each one's within-cell AUC and the difference with its paired 95% interval."""

    method: str
    fraction: float
    runs: int
    pairs: int
    auc: float
    dodge: float
    difference: float
    low: float
    high: float


@dataclass(frozen=True)
class Protocol:
    """The protocol's results over the fractions, and what they were computed on."""

    results: list[MethodScore]
    features: dict[float, dict[str, tuple[float, float, float]]]  # fraction -> feature -> within AUC, low, high
    cells: list[tuple]
    runs: int
    uncertain_runs: int
    uncertain_failed: int
    against_dodge: list[HeadToHead] = field(default_factory=list)


def evaluate(rows: list[dict], fractions: tuple[float, ...], resamples: int = RESAMPLES) -> Protocol:
    """Score every method at every fraction of ``rows`` (the seed bank's feature table); ``resamples`` for the
    intervals and p-values of the methods (a fifth of them for each feature's interval)."""
    cells = uncertain_cells([row for row in rows if row["fraction"] == fractions[0]])
    results, features, against_dodge = [], {}, []
    for fraction in fractions:
        at = [row for row in rows if row["fraction"] == fraction]
        failed = np.array([row["failed"] for row in at], dtype=bool)
        inside = np.array([cell_of(row) in cells for row in at])
        cell_keys = np.array([f"{cell_of(row)}|{group}" for row, group in zip(at, seed_groups(at))])
        found = scores(at)
        task_out = scores(at, np.array([row["task"] for row in at]))
        lr_out = scores(at, np.array([f"{float(row['lr']):g}" for row in at]))
        for method in METHODS:
            score, scored = found[method], np.isfinite(found[method])
            hit, lost = flagged(method, score) & scored, failed & scored
            chosen = inside & scored
            results.append(MethodScore(
                method, fraction, int(scored.sum()), comparisons(failed[chosen], cell_keys[chosen]),
                within_cell_auc(score[chosen], failed[chosen], cell_keys[chosen]),
                *bootstrap_interval(score[chosen], failed[chosen], cell_keys[chosen], resamples=resamples),
                permutation_p(score[chosen], failed[chosen], cell_keys[chosen], resamples=resamples),
                roc_auc(score[scored], failed[scored]),
                float((hit & failed).sum() / hit.sum()) if hit.any() else math.nan,
                float((hit & failed).sum() / lost.sum()) if lost.any() else math.nan,
                roc_auc(task_out[method][scored], failed[scored]),
                roc_auc(lr_out[method][scored], failed[scored])))
        evaluated = inside & np.isfinite(found["Dodge"])
        for method in ("signals", "config + signals"):
            chosen = evaluated & np.isfinite(found[method])
            against_dodge.append(HeadToHead(
                method, fraction, int(chosen.sum()), comparisons(failed[chosen], cell_keys[chosen]),
                within_cell_auc(found[method][chosen], failed[chosen], cell_keys[chosen]),
                within_cell_auc(found["Dodge"][chosen], failed[chosen], cell_keys[chosen]),
                *paired_difference(found[method][chosen], found["Dodge"][chosen], failed[chosen], cell_keys[chosen],
                                   resamples=resamples)))
        features[fraction] = {}
        for name in FEATURES:
            values = np.array([row.get(name, math.nan) for row in at], dtype="f8")[inside]
            auc = within_cell_auc(values, failed[inside], cell_keys[inside])
            features[fraction][name] = (auc, *bootstrap_interval(values, failed[inside], cell_keys[inside],
                                                                 resamples=max(1, resamples // 5)))
    at = [row for row in rows if row["fraction"] == fractions[0]]
    uncertain = [row for row in at if cell_of(row) in cells]
    return Protocol(results, features, cells, len(at), len(uncertain), sum(row["failed"] for row in uncertain),
                    against_dodge)

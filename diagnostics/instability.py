"""Instability beyond the standard deviation: how differently the seeds of one recipe predict and represent the
dev set (Du and Nguyen 2023), from what ``diagnostics.finetune`` keeps in each run's records.

* ``predictions/dev``: a series, one row per dev evaluation, the predicted label of every dev example (column
  ``i`` is dev example i), so the final row is what the fine-tuned model predicts;
* ``predictions/dev_cls``: a grid over ``example`` and ``unit``, the final model's last-layer hidden state at
  the first token ([CLS], ``<s>`` for RoBERTa) of every dev example.

Per group of seeds: the pairwise **disagreement** (share of dev examples two seeds label differently, averaged
over pairs) and the mean pairwise **linear CKA** of the [CLS] representations, over the successful seeds (the
generalisation variance once failed runs are set apart) and over all seeds. Runs recorded before these records
existed have neither, and count for nothing here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diagnostics.seed_statistics import Outcome
from probes import catalogue
from probes.model.similarity import disagreement, linear_cka, mean_pairwise
from probes.records import Grid, RunRecords, Series, open_run

KIND = catalogue.DEV_PREDICTIONS.kind
DEV_PREDICTIONS = catalogue.DEV_PREDICTIONS.name  # series: columns "0".."n-1", predicted label per evaluation
DEV_CLS = catalogue.DEV_CLS.name  # grid: axes example, unit; field cls


@dataclass(frozen=True)
class DevOutputs:
    """One run's final dev predictions (n,) and [CLS] representations (n, hidden), None where not recorded."""

    predictions: np.ndarray | None
    cls: np.ndarray | None


@dataclass(frozen=True)
class Instability:
    """The measures of one group of seeds; NaN where fewer than two seeds have the records."""

    disagreement: float
    cka: float
    disagreement_all: float
    cka_all: float
    seeds_measured: int


def dev_outputs(run: RunRecords) -> DevOutputs:
    """The final row of ``predictions/dev`` and the ``predictions/dev_cls`` grid of a run, where present."""
    found = run.records.get(KIND, {})
    series, grid = found.get(DEV_PREDICTIONS), found.get(DEV_CLS)
    predictions = None
    if isinstance(series, Series) and len(series.steps):
        predictions = series.values[-1].astype("i8")
    cls = grid.fields["cls"] if isinstance(grid, Grid) and not np.isnan(grid.fields["cls"]).any() else None
    return DevOutputs(predictions, cls)


def _disagreement(a: DevOutputs, b: DevOutputs) -> float:
    if a.predictions is None or b.predictions is None or a.predictions.shape != b.predictions.shape:
        return float("nan")
    return disagreement(a.predictions, b.predictions)


def _cka(a: DevOutputs, b: DevOutputs) -> float:
    if a.cls is None or b.cls is None or a.cls.shape[0] != b.cls.shape[0]:
        return float("nan")
    return linear_cka(a.cls, b.cls)


def instability(runs: list[tuple[DevOutputs, bool]]) -> Instability:
    """The measures over ``(outputs, failed)`` of every seed of one group."""
    everyone = [outputs for outputs, _ in runs]
    successful = [outputs for outputs, failed in runs if not failed]
    measured = sum(o.predictions is not None for o in everyone)
    return Instability(mean_pairwise(successful, _disagreement), mean_pairwise(successful, _cka),
                       mean_pairwise(everyone, _disagreement), mean_pairwise(everyone, _cka), measured)


def by_group(outcomes: list[Outcome]) -> dict[tuple[str, str], Instability]:
    """The measures of every (task, recipe), read from the records of each outcome's run."""
    groups: dict[tuple[str, str], list[tuple[DevOutputs, bool]]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.task, outcome.recipe), []).append((dev_outputs(open_run(outcome.path)),
                                                                      outcome.failed))
    return {key: instability(runs) for key, runs in groups.items()}

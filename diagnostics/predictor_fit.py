"""Fit a predictor file from a seed bank's feature table: ``python -m diagnostics.seed_bank --fit CSV``.

One logistic model per fraction of the steps seen, fitted on every run of the table; the bank's domain (model type,
depth, width, classes, run lengths, recipes, bias correction, tasks) from the table's outcome columns; each
configuration's prior (bias correction x learning rate, pooled over tasks); and the update's within-cell AUC with its
interval at each fraction, from the protocol (:func:`probes.early_failure.protocol.evaluate`, method ``signals``, the
one the file's models are). A table written before it had model columns takes them from the model its bank was built on
(the provenance's, else the embedded default) and the number of classes from its tasks.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from diagnostics.embedded import DEFAULT_MODEL
from diagnostics.finetune import FinetuneError
from probes.early_failure.domain import Domain
from probes.early_failure.benchmark import FRACTIONS
from probes.early_failure.protocol import RESAMPLES, evaluate
from probes.early_failure.signals import FEATURES
from probes.early_failure.predictor import Predictor
from probes.early_failure.predictor_file import DevCell, PredictorFile, PriorCell, UpdateAuc
from probes.early_failure.verdict import at_baseline

METHOD = "signals"  # the protocol's method the file's models are: the logistic model on the early features
DODGE = "Dodge"  # the protocol's name of Dodge et al.'s rule (the dev metric so far)


def fit(rows: list[dict], source: dict, fractions: tuple[float, ...] = FRACTIONS,
        resamples: int = RESAMPLES) -> PredictorFile:
    """The predictor file of a feature table's ``rows``; ``source`` says what it was fitted on."""
    models = {}
    for fraction in fractions:
        at = [row for row in rows if row["fraction"] == fraction]
        failed = np.array([row["failed"] for row in at], dtype=bool)
        if failed.all() or not failed.any():
            raise FinetuneError(f"at {100 * fraction:g}% of the steps the table's {len(at)} runs all "
                                f"{'failed' if failed.any() else 'succeeded'}: a predictor needs both outcomes; "
                                "add a learning rate where some seeds fail (--lrs) and rebuild the features")
        x = np.array([[row[name] for name in FEATURES] for row in at], dtype="f8")
        models[fraction] = Predictor.fit(x, failed, FEATURES, fraction=fraction)
    first = [row for row in rows if row["fraction"] == fractions[0]]
    protocol = evaluate(rows, fractions, resamples)
    update, dodge = ({r.fraction: UpdateAuc(method, r.fraction, r.within, r.low, r.high)
                      for r in protocol.results if r.method == method} for method in (METHOD, DODGE))
    return PredictorFile(models, Domain.of_rows(first), prior_cells(first), update, source, dev_cells(rows), dodge)


def prior_cells(rows: list[dict]) -> tuple[PriorCell, ...]:
    """Each (bias correction, learning rate) of the runs with how many ran and failed (one row per run; runs whose
    learning rate or bias correction is not recorded are in no cell)."""
    cells: dict[tuple[bool, float], list[dict]] = {}
    for row in rows:
        if _configuration(row) is not None:
            cells.setdefault(_configuration(row), []).append(row)
    return tuple(PriorCell(bias, lr, len(found), sum(bool(row["failed"]) for row in found),
                           tuple(sorted({row["recipe"] for row in found})))
                 for (bias, lr), found in sorted(cells.items()))


def dev_cells(rows: list[dict]) -> tuple[DevCell, ...]:
    """Per configuration (bias correction, learning rate) and fraction, the runs whose dev metric there was at or
    below the majority baseline and those above it, with how many failed (runs not evaluated there are left out)."""
    cells: dict[tuple[bool, float, float, bool], list[bool]] = {}
    for row in rows:
        dev, majority = float(row.get("dev_metric", math.nan)), float(row["majority"])
        if _configuration(row) is None or not (math.isfinite(dev) and math.isfinite(majority)):
            continue
        key = (*_configuration(row), float(row["fraction"]), at_baseline(dev, majority))
        cells.setdefault(key, []).append(bool(row["failed"]))
    return tuple(DevCell(bias, lr, fraction, at, len(failed), sum(failed))
                 for (bias, lr, fraction, at), failed in sorted(cells.items()))


def backfill(rows: list[dict], table: Path) -> list[dict]:
    """Rows of an older table with the model columns filled: from the model its bank was built on (the
    provenance's ``config.model``, else the embedded default) and the number of classes of each task."""
    if all(row.get("model_type") for row in rows):
        return rows
    from diagnostics.tasks import TaskError, load_task

    provenance = table.with_suffix(".provenance.json")
    model = DEFAULT_MODEL
    if provenance.is_file():
        model = Path(json.loads(provenance.read_text()).get("config", {}).get("model") or DEFAULT_MODEL)
    config_file = model / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    classes = {}
    for task in {row["task"] for row in rows}:
        try:
            classes[task] = load_task(task).num_labels
        except TaskError:
            classes[task] = math.nan
    filled = {"model_type": config.get("model_type", ""), "layers": config.get("num_hidden_layers", math.nan),
              "hidden": config.get("hidden_size", math.nan)}
    return [row if row.get("model_type") else {**row, **filled, "classes": classes[row["task"]]} for row in rows]


def _configuration(row: dict) -> tuple[bool, float] | None:
    """A row's (bias corrected, learning rate), or None where the table does not record them."""
    if not math.isfinite(float(row["lr"])) or str(row["correct_bias"]) in ("", "nan", "None"):
        return None
    return str(row["correct_bias"]) in ("True", "true", "1"), float(row["lr"])

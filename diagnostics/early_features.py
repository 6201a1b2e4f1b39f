"""A run's early-failure features from its records file, and the seed bank's table of them.

    from diagnostics.early_features import run_signals, features_at
    features_at(open_run("runs/bank/lr0.0002/hedge-default-s3/run.h5"), 0.2)

:func:`run_signals` reads the probes' series (``gradient_norms/layers`` and ``head_ratio``, ``scalars/plateau``
and ``predictions``, ``optimizer_state/second_moment``) into the per-step signals of
:mod:`probes.early_signals`; :func:`features_at` computes the features over the first ``fraction`` of the run's
steps, exactly as the online probe does. :func:`write_table` writes one CSV row per run and fraction with the
run's outcome: the compact form of the seed bank that is committed (``data/seed_bank/``).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from probes.early_signals import FEATURES, window_features
from probes.early_warning import encoder_norm
from probes.records import RecordsError, RunRecords, iter_runs, open_run

FRACTIONS = (0.05, 0.10, 0.15, 0.20, 0.30)
OUTCOME_COLUMNS = ("run", "task", "recipe", "lr", "correct_bias", "seed", "steps", "final_dev_metric", "majority",
                   "failed")


def total_steps(run: RunRecords) -> int | None:
    """The run's planned optimiser steps: the summary's for a finished run, the early warning's declaration for
    one still going (None when neither says)."""
    if "steps" in run.summary:
        return int(run.summary["steps"])
    try:
        planned = run.series("early_warning").attrs.get("total_steps")
    except RecordsError:
        return None
    return None if planned is None else int(planned)


def run_signals(run: RunRecords) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The per-step signals the run's records hold (a signal whose probe did not run is left out)."""
    signals = {}
    names = {kind: set(run.names(kind)) for kind in run.records}
    if "layers" in names.get("gradient_norms", ()):
        layers = run.series("layers", kind="gradient_norms")
        signals["encoder_norm"] = (layers.steps, encoder_norm(layers.columns, layers.values))
    if "head_ratio" in names.get("gradient_norms", ()):
        ratio = run.series("head_ratio", kind="gradient_norms")
        signals["head_ratio"] = (ratio.steps, np.nanmedian(ratio.values, axis=1))
    if "plateau" in names.get("scalars", ()):
        plateau = run.series("plateau", kind="scalars")
        ln_c = float(plateau.attrs.get("ln_c", math.log(2)))
        signals["loss_ratio"] = (plateau.steps, plateau.column("loss_over_ln_c"))
        signals["slope"] = (plateau.steps, plateau.column("slope") / ln_c)
    if "predictions" in names.get("scalars", ()):
        predictions = run.series("predictions", kind="scalars")
        ln_c = float(run.series("plateau").attrs.get("ln_c", math.log(2))) if "loss_ratio" in signals else math.log(2)
        signals["majority_share"] = (predictions.steps, predictions.column("majority_share"))
        signals["entropy_ratio"] = (predictions.steps, predictions.column("entropy") / ln_c)
        signals["margin"] = (predictions.steps, predictions.column("margin"))
    if "second_moment" in names.get("optimizer_state", ()):
        moment = run.series("second_moment", kind="optimizer_state")
        encoder = [i for i, name in enumerate(moment.columns) if name.startswith("encoder.")]
        values = np.asarray(moment.values, dtype="f8")
        signals["moment_encoder"] = (moment.steps, np.sqrt(np.square(values[:, encoder]).sum(axis=1)))
        if "head" in moment.columns:
            signals["moment_head"] = (moment.steps, values[:, moment.columns.index("head")])
    return signals


def window_end(steps: int, fraction: float) -> int:
    """The last step of the first ``fraction`` of ``steps`` (at least step 2, so a window has a start and an end)."""
    return max(2, round(fraction * steps) - 1)


def features_at(run: RunRecords, fraction: float, steps: int | None = None) -> dict[str, float]:
    """The run's features over its first ``fraction`` of steps (``steps``: the planned total, else read)."""
    steps = steps or total_steps(run)
    if steps is None:
        raise RecordsError(f"{run.path} does not say how many steps the run will take; pass the total")
    return window_features(run_signals(run), window_end(steps, fraction))


def outcome(run: RunRecords) -> dict:
    """The columns of :data:`OUTCOME_COLUMNS` for a finished run."""
    config = run.meta.get("config", {}) or {}
    recipe = config.get("resolved_recipe", {}) or {}
    path = Path(run.path)
    name = f"{path.parent.parent.name}/{path.parent.name}" if path.name == "run.h5" else path.stem
    return {"run": name, "task": run.meta.get("task", ""), "recipe": run.meta.get("recipe", ""),
            "lr": recipe.get("lr", math.nan), "correct_bias": recipe.get("correct_bias", ""),
            "seed": int(run.meta.get("seed", -1)), "steps": int(run.summary["steps"]),
            "final_dev_metric": float(run.summary["final_dev_metric"]),
            "majority": float(run.summary.get("majority", math.nan)), "failed": bool(run.summary["failed"])}


def table(paths: list[str | Path], fractions: tuple[float, ...] = FRACTIONS) -> list[dict]:
    """One row per finished run under ``paths`` and fraction: outcome columns, ``fraction``, the features."""
    rows = []
    for path in iter_runs(paths):
        run = open_run(path)
        if "final_dev_metric" not in run.summary:
            continue
        for fraction in fractions:
            rows.append({**outcome(run), "fraction": fraction, **features_at(run, fraction)})
    return rows


def write_table(runs: str | Path, out: str | Path) -> int:
    """Write :func:`table` of the runs under ``runs`` to the CSV ``out``; returns the number of runs."""
    rows = table([runs])
    with open(out, "w", newline="") as file:
        writer = csv.DictWriter(file, [*OUTCOME_COLUMNS, "fraction", *FEATURES])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return len({row["run"] for row in rows})


def read_table(path: str | Path) -> list[dict]:
    """Rows of a table written by :func:`write_table`, numbers as floats and ``failed`` as a bool."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        for key in ("lr", "final_dev_metric", "majority", "fraction", *FEATURES):
            row[key] = float(row[key]) if row[key] not in ("", "nan") else math.nan
        row["seed"], row["steps"] = int(row["seed"]), int(row["steps"])
        row["failed"] = row["failed"] == "True"
    return rows

"""The seed bank's compact form: one CSV row per finished run and fraction of training seen, with its outcome.

    python -m diagnostics.seed_bank --out runs/bank --features data/seed_bank/features.csv   # writes it
    rows = read_table("data/seed_bank/features.csv")                                        # reads it back

The rows are those of :func:`probes.early_failure.benchmark.table` (outcome columns, ``fraction``, the early features of
:mod:`probes.early_failure.signals`): everything the benchmark needs, without the runs' checkpoints and records.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from probes.early_failure.benchmark import OUTCOME_COLUMNS, table
from probes.early_failure.signals import FEATURES

NUMBERS = ("lr", "final_dev_metric", "majority", "fraction", "dev_metric", *FEATURES)


def write_table(runs: str | Path, out: str | Path) -> int:
    """Write the table of the finished runs under ``runs`` to the CSV ``out``; returns the number of runs."""
    rows = table([runs])
    with open(out, "w", newline="") as file:
        writer = csv.DictWriter(file, [*OUTCOME_COLUMNS, "fraction", "dev_metric", *FEATURES])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return len({row["run"] for row in rows})


def read_table(path: str | Path) -> list[dict]:
    """The rows of a table written by :func:`write_table`: numbers as floats, ``seed``/``steps`` as ints,
    ``failed`` as a bool, ``layers``/``hidden``/``classes`` as ints; a column an older table lacks (a feature or a
    model column added since) reads as NaN (``model_type``: blank)."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    missing = [name for name in ("run", "task", "lr", "correct_bias", "seed", "steps", "majority", "failed", "fraction")
               if name not in (reader.fieldnames or ())]
    if missing or not rows:
        what = f"lacks the columns {', '.join(missing)}" if missing else "has no rows"
        raise ValueError(f"{path} {what}: it is not a seed bank's feature table; write one with python -m "
                         "diagnostics.seed_bank --out RUNS --features CSV")
    for row in rows:
        for key in NUMBERS:
            row[key] = float(row[key]) if row.get(key) not in (None, "", "nan") else math.nan
        row["seed"], row["steps"] = int(row["seed"]), int(row["steps"])
        row["model_type"] = row.get("model_type") or ""
        for key in ("layers", "hidden", "classes"):
            row[key] = int(row[key]) if row.get(key) not in (None, "") else math.nan
        row["failed"] = row["failed"] == "True"
    return rows

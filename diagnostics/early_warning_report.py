"""How well the early-failure predictor foresees failed runs on seeds it never saw, as a Markdown table.

The numbers come from :mod:`probes.early_benchmark` (features, grouped-by-seed fitting and scoring, compute saved);
this module words them. ``python -m diagnostics.report RUNS --early`` prints it for runs on disk,
``python -m diagnostics.seed_bank --benchmark data/seed_bank/features.csv`` for the committed seed bank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.early_benchmark import FOLDS, FRACTIONS, SCOPES, HeldOut, score, table, univariate


@dataclass(frozen=True)
class EarlyWarningReport:
    results: list[HeldOut]
    univariate: dict[str, float]  # each feature's own AUC at the reference fraction, default-recipe runs
    reference: float

    def markdown(self) -> str:
        lines = ["Early-failure predictor (logistic, on the early features), fitted and scored by seed: each run is "
                 f"scored by a model fitted on other seeds' runs only ({FOLDS} groups of seeds); flagged at "
                 "P(fail) >= 0.5.", "",
                 "| scope | seen | runs | failed | precision | recall | ROC AUC | steps saved | good runs lost |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            lines.append(f"| {r.scope} | {100 * r.fraction:.0f}% | {r.runs} | {r.failed} | {_f(r.precision)} | "
                         f"{_f(r.recall)} | {_f(r.auc)} | {_percent(r.saved)} | {r.false_positives} |")
        ranked = sorted(self.univariate.items(), key=lambda item: -np.nan_to_num(item[1]))
        lines += ["", "`default`: runs without bias correction (failed vs surviving seeds of the same recipe); `all`: "
                      "every recipe. Steps saved: the share of the scope's training steps a sweep skips by stopping "
                      "the flagged runs there; good runs lost: flagged runs that would have succeeded.", "",
                  f"Each feature alone at {100 * self.reference:.0f}% (ROC AUC over the default-recipe runs, "
                  "in-sample, better direction, 0.5 = no information): "
                  + ", ".join(f"{name} {_f(auc)}" for name, auc in ranked) + "."]
        return "\n".join(lines) + "\n"


def from_rows(rows: list[dict], fractions: tuple[float, ...] = FRACTIONS) -> EarlyWarningReport:
    """The report of feature rows (from records or from the committed table)."""
    reference = 0.2 if 0.2 in fractions else fractions[-1]
    results = [score(rows, scope, fraction) for scope in SCOPES for fraction in fractions]
    return EarlyWarningReport(results, univariate(rows, reference), reference)


def evaluate(paths: list[Path], fractions: tuple[float, ...] = FRACTIONS) -> EarlyWarningReport:
    """The report over the finished runs among ``paths``."""
    return from_rows(table(paths, fractions), fractions)


def _f(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.2f}"


def _percent(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.0f}%"

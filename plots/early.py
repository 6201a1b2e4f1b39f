"""The early-failure predictor's held-out precision, recall and ROC AUC against the share of training seen.

From the command line: ``python -m plots early RUNS... -o early.pdf``. One panel per scope: the default recipe (failed
against surviving seeds of Adam without bias correction) and every recipe; the target of 0.9 dashed; a scope of fewer
than ten runs, or of one outcome, says "too few runs to score" instead of lines. The numbers are those of ``python -m
diagnostics.report RUNS --early`` (:mod:`probes.early_failure.benchmark`: the predictor is fitted on some seeds and
scored on the others).
"""
from __future__ import annotations

import math
from typing import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from probes.early_failure.benchmark import FRACTIONS, SCOPES, UNSCORED, rows_of, score
from plots.runs import RecordsLike, load_runs
from plots.sources import MissingRecord
from plots.style import COLUMN, NEUTRAL, PALETTE, panel_title, panels, styled

TARGET = 0.9
MEASURES = (("precision", PALETTE[0], "o"), ("recall", PALETTE[2], "s"), ("auc", PALETTE[4], "^"))
TITLES = {"default": "default recipe", "all": "all recipes"}


@styled
def plot_early(records: RecordsLike | Sequence[RecordsLike] = (), ax: Sequence[Axes] | None = None, *,
               rows: Sequence[dict] | None = None) -> Figure:
    """Precision, recall and ROC AUC on held-out seeds per fraction of training seen, one panel per scope;
    ``rows`` (from ``diagnostics.early_features.read_table``) instead of records draws a committed seed bank."""
    if rows is None:
        rows = rows_of(run.records for run in load_runs(records))
    if not rows:
        raise MissingRecord("the early figure needs finished runs (a summary); run python -m diagnostics.finetune")
    figure, axes = panels(ax, len(SCOPES), (2 * COLUMN, 2.4), sharey=True)
    for index, (axis, scope) in enumerate(zip(axes, SCOPES)):
        results = [score(list(rows), scope, fraction) for fraction in FRACTIONS]
        seen = [100 * r.fraction for r in results]
        for measure, colour, marker in MEASURES:
            axis.plot(seen, [getattr(r, measure) if r.scorable else math.nan for r in results], marker=marker,
                      color=colour, label="ROC AUC" if measure == "auc" else measure)
        if not any(r.scorable for r in results):
            axis.text(0.5, 0.5, UNSCORED, transform=axis.transAxes, ha="center", va="center", color=NEUTRAL)
        axis.axhline(TARGET, color=NEUTRAL, linestyle="--", linewidth=0.8, label=f"target {TARGET}")
        axis.set_xlabel("training seen (% of steps)")
        axis.set_ylim(0, 1.05)
        runs = results[0].runs
        panel_title(axis, index, f"{TITLES[scope]} ({runs} runs, {results[0].failed} failed)")
    axes[0].set_ylabel("held-out score")
    axes[0].legend(fontsize="small", loc="lower right")
    return figure

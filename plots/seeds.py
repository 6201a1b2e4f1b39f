"""Seeds (Mosbach et al., Fig. 1): the final dev metric over random seeds, per recipe, one panel per task.

A box per recipe with every seed drawn as a point on top (failed runs in vermillion), and the task's
majority-class baseline dashed. From the command line: ``python -m plots seeds RUNS_DIR -o seeds.pdf``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from plots import sources
from plots.runs import RecordsLike, fetch_each, load_runs
from plots.style import COLUMN, FAILED_COLOUR, NEUTRAL, PAGE, SUCCESS_COLOUR, panel_title, panels, styled


@styled
def plot_seeds(records: RecordsLike | Sequence[RecordsLike], ax: Axes | Sequence[Axes] | None = None, *,
               failed: Sequence[RecordsLike] = (), successful: Sequence[RecordsLike] = ()) -> Figure:
    """Every run with a final dev metric in its summary, grouped by task (panels) and recipe (boxes)."""
    runs = load_runs(records, failed, successful)
    finals = fetch_each(runs, sources.final_metric, "seeds figure")
    tasks = sorted({sources.task(run.records) for run, _ in finals})
    figure, axes = panels(ax, len(tasks), (min(PAGE, 0.6 * COLUMN + 1.6 * len(tasks)), 2.4))
    for index, (axis, task) in enumerate(zip(axes, tasks)):
        rows = [(sources.recipe(run.records), value, metric, run) for run, (value, metric) in finals
                if sources.task(run.records) == task]
        recipes = list(dict.fromkeys(recipe for recipe, *_ in sorted(rows, key=lambda r: r[0])))
        groups = [[row for row in rows if row[0] == recipe] for recipe in recipes]
        axis.boxplot([[value for _, value, _, _ in group] for group in groups], positions=range(len(recipes)),
                     widths=0.55, showfliers=False, medianprops={"color": "black"},
                     boxprops={"color": NEUTRAL}, whiskerprops={"color": NEUTRAL}, capprops={"color": NEUTRAL})
        jitter = np.random.default_rng(0)
        for position, group in enumerate(groups):
            for _, value, _, run in group:
                colour = FAILED_COLOUR if run.failed else SUCCESS_COLOUR
                axis.plot(position + jitter.uniform(-0.15, 0.15), value, "o", markersize=3, color=colour, alpha=0.8)
        baselines = [sources.majority(run.records) for *_, run in rows]
        baselines = [b for b in baselines if b is not None]
        if baselines:
            axis.axhline(float(np.median(baselines)), color=NEUTRAL, linestyle="--", linewidth=1)
        axis.set_xticks(range(len(recipes)), recipes)
        axis.set_ylabel(f"dev {rows[0][2]}")
        panel_title(axis, index, f"{task} ({len(rows)} runs)")
    legend = [Line2D([], [], color=SUCCESS_COLOUR, marker="o", linestyle="none", markersize=3, label="run"),
              Line2D([], [], color=FAILED_COLOUR, marker="o", linestyle="none", markersize=3, label="failed run"),
              Line2D([], [], color=NEUTRAL, linestyle="--", label="majority class")]
    figure.legend(handles=legend, loc="outside right upper")
    return figure

"""Generalisation (Mosbach et al., Fig. 8): runs that train equally well but score differently on dev.

(a) dev accuracy over training, one line per seed; (b) final dev metric against final training loss (log x), one
point per run, failed runs in vermillion (linear x when the losses span less than a factor of 10). From the command line: ``python -m plots generalisation RUNS_DIR -o
generalisation.pdf``.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from plots import sources
from plots.runs import RecordsLike, fetch_each, load_runs
from plots.sources import MissingRecord
from plots.style import FAILED_COLOUR, PAGE, SUCCESS_COLOUR, log_scale_if_wide, panel_title, panels, styled


@styled
def plot_generalisation(records: RecordsLike | Sequence[RecordsLike], ax: Sequence[Axes] | None = None, *,
                        failed: Sequence[RecordsLike] = (), successful: Sequence[RecordsLike] = (),
                        task: str | None = None, successful_only: bool = False) -> Figure:
    """The runs of one ``task`` (default: the task with the most runs); ``successful_only`` leaves failed runs
    out (the paper's panels show the successful baseline runs)."""
    runs = [run for run in load_runs(records, failed, successful) if not (successful_only and run.failed)]
    tasks = Counter(sources.task(run.records) for run in runs)
    task = task or min(tasks, key=lambda t: (-tasks[t], t), default=None)
    if runs and task not in tasks:
        raise MissingRecord(f"no run of task {task!r} among the records (they hold {', '.join(sorted(tasks))}); "
                            "pass --task with one of those")
    runs = [run for run in runs if sources.task(run.records) == task]
    curves = fetch_each(runs, sources.dev_metric, "generalisation figure, panel (a)")
    finals = fetch_each(runs, lambda r: (sources.final_train_loss(r), sources.final_metric(r)),
                        "generalisation figure, panel (b)")
    figure, (history, scatter) = panels(ax, 2, (PAGE, 2.5))
    for run, (curve, _) in curves:
        history.plot(curve.steps, curve.values, linewidth=0.9, alpha=0.7,
                     color=FAILED_COLOUR if run.failed else SUCCESS_COLOUR)
    history.set_xlabel("iteration")
    history.set_ylabel(f"dev {curves[0][1][1]}")
    recipes = sorted({sources.recipe(run.records) for run, _ in curves})
    panel_title(history, 0, f"{task}: {len(curves)} seeds over training ({', '.join(recipes)})")
    for verdict, colour, label in ((False, SUCCESS_COLOUR, "run"), (True, FAILED_COLOUR, "failed run"),
                                   (None, "0.5", "no verdict")):
        points = [(loss, value) for run, (loss, (value, _)) in finals if run.failed is verdict]
        if points:
            scatter.scatter(*zip(*points), s=12, color=colour, alpha=0.8, label=label, linewidths=0)
    log_scale_if_wide(scatter, [loss for _, (loss, _) in finals], "x")
    scatter.set_xlabel("final training loss")
    scatter.set_ylabel(f"final dev {finals[0][1][1][1]}")
    scatter.legend(fontsize="small")
    panel_title(scatter, 1, "dev metric against training loss")
    return figure

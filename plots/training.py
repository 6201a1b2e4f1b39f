"""Training curves: the training loss and the learning rate per optimiser step, one line per run.

From the command line: ``python -m plots training RUN.h5... -o training.pdf``.
"""
from __future__ import annotations

from typing import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from plots import sources
from plots.runs import RecordsLike, fetch_each, load_runs, run_labels
from plots.style import COLUMN, FAILED_COLOUR, RUN_COLOURS, panel_title, panels, styled

LEGEND_RUNS = 8  # more runs than this get no legend entries


@styled
def plot_training(records: RecordsLike | Sequence[RecordsLike], ax: Sequence[Axes] | None = None, *,
                  failed: Sequence[RecordsLike] = (), successful: Sequence[RecordsLike] = (),
                  log_loss: bool = False) -> Figure:
    """Loss (left panel; ``log_loss`` for a log axis) and learning rate (right panel); failed runs dashed."""
    runs = load_runs(records, failed, successful)
    found = fetch_each(runs, lambda r: (sources.train_loss(r), sources.learning_rate(r)), "training figure")
    figure, (loss_axis, lr_axis) = panels(ax, 2, (2 * COLUMN, 2.3), sharex=True)
    labels = run_labels([run for run, _ in found])
    for index, ((run, (loss, lr)), name) in enumerate(zip(found, labels)):
        label = f"{name}{' (failed)' if run.failed else ''}" if len(found) <= LEGEND_RUNS else None
        colour = FAILED_COLOUR if run.failed else RUN_COLOURS[index % len(RUN_COLOURS)]
        style = {"linestyle": "--" if run.failed else "-", "color": colour}
        loss_axis.plot(loss.steps, loss.values, linewidth=0.8, label=label, **style)
        lr_axis.plot(lr.steps, lr.values, **style)
    loss_axis.set_yscale("log" if log_loss else "linear")
    loss_axis.set_ylabel("training loss")
    lr_axis.set_ylabel("learning rate")
    lr_axis.yaxis.set_major_formatter(lambda value, _: f"{value:g}")
    for index, axis in enumerate((loss_axis, lr_axis)):
        axis.set_xlabel("iteration")
        panel_title(axis, index, ("training loss", "learning rate")[index])
    if len(found) <= LEGEND_RUNS:
        loss_axis.legend(fontsize="small")
    return figure

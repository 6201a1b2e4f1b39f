"""Loss along a line between two models (Mosbach et al., Fig. 7, 1-D): the barrier between failed and successful.

theta(a) = theta_0 + a (theta_1 - theta_0): the two models sit at a = 0 and a = 1, labelled from the grid's
``labels``; the loss is drawn on the left axis, the accuracy (when recorded) dashed on a twin axis on the right.
From the command line: ``python -m plots line SURFACE.h5 -o line.pdf``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from plots import sources
from plots.runs import RecordsLike, fetch_each, load_runs
from plots.style import COLUMN, NEUTRAL, PALETTE, panels, styled


@styled
def plot_line(records: RecordsLike | Sequence[RecordsLike], ax: Axes | None = None, *,
              name: str | None = None) -> Figure:
    """The first line record found in the records (or the one called ``name``)."""
    runs = load_runs(records)
    (_, (grid, labels)), *_ = fetch_each(runs, lambda r: sources.surface(r, "line", name), "interpolation figure")
    figure, (axis,) = panels(ax, 1, (COLUMN, 2.3))
    a = grid.axes["a"]
    axis.plot(a, grid.fields["loss"], color=PALETTE[0], marker="o", markersize=2)
    axis.set_ylabel(f"{grid.attrs.get('split', 'train')} loss", color=PALETTE[0])
    axis.set_xlabel("interpolation coefficient a")
    accuracy = grid.fields.get("accuracy")
    if accuracy is not None and np.isfinite(accuracy).any():
        twin = axis.twinx()
        twin.plot(a, accuracy, color=PALETTE[2], linestyle="--", marker="s", markersize=2)
        twin.set_ylabel("accuracy", color=PALETTE[2])
        twin.spines["right"].set_visible(True)
    on_top = blended_transform_factory(axis.transData, axis.transAxes)
    for position, label in zip((0.0, 1.0), labels):
        axis.axvline(position, color=NEUTRAL, linestyle=":", linewidth=1)
        axis.text(position, 1.02, label, transform=on_top, ha="center", va="bottom", fontsize="small")
    return figure

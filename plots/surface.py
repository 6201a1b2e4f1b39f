"""Loss surface (Mosbach et al., Fig. 7): training loss on the plane through three models, log-spaced contours.

The plane is theta_p + a (theta_1 - theta_p) + b (theta_2 - theta_p): the models sit at (0, 0), (1, 0) and (0, 1)
and are marked with the labels stored with the grid (default pre-trained / failed / successful). Points not
computed yet (NaN) are left blank. From the command line: ``python -m plots surface SURFACE.h5 -o surface.pdf``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib import patheffects
from matplotlib.ticker import FixedLocator, NullLocator

from plots import sources
from plots.runs import RecordsLike, fetch_each, load_runs
from plots.style import COLUMN, panels, styled

MODELS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))
# Where each model's label sits, in points from its marker, centred on it: the pre-trained model's below (0, 0) and
# the failed model's above (1, 0), so the two never run into each other whatever the range or the font, and
# neither runs past the plot's edge at the default range; the successful model's above (0, 1).
LABEL_PLACES = (((0, -12), "center"), ((0, 6), "center"), ((0, 6), "center"))
OUTLINE = [patheffects.withStroke(linewidth=1.5, foreground="black")]


@styled
def plot_surface(records: RecordsLike | Sequence[RecordsLike], ax: Axes | None = None, *, name: str | None = None,
                 levels: int = 14) -> Figure:
    """The first plane found in the records (or the one called ``name``), ``levels`` log-spaced contour levels."""
    runs = load_runs(records)
    (_, (grid, labels)), *_ = fetch_each(runs, lambda r: sources.surface(r, "plane", name), "loss-surface figure")
    figure, (axis,) = panels(ax, 1, (COLUMN, 2.9))
    a, b = grid.axes["a"], grid.axes["b"]
    loss = np.ma.masked_invalid(grid.fields["loss"].T)  # fields[i, j] sits at (a[i], b[j]); rows of Z follow y = b
    if loss.count() == 0:
        raise sources.MissingRecord(f"{sources.name_of(runs[0].records)}: the loss plane has no computed point yet; "
                                    f"finish it with {sources.SURFACE}")
    positive = loss[loss > 0]
    bounds = np.geomspace(positive.min(), loss.max(), levels)
    filled = axis.contourf(a, b, np.ma.masked_less_equal(loss, 0), levels=bounds, norm=LogNorm(), cmap="viridis")
    axis.contour(a, b, loss, levels=bounds, colors="white", linewidths=0.3, alpha=0.5)
    bar = figure.colorbar(filled, ax=axis, shrink=0.9)
    bar.ax.yaxis.set_major_locator(FixedLocator(nice_log_ticks(bounds[0], bounds[-1])))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    bar.ax.yaxis.set_major_formatter("{x:.3g}")
    bar.set_label(f"{grid.attrs.get('split', 'train')} loss (log scale)")
    for (x, y), label, (offset, anchor) in zip(MODELS, labels, LABEL_PLACES):
        axis.plot(x, y, marker="o", markersize=4, color="white", markeredgecolor="black", linestyle="none")
        axis.annotate(label, (x, y), xytext=offset, textcoords="offset points", ha=anchor, color="white",
                      fontsize="small", path_effects=OUTLINE)
    axis.set_xlabel(f"a (towards {labels[1]})" if len(labels) > 1 else "a")
    axis.set_ylabel(f"b (towards {labels[2]})" if len(labels) > 2 else "b")
    axis.set_aspect("equal")
    return figure


def nice_log_ticks(low: float, high: float) -> list[float]:
    """Ticks at 1, 2 and 5 times powers of ten between ``low`` and ``high`` (for a log colour bar)."""
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    ticks = [m * 10.0 ** d for d in decades for m in (1, 2, 5) if low <= m * 10.0 ** d <= high]
    return ticks if len(ticks) >= 2 else [low, high]

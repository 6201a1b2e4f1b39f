"""Interpolation during training: loss on the line theta_0 + a (theta_t - theta_0) at each evaluated step t.

One column per run, a failed and a successful one side by side: on top a heat map of the loss over (a, training
step) with contours, on one colour scale for both runs (logarithmic when it spans a decade); below, the loss against
a at a few steps, each run on its own y axis (log when it spans a decade). a = 0 is the start (the weights when the
probe was attached), a = 1 the weights at that step. A failed run sits on a plateau (ln 2 for two balanced classes);
a successful one descends from the start.
``name="last_update"`` draws the line through each step's update instead. From the command line:
``python -m plots interpolation FAILED.h5 SUCCESSFUL.h5 -o interpolation.pdf``.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from plots import sources
from plots.runs import RecordsLike, fetch_each, load_runs, panel_runs
from plots.style import COLUMN, NEUTRAL, PAGE, log_scale_if_wide, panel_title, panels, styled
from plots.surface import OUTLINE

CURVES = 4  # steps drawn as curves under each heat map
LEVELS = 9  # contour levels over the shared colour scale


@styled
def plot_interpolation(records: RecordsLike | Sequence[RecordsLike], ax: Sequence[Axes] | None = None, *,
                       failed: Sequence[RecordsLike] = (), successful: Sequence[RecordsLike] = (),
                       name: str | None = None) -> Figure:
    """Draw the first failed and the first successful run (or the first two runs when no verdict is known);
    ``ax``: two axes per run, the heat maps first."""
    found = fetch_each(load_runs(records, failed, successful), lambda r: sources.interpolation(r, name),
                       "interpolation figure")
    grids = {id(run): grid for run, grid in found}
    chosen = panel_runs([run for run, _ in found])
    columns = len(chosen)
    if ax is None:  # two rows: heat maps, then curves
        figure = plt.figure(figsize=(PAGE if columns > 1 else COLUMN, 4.8))
        rows = figure.subplots(2, columns, sharex=True, squeeze=False, height_ratios=(3, 2))
        axes = [*rows[0], *rows[1]]
    else:
        figure, axes = panels(ax, 2 * columns, (PAGE, 4.8))
    heat, curves = axes[:columns], axes[columns:]
    losses = np.concatenate([grids[id(run)].loss.ravel() for run in chosen])
    norm, levels = _scale(losses[np.isfinite(losses)])
    for index, run in enumerate(chosen):
        grid = grids[id(run)]
        mesh = _heat_map(heat[index], grid, norm, levels)
        _curves(curves[index], grid)
        verdict = {True: "failed run", False: "successful run", None: "run"}[run.failed]
        panel_title(heat[index], index, f"{verdict} ({run.label})")
        log_scale_if_wide(curves[index], grid.loss)
        curves[index].legend(fontsize="small")
    bar = figure.colorbar(mesh, ax=heat, shrink=0.9)
    bar.set_label("training loss on the held sample")
    heat[0].set_ylabel("training step")
    curves[0].set_ylabel("training loss")
    return figure


def _scale(values: np.ndarray) -> tuple[Normalize, np.ndarray]:
    """One colour scale for every heat map: logarithmic when the losses span a decade, with contour levels on it."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1e-6
    if low > 0 and high / low >= 10:
        return LogNorm(low, high), np.geomspace(low, high, LEVELS)
    return Normalize(low, high), np.linspace(low, high, LEVELS)


def _heat_map(axis: Axes, grid: sources.InterpolationGrid, norm: Normalize, levels: np.ndarray):
    mesh = axis.pcolormesh(grid.a, grid.steps, np.ma.masked_invalid(grid.loss), shading="nearest", norm=norm,
                           cmap="viridis")
    if len(grid.steps) > 1 and np.isfinite(grid.loss).all():
        axis.contour(grid.a, grid.steps, grid.loss, levels=levels, colors="white", linewidths=0.5, alpha=0.8)
    ends = ["start", "step t"] if grid.line.startswith("theta_0") else ["step t-1", "step t"]
    for position, label in zip((0.0, 1.0), ends):
        axis.axvline(position, color="white", linestyle=":", linewidth=1)
        axis.annotate(label, (position, 0), xycoords=("data", "axes fraction"), xytext=(3, 3),
                      textcoords="offset points", color="white", fontsize="small", path_effects=OUTLINE)
    return mesh


def _curves(axis: Axes, grid: sources.InterpolationGrid) -> None:
    """Loss against a at up to CURVES evaluated steps, evenly chosen, the last included; darker is later."""
    rows = np.unique(np.linspace(0, len(grid.steps) - 1, min(CURVES, len(grid.steps))).round().astype(int))
    colours = sns.color_palette("crest", len(rows))
    for colour, row in zip(colours, rows):
        axis.plot(grid.a, grid.loss[row], color=colour, marker="o", markersize=2, label=f"step {grid.steps[row]}")
    for position in (0.0, 1.0):
        axis.axvline(position, color=NEUTRAL, linestyle=":", linewidth=1)
    axis.set_xlabel(f"a in {grid.line.split(',')[0]}" if grid.line else "a")

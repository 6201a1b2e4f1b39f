"""Loss barriers between seeds (Juneja et al. 2022): one basin or several? A heat map of the barrier height of
every pair of runs, the runs ordered by hierarchical clustering of the barriers (scipy, average linkage, optimal
leaf order) with the dendrogram on top, so that runs in one basin sit together as a dark block. Each run is
labelled with its final dev metric; failed runs are marked in vermillion.

From the command line: ``python -m plots barriers BARRIERS.h5 -o barriers.pdf`` (the grid written by
``python -m diagnostics.surface --barriers RUN... --out BARRIERS.h5``).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import dendrogram, leaves_list, linkage, optimal_leaf_ordering
from scipy.spatial.distance import squareform

from plots import sources
from plots.runs import RecordsLike, fetch_each, load_runs
from plots.style import COLUMN, FAILED_COLOUR, NEUTRAL, panels, styled
from probes.model.barriers import barrier_matrix


def cluster_order(barriers: np.ndarray) -> tuple[list[int], np.ndarray | None]:
    """The runs' order from average-linkage clustering of the (symmetric, zero-diagonal) barrier matrix, and the
    linkage (None for fewer than three runs, where any order is the same). Missing barriers count as the largest."""
    matrix = np.array(barriers, dtype="f8")
    if len(matrix) < 3:
        return list(range(len(matrix))), None
    finite = matrix[np.isfinite(matrix)]
    matrix[~np.isfinite(matrix)] = finite.max() if finite.size else 1.0
    matrix = np.maximum((matrix + matrix.T) / 2, 0.0)
    np.fill_diagonal(matrix, 0.0)
    condensed = squareform(matrix, checks=False)
    tree = optimal_leaf_ordering(linkage(condensed, method="average"), condensed)
    return [int(i) for i in leaves_list(tree)], tree


def short_labels(labels: Sequence[str]) -> tuple[list[str], str]:
    """Labels without the part every one shares up to its last '-' (``hedge-mosbach-s0`` -> ``s0``), and that part."""
    common = os.path.commonprefix(list(labels)) if len(labels) > 1 else ""
    common = common[:common.rfind("-") + 1] if "-" in common else ""
    return [label[len(common):] or label for label in labels], common.rstrip("-")


@styled
def plot_barriers(records: RecordsLike | Sequence[RecordsLike], ax: Axes | None = None, *,
                  name: str | None = None) -> Figure:
    """The first barrier matrix found in the records (or the one called ``name``)."""
    runs = load_runs(records)
    (_, matrix), *_ = fetch_each(runs, lambda r: sources.barriers(r, name), "barrier figure")
    heights = barrier_matrix(matrix.loss)
    order, tree = cluster_order(heights)
    labels, common = short_labels(matrix.labels)
    if ax is None and tree is not None:
        figure, (top, axis) = _stacked()
        dendrogram(tree, ax=top, no_labels=True, color_threshold=0, above_threshold_color=NEUTRAL)
        top.set_xlim(0, 10 * len(order))  # scipy puts leaf k at 10 k + 5: under it, heat-map column k
        top.set_axis_off()
    else:
        figure, (axis,) = panels(ax, 1, (COLUMN, COLUMN))
    shown = heights[np.ix_(order, order)]
    image = axis.imshow(shown, cmap="magma_r", vmin=0.0, aspect="auto")
    _write_values(axis, image, shown)
    names = [f"{labels[k]} ({_metric(matrix.dev_metric[k])})" for k in order]
    axis.set_xticks(range(len(order)), [labels[k] for k in order], rotation=90)
    axis.set_yticks(range(len(order)), names)
    for ticks in (axis.get_xticklabels(), axis.get_yticklabels()):
        for tick, k in zip(ticks, order):
            if matrix.failed[k]:
                tick.set_color(FAILED_COLOUR)
                tick.set_fontweight("bold")
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    bar = figure.colorbar(image, ax=axis, location="bottom", shrink=0.8, aspect=30)
    bar.set_label(f"loss barrier ({matrix.split} loss)")
    metric = (matrix.metric or "dev metric").upper() if matrix.metric == "mcc" else (matrix.metric or "dev metric")
    failed = "\nfailed runs in vermillion" if any(matrix.failed) else ""
    axis.set_xlabel(f"{common + ' runs' if common else 'runs'} (dev {metric} x 100){failed}", fontsize="small")
    return figure


def value_size(cells: int) -> float | None:
    """The font size (points) of the numbers in a heat map ``cells`` wide on a one-column figure: as large as the
    tick labels while they fit (four characters, ``0.15``, in a cell), smaller for more runs, and None (no numbers,
    the colour bar reads them) once they would be smaller than 4.5 points."""
    size = min(8.0, 64.0 / max(cells, 1))
    return size if size >= 4.5 else None


def _write_values(axis: Axes, image, shown: np.ndarray) -> None:
    """Each off-diagonal barrier written in its cell, white on dark cells and black on light ones (by the
    luminance of the cell's own colour, so the numbers stay readable on any colour map)."""
    size = value_size(len(shown))
    if size is None:
        return
    for (i, j), value in np.ndenumerate(shown):
        if i != j and np.isfinite(value):
            red, green, blue, _ = image.cmap(image.norm(value))
            dark = 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.45
            axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=size,
                      color="white" if dark else "black")


def _stacked() -> tuple[Figure, tuple[Axes, Axes]]:
    """A dendrogram strip above a square heat map."""
    import matplotlib.pyplot as plt

    figure, (top, axis) = plt.subplots(2, 1, figsize=(COLUMN, COLUMN + 1.0), height_ratios=(1, 4))
    return figure, (top, axis)


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"

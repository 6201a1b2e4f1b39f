"""Vanishing gradients (Mosbach et al., Fig. 4): gradient norm per layer against iteration, log scale.

One panel per run (a failed and a successful one side by side, sharing the y axis), one line per depth on a
colour ramp plus the pooler and the head, the end of warm-up dotted. ``matrix="first"`` (or a parameter path such
as ``"attention.self.query.weight"``) draws one weight matrix per layer instead of the whole layer, as the paper
did; ``activations=True`` draws the norm of the gradient with respect to each block's output instead (per depth
even for ALBERT, whose shared block has one parameter gradient). From the command line:
``python -m plots gradients FAILED.h5 SUCCESSFUL.h5 -o gradients.pdf``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from probes.records import RunRecords

from plots import sources
from plots.runs import RecordsLike, fetch_each, load_runs, panel_runs
from plots.style import COLUMN, NEUTRAL, PAGE, PALETTE, panel_title, panels, styled

SPECIAL = {"embeddings": ("embeddings", "0.55", ":"), "pooler": ("pooler", PALETTE[1], "--"),
           "head": ("head (classifier)", PALETTE[3], "-"), "encoder.shared": ("encoder (shared)", PALETTE[0], "-"),
           "other": ("other (in the base model)", "0.7", "-.")}


@styled
def plot_gradients(records: RecordsLike | Sequence[RecordsLike], ax: Axes | Sequence[Axes] | None = None, *,
                   failed: Sequence[RecordsLike] = (), successful: Sequence[RecordsLike] = (),
                   layers: str | Sequence[int] = "subset", matrix: str | None = None,
                   activations: bool = False) -> Figure:
    """Draw the first failed and the first successful run (or the first two runs when no verdict is known).

    ``layers``: "subset" (depth 1 and about six evenly spaced depths, the pooler and the head), "all" (every
    layer, embeddings included) or a list of encoder depths (plus the pooler and the head).
    """
    found = fetch_each(load_runs(records, failed, successful), lambda r: _norms(r, matrix, activations),
                       "gradients figure")
    norms = {id(run): data for run, data in found}
    chosen = panel_runs([run for run, _ in found])
    data = [norms[id(run)] for run in chosen]
    figure, axes = panels(ax, len(chosen), (PAGE, 2.6) if len(chosen) > 1 else (COLUMN, 3.6), sharey=True)
    handles: dict[str, Line2D] = {}
    for index, (axis, run, (curves, clipping)) in enumerate(zip(axes, chosen, data)):
        names = select_layers(list(curves), layers)
        for name, colour, style, label in _line_styles(names):
            curve = curves[name]
            values = np.where(curve.values > 0, curve.values, np.nan)
            (line,) = axis.plot(curve.steps, values, color=colour, linestyle=style, label=label)
            handles.setdefault(label, line)
        warmup = sources.warmup_end(run.records)
        if warmup is not None:
            handles.setdefault("end of warm-up", axis.axvline(warmup, color=NEUTRAL, linestyle=":", linewidth=1))
        axis.set_yscale("log")
        axis.set_xlabel("iteration")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers, also in a short run
        verdict = {True: "failed run", False: "successful run", None: "run"}[run.failed]
        panel_title(axis, index, f"{verdict} ({run.label})")
    details = [what for what, shown in (("one matrix per layer", matrix), ("before clipping", clipping == "pre"),
                                         ("after clipping", clipping == "post")) if shown]
    what = "activation-gradient norm" if activations else "gradient norm"
    axes[0].set_ylabel(what + (f"\n({', '.join(details)})" if details else ""))
    if len(axes) > 1:
        figure.legend(list(handles.values()), list(handles), loc="outside right center")  # below long titles
    else:  # one column wide: the legend goes under the panel
        figure.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=2, fontsize="small")
    return figure


def select_layers(names: list[str], layers: str | Sequence[int]) -> list[str]:
    """The layer names to draw, in order: see :func:`plot_gradients` for ``layers``."""
    depths = [int(n.split(".")[1]) for n in names if n.startswith("encoder.") and n.split(".")[1].isdigit()]
    if layers == "all":
        return names
    if layers == "subset":
        step = max(1, round(max(depths, default=1) / 6))
        wanted = {1, *range(step, max(depths, default=0) + 1, step)}
    else:
        wanted = {int(d) for d in layers}
    return [n for n in names if n in ("pooler", "head", "encoder.shared")
            or (n.startswith("encoder.") and n.split(".")[1].isdigit() and int(n.split(".")[1]) in wanted)]


def _norms(run: RunRecords, matrix: str | None, activations: bool) -> tuple[dict[str, sources.Curve], str]:
    if activations:
        return sources.activation_norms(run)
    if matrix:
        return sources.component_norms(run, None if matrix == "first" else matrix)
    return sources.layer_norms(run)


def _line_styles(names: list[str]) -> list[tuple[str, object, str, str]]:
    """(name, colour, line style, legend label) per layer: encoder depths on a dark-to-light ramp."""
    encoder = [n for n in names if n not in SPECIAL]
    ramp = sns.color_palette("crest_r", max(len(encoder), 2))
    styles = []
    for name in names:
        if name in SPECIAL:
            label, colour, style = SPECIAL[name]
        else:
            label, colour, style = f"layer {name.split('.')[1]}", ramp[encoder.index(name)], "-"
        styles.append((name, colour, style, label))
    return styles

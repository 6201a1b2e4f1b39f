"""The one look of every figure, applied inside a context (never globally), and how figures are saved.

Seaborn's "paper" context, white "ticks" axes, the colour-blind palette, TrueType fonts in the PDF (editable in
a paper), sizes for a column (3.3 in) or a page width (7 in). Figure functions wear :func:`styled`; a figure is
written by :func:`save`, which refuses an existing file unless asked and never leaves a partial one.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter

from probes.output_paths import check_parent, make_parent

COLUMN = 3.3  # inches: one column of a two-column paper
PAGE = 7.0  # inches: the full text width
FORMATS = (".pdf", ".png", ".svg")
PALETTE = sns.color_palette("colorblind")
FAILED_COLOUR = PALETTE[3]  # vermillion
SUCCESS_COLOUR = PALETTE[0]  # blue
NEUTRAL = "0.35"
RUN_COLOURS = [PALETTE[i] for i in (0, 2, 4, 9, 6, 5, 7)]  # the palette less vermillion (failed runs), yellow
RC = {
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "figure.constrained_layout.use": True,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "savefig.dpi": 200,
    "image.cmap": "viridis",
    "lines.linewidth": 1.1,
}


class FigureError(ValueError):
    """A figure that cannot be drawn or saved as asked; the message is one line naming the problem and the fix."""


@contextmanager
def paper_style() -> Iterator[None]:
    """The toolkit's figure style, for the duration of a ``with`` block only."""
    with sns.axes_style("ticks"), sns.plotting_context("paper"), plt.rc_context(RC):
        yield


def styled(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    """Run a figure function inside :func:`paper_style` (artists take their style when they are made)."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> Figure:
        with paper_style():
            return draw(*args, **kwargs)
    return wrapper


def panels(ax: Axes | Sequence[Axes] | None, count: int, size: tuple[float, float], **subplots) -> tuple[Figure, list[Axes]]:
    """``count`` side-by-side axes: new ones in a new figure of ``size`` inches, or the ones the caller passed."""
    if ax is None:
        figure, axes = plt.subplots(1, count, figsize=size, squeeze=False, **subplots)
        return figure, list(axes.flat)
    axes = [ax] if isinstance(ax, Axes) else list(ax)
    if len(axes) != count:
        raise FigureError(f"this figure has {count} panel(s) but {len(axes)} axes were passed; "
                          f"pass ax=None or {count} axes")
    return axes[0].figure, axes


def panel_title(ax: Axes, index: int, text: str) -> None:
    """Title a panel "(a) text", "(b) text"... as in the papers."""
    ax.set_title(f"({'abcdefgh'[index]}) {text}", loc="left")


def log_scale_if_wide(axis: Axes, values, which: str = "y", *, decades: float = 1.0) -> bool:
    """A log ``which`` axis when the positive ``values`` span at least ``decades`` powers of ten, else a linear
    one (a log axis over 0.66..0.70 shows only clashing minor labels). Up to three decades the ticks read 0.01,
    0.02, 0.05 or 1, 10, 100; beyond, 10^k. Returns whether it chose log."""
    finite = np.asarray(values, dtype="f8")
    finite = finite[np.isfinite(finite)]
    span = float(np.log10(finite.max() / finite.min())) if finite.size and finite.min() > 0 else 0.0
    getattr(axis, f"set_{which}scale")("log" if span >= decades else "linear")
    if decades <= span <= 3:
        target = getattr(axis, f"{which}axis")
        target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if span <= 1.5 else (1.0,)))
        target.set_major_formatter(lambda value, _: f"{value:g}")
        target.set_minor_formatter(NullFormatter())
    return span >= decades


def save(figure: Figure, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``figure`` to ``path`` (.pdf, .png or .svg), atomically; an existing file is refused unless
    ``overwrite``. Returns the path."""
    path = Path(path)
    check_output(path, overwrite=overwrite)
    make_parent(path, FigureError)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with paper_style():
            figure.savefig(partial, format=path.suffix[1:], bbox_inches="tight")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def check_output(path: Path, *, overwrite: bool) -> None:
    """Refuse an output path before any drawing: a wrong format, a missing folder, an existing file."""
    if path.suffix.lower() not in FORMATS:
        raise FigureError(f"cannot write {path.name}: name the output .pdf, .png or .svg")
    check_parent(path, FigureError)
    if path.exists() and not overwrite:
        raise FigureError(f"{path} already exists; pass --overwrite to replace it, or another output path")

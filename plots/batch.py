"""Draw a list of figures from one set of records and save each: what both ``plots FIGURE`` and ``plots all`` do.

Every output is checked before anything is drawn (nothing is overwritten unless asked). A figure whose records are
missing raises in strict mode (one figure asked for by name) and is skipped with its reason otherwise (``all``).
Records lacking what one figure needs, left out of it while the others drew it, come back as notes.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
from tqdm import tqdm

from plots.registry import FIGURES
from plots.runs import LeftOut, RecordsLike, load_runs
from plots.sources import MissingRecord
from plots.style import FigureError, check_output, save


@dataclass
class Report:
    """What was drawn where, what was skipped and why, and which records figures left out."""

    drawn: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def draw_figures(outputs: dict[str, Path], records: Sequence[RecordsLike], *, failed: Sequence[RecordsLike] = (),
                 successful: Sequence[RecordsLike] = (), options: dict[str, Any] | None = None,
                 overwrite: bool = False, strict: bool = True) -> Report:
    """Draw each figure named in ``outputs`` (figure name -> output file) from ``records``."""
    for name, path in outputs.items():
        if name not in FIGURES:
            raise FigureError(f"no figure called {name!r}; choose one of {', '.join(FIGURES)}")
        check_output(path, overwrite=overwrite)
    runs = load_runs(records, failed, successful)
    verdicts = {"failed": [r.records for r in runs if r.failed is True],
                "successful": [r.records for r in runs if r.failed is False]}
    loaded = [run.records for run in runs]
    report = Report()
    for name, path in tqdm(outputs.items(), desc="figures", unit="figure", disable=None if len(outputs) > 1 else True):
        draw = FIGURES[name].draw
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LeftOut)
            try:
                figure = draw(loaded, **figure_options(name, {**verdicts, **(options or {})}, strict=strict))
            except MissingRecord as error:
                if strict:
                    raise
                report.skipped[name] = str(error)
                continue
        report.notes += [str(w.message) for w in caught if issubclass(w.category, LeftOut)]
        try:
            report.drawn[name] = save(figure, path, overwrite=overwrite)
        finally:
            plt.close(figure)
    return report


def figure_options(name: str, options: dict[str, Any], *, strict: bool) -> dict[str, Any]:
    """The options figure ``name`` takes; in strict mode an option it does not take (one the user gave) is refused."""
    taken = inspect.signature(FIGURES[name].draw).parameters
    refused = [key for key in options if key not in taken and key not in ("failed", "successful")]
    if strict and refused:
        flag = "--" + refused[0].replace("_", "-")
        raise FigureError(f"{flag} does not apply to the {name} figure; leave it out")
    return {key: value for key, value in options.items() if key in taken}

"""A resumable grid of loss and accuracy points in a records file, as the surface and barrier commands fill it.

`open_grid` opens (or creates) the grid on rank 0, finds the points still missing, and shares that list with every
rank; each point is then written and flushed as it arrives, so a command stopped by Ctrl-C, a kill or a crash
computes only the missing points when run again. A grid whose axes or attributes differ from the stored one is
refused (``probes.records``), as is a records file that cannot be used.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from diagnostics.distributed import Ranks, broadcast
from diagnostics.evaluation import EvaluationError
from probes import catalogue
from probes.records import RecordsError, RunMeta, RunWriter, open_run, write_grid

FIELDS = catalogue.SURFACE_PLANE.fields  # every surface and barrier grid: loss, accuracy
KIND = catalogue.SURFACE_PLANE.kind


def open_record(out: str, name: str, axes: dict[str, np.ndarray], attrs: dict[str, Any],
                meta: RunMeta) -> tuple[RunWriter, dict[str, np.ndarray]]:
    """Open or create ``out`` with the grid ``name`` declared (``meta`` for a new file's root); returns the writer
    and the values already there.

    A new grid is first written whole, all NaN, and closed: HDF5 then allocates its storage before the SWMR
    writer starts, so the points written later change no file structure and a reader (or a killed writer's
    file) always sees a consistent grid.
    """
    shape = tuple(len(v) for v in axes.values())
    if not Path(out).exists() or name not in open_run(out).names(KIND):
        write_grid(out, name, axes, {f: np.full(shape, np.nan) for f in FIELDS}, kind=KIND, attrs=attrs, meta=meta)
    writer = RunWriter.open(out)
    try:
        existing = writer.add_grid(name, axes, list(FIELDS), kind=KIND, attrs=attrs)
        writer.start()
    except BaseException:
        writer.close()
        raise
    return writer, {f: np.array(existing.fields[f], dtype="f8") for f in FIELDS}


@contextlib.contextmanager
def open_grid(ranks: Ranks, out: str | None, name: str, axes: dict[str, np.ndarray], attrs: dict[str, Any],
              meta: RunMeta, missing: Callable[[dict[str, np.ndarray]], list]
              ) -> Iterator[tuple[RunWriter | None, dict[str, np.ndarray], list]]:
    """The grid as every rank starts filling it: rank 0 opens ``out`` (if given) with `open_record` and lists what
    ``missing`` finds still to do in its values; every rank gets that list, or rank 0's records error as an
    `EvaluationError`. Yields the writer (None off rank 0 or without ``out``; closed on exit), the values so far
    (all NaN without a file) and the list."""
    shape = tuple(len(v) for v in axes.values())
    writer, values, error = None, {f: np.full(shape, np.nan) for f in FIELDS}, None
    if ranks.is_main and out:
        try:
            writer, values = open_record(out, name, axes, attrs, meta)
        except RecordsError as failure:
            error = str(failure)
    try:
        todo = missing(values) if error is None and ranks.is_main else None
        error, todo = broadcast((error, todo), ranks)
        if error:
            raise EvaluationError(error)
        yield writer, values, todo
    finally:
        if writer is not None:
            writer.close()

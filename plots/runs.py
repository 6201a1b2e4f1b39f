"""The runs a figure is drawn from: records files (or already-read records) with their verdict, failed or not.

The verdict comes from the run's summary (``failed``) unless the caller names runs as failed or successful
(``--failed RUN --successful RUN`` on the command line); a named run not among the records is added. Not a
command; every figure function starts with :func:`load_runs`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from collections import Counter
from typing import Callable, Iterable, Sequence, TypeVar

from probes.records import RunRecords, iter_runs, open_run

from plots import sources
from plots.sources import MissingRecord, NotApplicable

RecordsLike = RunRecords | str | os.PathLike
T = TypeVar("T")


@dataclass(frozen=True)
class Run:
    """One run's records and whether it failed (None: neither the summary nor the caller says)."""

    records: RunRecords
    failed: bool | None

    @property
    def label(self) -> str:
        """Task, recipe and seed (``hedge default s0``), as far as the run's metadata names them; else its file."""
        seed = sources.seed(self.records)
        parts = [self.records.meta.get("task"), self.records.meta.get("recipe"),
                 None if seed is None else f"s{seed}"]
        return " ".join(str(part) for part in parts if part) or sources.name_of(self.records)


def run_labels(runs: Sequence[Run]) -> list[str]:
    """One legend label per run: :attr:`Run.label`, with the settings in which they differ added where two runs of
    one figure would read alike (``hedge default s0 lr 0.0001``), then their folders where they still do."""
    labels = [run.label for run in runs]
    for group in _alike(labels):
        settings = [sources.settings(runs[i].records) for i in group]
        differing = sorted({key for one in settings for key in one
                            if any(other.get(key) != one.get(key) for other in settings)})
        for i, one in zip(group, settings):
            labels[i] = " ".join([labels[i]] + [f"{_short(key)} {one.get(key)}" for key in differing])
    for group in _alike(labels):
        for i in group:
            labels[i] = f"{labels[i]} ({'/'.join(runs[i].records.path.parts[-3:-1])})"
    return labels


def _alike(labels: list[str]) -> list[list[int]]:
    """Indices of labels that occur more than once, grouped by label."""
    counts = Counter(labels)
    return [[i for i, label in enumerate(labels) if label == repeated] for repeated, n in counts.items() if n > 1]


def _short(key: str) -> str:
    return key.replace("layerwise_lr_decay", "lr decay").replace("_", " ")


def load_runs(records: RecordsLike | Iterable[RecordsLike], failed: Iterable[RecordsLike] = (),
              successful: Iterable[RecordsLike] = ()) -> list[Run]:
    """Read what is not read yet (a folder: every ``*.h5`` in it) and attach verdicts; ``failed`` and
    ``successful`` override the summaries."""
    verdicts: dict[Path, bool] = {}
    ordered: dict[Path, RunRecords] = {}
    for verdict, group in ((None, records), (True, failed), (False, successful)):
        for item in _expand([group] if isinstance(group, (RunRecords, str, os.PathLike)) else group):
            run = item if isinstance(item, RunRecords) else open_run(item)
            key = run.path.resolve()
            ordered.setdefault(key, run)
            if verdict is not None:
                verdicts[key] = verdict
    return [Run(run, verdicts.get(key, sources.failed_flag(run))) for key, run in ordered.items()]


def _expand(items: Iterable[RecordsLike]) -> Iterable[RunRecords | Path]:
    """Read records as they are; folders become every ``*.h5`` inside them."""
    for item in items:
        if isinstance(item, RunRecords):
            yield item
        else:
            yield from iter_runs([item])


def by_outcome(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """The failed runs and the successful ones (runs without a verdict are in neither)."""
    return [r for r in runs if r.failed is True], [r for r in runs if r.failed is False]


def panel_runs(runs: list[Run]) -> list[Run]:
    """The runs of a side-by-side figure: the first failed and the first successful one, else the first two."""
    failed, successful = by_outcome(runs)
    return (failed[:1] + successful[:1]) or runs[:2]


def require_verdicts(runs: list[Run], figure: str) -> None:
    """Refuse runs with no verdict where a figure splits failed from successful."""
    unknown = [sources.name_of(r.records) for r in runs if r.failed is None]
    if unknown:
        raise MissingRecord(f"{', '.join(unknown)} has no summary 'failed' for the {figure} figure; "
                            f"finish the run with {sources.FINETUNE}, or pass --failed RUN / --successful RUN")


class LeftOut(UserWarning):
    """Some records lacked what a figure needs and were left out of it (the figure was drawn from the rest)."""


def fetch_each(runs: list[Run], fetch: Callable[[RunRecords], T], what: str) -> list[tuple[Run, T]]:
    """``fetch`` from every run that has the data. Runs without it are left out, with one :class:`LeftOut`
    warning naming those that should have had it (not :class:`NotApplicable` ones); if none has it, :class:`MissingRecord` is raised naming the record and the command that makes it."""
    if not runs:
        raise MissingRecord(f"no records given for the {what}; pass one or more records files")
    found, errors = [], []
    for run in runs:
        try:
            found.append((run, fetch(run.records)))
        except MissingRecord as error:
            errors.append(error)
    if not found and len(runs) == 1:
        raise errors[0]
    if not found:
        raise MissingRecord(f"none of the {len(runs)} records has what the {what} needs; the first: {errors[0]}")
    errors = [error for error in errors if not isinstance(error, NotApplicable)]
    if errors:
        reasons = [str(error).split(";")[0] for error in errors]
        shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
        warnings.warn(LeftOut(f"{what}: left out {len(errors)} of {len(runs)} records ({shown})"), stacklevel=2)
    return found

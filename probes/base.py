"""The one base class every probe derives from, and the record of the torch hook handles a session holds.

A probe is a small object that a :class:`probes.session.ProbeSession` drives through a run. Every lifecycle method
does nothing by default, so a probe overrides only what it needs. The session owns one device buffer of rows (one
row per recorded optimiser step); each probe owns ``width`` columns of it and gets its slice, ``row``, a 1-D tensor
on the gradients' device. Nothing here may read a value back to the host: the session copies the whole buffer once
per flush and hands each probe its block in :meth:`Probe.write`.

Order of calls, for a recorded step: ``on_backward`` at the end of each backward (micro-batch) of the step, after
DDP's all-reduce; ``on_step`` inside ``optimizer.step()``, before the update (gradients clipped by then);
``after_step`` after the update; or ``on_skip`` instead of both when the step was skipped (a GradScaler found
inf/NaN, or the loop zeroed the gradients without stepping). To add a probe: subclass :class:`Probe`, set
``width`` in ``bind``, say what you record in ``series`` (entries of :mod:`probes.catalogue` with their columns),
fill ``row`` in the hooks; the block of your columns is written to those series as it is (override ``rows`` to
turn it into something else first). Decide in ``on_flush`` (every rank sees the same numbers there; a probe may
set ``session.flush_requested`` to have one at the end of the step) and set ``session.stop_requested`` to ask a
Hugging Face ``Trainer`` to stop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from probes.catalogue import SeriesSpec

if TYPE_CHECKING:
    from probes.records import RunWriter
    from probes.session import ProbeSession


@dataclass(frozen=True)
class Declared:
    """One series a probe records: its catalogue entry, its columns and optional per-column axes and attributes."""

    spec: SeriesSpec
    columns: Sequence[str]
    axes: Mapping[str, Sequence] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)


class Probe:
    """Base probe: ``width`` buffer columns, lifecycle methods that do nothing until overridden."""

    width: int = 0
    measured_only: bool = False  # True: rows left all NaN (a step the probe's own schedule skipped) are not written
    until: int | None = None  # the last step (0-based) it records, for signals read only early; None: every step

    def live(self, session: "ProbeSession") -> bool:
        """Whether this probe records the step in progress: the session's schedule records it and it is at or
        before ``until``. Probes with hooks of their own ask this before doing any work."""
        return session.recording and (self.until is None or session.step <= self.until)

    def bind(self, session: "ProbeSession") -> None:
        """Learn the model (``session.table``, ``session.layers``) and set ``width``; called once, first."""

    def series(self) -> list[Declared]:
        """What this probe records (asked after ``bind``); by default its block's columns in this order."""
        return []

    def rows(self, block: np.ndarray) -> list[np.ndarray]:
        """The rows of each declared series from the host copy of this probe's block: by default consecutive
        column slices of the block, in the order of ``series``."""
        parts, start = [], 0
        for declared in self.series():
            parts.append(block[:, start:start + len(declared.columns)])
            start += len(declared.columns)
        return parts

    def declare(self, writer: "RunWriter") -> None:
        """Declare this probe's series on ``writer`` (rank 0 only, before the writer starts)."""
        for declared in self.series():
            writer.add_series(declared.spec.name, declared.columns, kind=declared.spec.kind, axes=declared.axes,
                              attrs=declared.attrs)

    def attach(self, session: "ProbeSession") -> None:
        """Register extra torch hooks through ``session.hooks.add(handle, why)``."""

    def on_backward(self, session: "ProbeSession", row: torch.Tensor, first: bool) -> None:
        """End of a backward of a recorded step; ``first`` is True for the step's first recorded backward."""

    def on_step(self, session: "ProbeSession", row: torch.Tensor) -> None:
        """Inside ``optimizer.step()`` of a recorded step, before the parameters change."""

    def after_step(self, session: "ProbeSession", row: torch.Tensor) -> None:
        """After the parameters changed, on a recorded step."""

    def on_skip(self, session: "ProbeSession", row: torch.Tensor) -> None:
        """A recorded step ended without ``optimizer.step()``."""

    def reduce(self, session: "ProbeSession", block: torch.Tensor) -> None:
        """Combine this probe's block across ranks in place before it is copied to the host (a collective)."""

    def on_flush(self, session: "ProbeSession", steps: list[int], block: np.ndarray) -> None:
        """Every rank, once per flush, with the host copy of this probe's combined rows: the place for decisions
        (setting ``session.stop_requested`` here stops every rank at the same step)."""

    def write(self, writer: "RunWriter", steps: list[int], block: np.ndarray) -> None:
        """Append the host copy of this probe's rows to its series (rank 0 only)."""
        for declared, values in zip(self.series(), self.rows(block)):
            keep = ~np.isnan(values).all(axis=1) if self.measured_only else np.ones(len(steps), dtype=bool)
            if self.until is not None:
                keep &= np.asarray(steps) <= self.until
            writer.extend(declared.spec.name, [step for step, kept in zip(steps, keep) if kept], values[keep])

    def detach(self, session: "ProbeSession") -> None:
        """Last call, after the final write; hooks are removed by the session."""


@dataclass
class HookRecord:
    """Torch hook handles with the reason each exists; :meth:`remove_all` removes exactly these."""

    handles: list[tuple[Any, str]] = field(default_factory=list)

    def add(self, handle: Any, why: str) -> Any:
        self.handles.append((handle, why))
        return handle

    def remove_all(self) -> None:
        while self.handles:
            handle, _ = self.handles.pop()
            handle.remove()

    def __len__(self) -> int:
        return len(self.handles)

    def __repr__(self) -> str:
        return "HookRecord(" + "; ".join(why for _, why in self.handles) + ")"

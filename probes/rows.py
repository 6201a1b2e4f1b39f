"""A preallocated device buffer of recorded rows: probes write into it on the device, the host reads it per flush.

One row per recorded optimiser step, ``width`` float32 columns shared out among the probes (``parts``: each probe's
column slice), ``capacity`` rows, all NaN until written. The views of every row and of every probe's part of it are
made once, here, so that a recorded step dispatches no operation to find where to write; the buffer is set back to
NaN in :meth:`take`, once per flush, rather than row by row. :meth:`take` is the only host synchronisation: it
copies the committed rows once and empties the buffer.
"""
from __future__ import annotations

from typing import Sequence

import torch


class DeviceRows:
    """``capacity`` rows of ``width`` columns on ``device``, committed step by step and taken in blocks."""

    def __init__(self, width: int, capacity: int, device: torch.device, parts: Sequence[slice] = ()) -> None:
        self.values = torch.full((capacity, max(1, width)), float("nan"), dtype=torch.float32, device=device)
        self._rows = list(self.values.unbind())
        self._parts = [[row[part] for part in parts] for row in self._rows]
        self.steps: list[int] = []
        self.is_open = False

    @property
    def full(self) -> bool:
        return len(self.steps) == len(self.values)

    def open_parts(self) -> list[torch.Tensor]:
        """Each part of the row of the step in progress, in the order of ``parts``."""
        self.is_open = True
        return self._parts[len(self.steps)]

    def last_row(self) -> torch.Tensor | None:
        """The most recently committed row, while it is still in the buffer."""
        return self._rows[len(self.steps) - 1] if self.steps else None

    def commit(self, step: int) -> None:
        self.steps.append(step)
        self.is_open = False

    def take(self) -> tuple[list[int], torch.Tensor]:
        """The committed ``(steps, rows)`` (rows still on the device) and an empty, NaN-filled buffer."""
        steps, rows = self.steps, self.values[: len(self.steps)].clone()
        self.values.fill_(float("nan"))
        self.steps, self.is_open = [], False
        return steps, rows

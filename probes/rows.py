"""A preallocated device buffer of recorded rows: probes write into it on the device, the host reads it per flush.

One row per recorded optimiser step, ``width`` float32 columns shared out among the probes, ``capacity`` rows; the
open row (the step in progress) starts as NaN. :meth:`take` is the only host synchronisation: it copies the
committed rows once and empties the buffer.
"""
from __future__ import annotations

import torch


class DeviceRows:
    """``capacity`` rows of ``width`` columns on ``device``, committed step by step and taken in blocks."""

    def __init__(self, width: int, capacity: int, device: torch.device) -> None:
        self.values = torch.full((capacity, max(1, width)), float("nan"), dtype=torch.float32, device=device)
        self.steps: list[int] = []
        self.is_open = False

    @property
    def full(self) -> bool:
        return len(self.steps) == len(self.values)

    def open_row(self) -> torch.Tensor:
        """The row of the step in progress, filled with NaN when first asked for after a commit."""
        row = self.values[len(self.steps)]
        if not self.is_open:
            row.fill_(float("nan"))
            self.is_open = True
        return row

    def last_row(self) -> torch.Tensor | None:
        """The most recently committed row, while it is still in the buffer."""
        return self.values[len(self.steps) - 1] if self.steps else None

    def commit(self, step: int) -> None:
        self.open_row()
        self.steps.append(step)
        self.is_open = False

    def take(self) -> tuple[list[int], torch.Tensor]:
        """The committed ``(steps, rows)`` (rows still on the device) and an empty buffer."""
        steps, rows = self.steps, self.values[: len(self.steps)].clone()
        self.steps, self.is_open = [], False
        return steps, rows

"""The training loss against the plateau of a collapsed classifier (kind ``scalars``, series ``plateau``).

A classifier that predicts the class prior of C balanced classes has cross-entropy ln C; failed runs sit there
(ln 2 = 0.69 for the papers' binary tasks, Mosbach et al. 2020, Fig. 2c). Per recorded step: ``loss_over_ln_c``,
the step's training loss divided by ln C (1 on the plateau, falling below it as the run learns), and ``slope``,
the least-squares slope of the loss against the step over the last ``window`` recorded steps (loss per step; flat
on the plateau). The losses stay on the device in a small ring buffer; nothing is read back before the flush.
"""
from __future__ import annotations

import math

import torch

from probes import catalogue, distributed
from probes.base import Declared, Probe

COLUMNS = catalogue.LOSS_PLATEAU.columns


def least_squares_slope(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Slope of y against x over the finite entries of y (NaN with fewer than two)."""
    usable = torch.isfinite(y)
    count = usable.sum()
    x, y = torch.where(usable, x, 0.0), torch.where(usable, y, 0.0)
    dx = torch.where(usable, x - x.sum() / count, 0.0)
    dy = torch.where(usable, y - y.sum() / count, 0.0)
    return (dx * dy).sum() / dx.square().sum()


class LossPlateau(Probe):
    """Loss over ln(number of classes), and the loss's slope over the last ``window`` recorded steps."""

    width = len(COLUMNS)

    def __init__(self, num_classes: int | None = None, window: int = 10) -> None:
        if window < 2:
            raise ValueError(f"LossPlateau(window={window}): a slope needs at least 2 steps")
        self.num_classes, self.window = num_classes, window

    def bind(self, session) -> None:
        classes = self.num_classes or getattr(getattr(session.model, "config", None), "num_labels", None)
        if not classes or classes < 2:
            raise ValueError("LossPlateau needs the number of classes (>= 2): pass num_classes=")
        self.ln_c = math.log(classes)
        self._losses = torch.full((self.window,), math.nan, device=session.device)
        self._steps = torch.zeros(self.window, device=session.device)
        self._seen = 0

    def series(self) -> list[Declared]:
        return [Declared(catalogue.LOSS_PLATEAU, COLUMNS, attrs={
            "ln_c": self.ln_c, "window": self.window,
            "slope": "least-squares slope of the training loss per step over the last `window` recorded steps"})]

    def on_step(self, session, row: torch.Tensor) -> None:
        """Record the step's loss (also for a skipped step) and the slope over the window."""
        loss = session.step_loss()
        slot = self._seen % self.window
        self._losses[slot] = loss
        self._steps[slot] = float(session.step)
        self._seen += 1
        row[0] = loss / self.ln_c
        row[1] = least_squares_slope(self._steps, self._losses)

    on_skip = on_step

    def reduce(self, session, block: torch.Tensor) -> None:
        distributed.mean_(block, session.world)

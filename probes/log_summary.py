"""A compact summary of the probes' records for a trainer's loggers (TensorBoard, W&B, MLflow... through the Hugging
Face ``Trainer``'s ``report_to``), under stable names: ``probes/grad_norm/encoder.3``, ``probes/early_warning/score``.

It mirrors the records, it computes nothing: at each logging step the session is flushed and the newest row of a
few series is read back from the records file, so a logged number is the number stored for that step (the latest
recorded step, as the :class:`probes.Schedule` chose it). A row is reported once: the early-warning decision appears
at the first logging step after it is made, the gradient norms at every logging step that has a new recorded step.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from probes import catalogue
from probes.records import RunWriter

# series name -> (name under probes/, the columns reported or None for all)
REPORTED: dict[str, tuple[str, Sequence[str] | None]] = {
    catalogue.LAYER_NORMS.name: ("grad_norm", None),
    catalogue.EARLY_WARNING.name: ("early_warning", ("score", "flagged")),
}


class LogSummary:
    """Turns the newest records of ``series`` into ``{"probes/<name>/<column>": value}``, each row once."""

    def __init__(self, series: Mapping[str, tuple[str, Sequence[str] | None]] = REPORTED) -> None:
        self.series = dict(series)
        self._reported: dict[str, int] = {}

    def new_values(self, writer: RunWriter) -> dict[str, float]:
        values: dict[str, float] = {}
        for name, (prefix, columns) in self.series.items():
            latest = writer.latest(name)
            if latest is None or latest[0] <= self._reported.get(name, -1):
                continue
            step, row = latest
            self._reported[name] = step
            values.update({f"probes/{prefix}/{column}": value for column, value in row.items()
                           if columns is None or column in columns})
        return values

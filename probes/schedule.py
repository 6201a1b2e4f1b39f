"""When probes record: a tiny schedule over optimiser steps (0-based, as counted by the probe session).

``Schedule(every=10, dense=50, log_spaced=False)`` records steps 0..49, then 50, 60, 70...; ``log_spaced=True``
adds roughly log-spaced steps (four per doubling: 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 16, 19, 23, 27, 32, ...), so
a long run keeps detail early without recording every step. The maths is the pure function :func:`records_step`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

PER_OCTAVE = 4


def records_step(step: int, every: int, dense: int = 0, log_spaced: bool = False) -> bool:
    """Whether ``step`` is recorded: below ``dense``, a multiple of ``every``, or (optionally) log-spaced."""
    if step < dense or step % every == 0:
        return True
    if not log_spaced or step < 1:
        return False
    nearest = math.log2(step) * PER_OCTAVE
    return any(round(2 ** (k / PER_OCTAVE)) == step for k in (math.floor(nearest), math.ceil(nearest)))


@dataclass(frozen=True)
class Schedule:
    """Record every ``every`` optimiser steps, every step below ``dense``, and log-spaced steps if asked."""

    every: int = 10
    dense: int = 50
    log_spaced: bool = False

    def __post_init__(self) -> None:
        if self.every < 1 or self.dense < 0:
            raise ValueError(f"Schedule(every={self.every}, dense={self.dense}): every must be >= 1 and dense >= 0")

    def __call__(self, step: int) -> bool:
        return records_step(step, self.every, self.dense, self.log_spaced)

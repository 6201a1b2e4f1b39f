"""Early warning: flag a run that is going to fail from its first steps, so a sweep can stop it and save compute.

The signal is the papers' mechanism. In a failing run the encoder's gradients vanish around the end of warm-up
(Mosbach et al. 2020, Fig. 4a) while the classifier's stay large; a run that goes on to learn sees them dip and
grow again. :func:`collapse_score` measures it as log10 of the encoder's gradient norm late in an early window over
its value at the start of the window: strongly negative means collapsed. A run is flagged when the score falls
below a threshold fitted on seeds whose outcome is known (``python -m diagnostics.report --early`` fits and
measures it; README "Early warning" gives the precision and recall on held-out seeds).

As a probe, :class:`EarlyWarning` records the encoder's gradient norm in its buffer column on each recorded step
of the window (combined across ranks at the flush, so sharded models agree), asks for a flush once the window is
over and decides in ``on_flush``, where every rank sees the same numbers: it warns, writes the decision as series
``scalars/early_warning`` and, with ``stop=True``, asks the run to stop (``session.stop_requested``, honoured by
the Hugging Face Trainer through :class:`probes.ProbeCallback`).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from probes import catalogue, distributed
from probes.base import Declared, Probe

DEFAULT_THRESHOLD = -1.0
COLUMNS = catalogue.EARLY_WARNING.columns


def collapse_score(steps: np.ndarray, encoder_norms: np.ndarray, window_end: int) -> float:
    """log10(median encoder gradient norm over the last quarter of steps 0..window_end / over the first quarter).

    ``encoder_norms[i]`` is the L2 norm of all encoder-block gradients at ``steps[i]``; NaN and non-positive
    values are ignored. Returns NaN when either quarter holds no usable value.
    """
    steps, values = np.asarray(steps), np.asarray(encoder_norms, dtype="f8")
    usable = np.isfinite(values) & (values > 0) & (steps <= window_end)
    quarter = max(1, window_end // 4)
    early = values[usable & (steps <= quarter)]
    late = values[usable & (steps >= window_end - quarter)]
    if early.size == 0 or late.size == 0:
        return math.nan
    return float(np.log10(np.median(late) / np.median(early)))


def encoder_norm(layer_names: list[str], layer_norms: np.ndarray) -> np.ndarray:
    """Total L2 norm of the encoder blocks per row, from per-layer norms ``(N, layers)`` (as records store them)."""
    columns = [i for i, name in enumerate(layer_names) if name.startswith("encoder.")]
    return np.sqrt(np.square(np.asarray(layer_norms, dtype="f8")[:, columns]).sum(axis=1))


class EarlyWarning(Probe):
    """Decide once ``window_end`` steps are recorded whether the run's encoder gradients collapsed; warn, record,
    maybe stop."""

    width = 1

    def __init__(self, window_end: int, threshold: float = DEFAULT_THRESHOLD, stop: bool = False) -> None:
        if window_end < 4:
            raise ValueError(f"EarlyWarning(window_end={window_end}): the window needs at least 4 steps")
        self.window_end, self.threshold, self.stop = window_end, threshold, stop
        self.decision: tuple[int, float, bool] | None = None
        self._steps: list[int] = []
        self._norms: list[float] = []
        self._written = False

    def bind(self, session) -> None:
        names = session.table.layers
        self._encoder = torch.tensor([i for i, layer in enumerate(session.table.layer_index)
                                      if names[layer].startswith("encoder.")], dtype=torch.long,
                                     device=session.device)

    def series(self) -> list[Declared]:
        return [Declared(catalogue.EARLY_WARNING, COLUMNS,
                         attrs={"rule": "flagged when collapse_score < threshold (probes/early_warning.py)"})]

    def on_backward(self, session, row: torch.Tensor, first: bool) -> None:
        if session.step <= self.window_end:
            row[0] = session.grad_norms.index_select(0, self._encoder).square().sum().sqrt()

    def after_step(self, session, row: torch.Tensor) -> None:
        if self.decision is None and session.step >= self.window_end:
            session.flush_requested = True

    def reduce(self, session, block: torch.Tensor) -> None:
        if session.sharded:
            distributed.sum_norms_(block, session.world)

    def on_flush(self, session, steps: list[int], block: np.ndarray) -> None:
        if self.decision is not None:
            return
        self._steps += steps
        self._norms += block[:, 0].tolist()
        if steps[-1] < self.window_end:
            return
        score = collapse_score(np.array(self._steps), np.array(self._norms), self.window_end)
        flagged = bool(score < self.threshold)
        self.decision = (steps[-1], score, flagged)
        if flagged:
            warnings.warn(f"early warning at step {steps[-1]}: encoder gradient norms fell 10^{score:.1f}-fold "
                          "over the first steps, the vanishing-gradient pattern of failed runs; consider "
                          "bias-corrected Adam, a lower learning rate or re-initialising the top layers",
                          RuntimeWarning, stacklevel=2)
            session.stop_requested = session.stop_requested or self.stop

    def write(self, writer, steps: list[int], block: np.ndarray) -> None:
        if self.decision is not None and not self._written:
            step, score, flagged = self.decision
            writer.append(catalogue.EARLY_WARNING.name, step,
                          [score, float(flagged), self.threshold, self.window_end])
            self._written = True

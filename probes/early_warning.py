"""Early warning: flag a run that is going to fail from its first steps, so a sweep can stop it and save compute.

The signal is the papers' mechanism. In a failing run the encoder's gradients vanish around the end of warm-up
(Mosbach et al. 2020, Fig. 4a) while the classifier's stay large; a run that goes on to learn sees them dip and
grow again. :func:`collapse_score` measures it as log10 of the encoder's gradient norm late in an early window over
its value at the start of the window: strongly negative means collapsed. A run is flagged when the score falls
below a threshold fitted on seeds whose outcome is known (``python -m diagnostics.report --early`` fits and
measures it; README "Early warning" gives the precision and recall on held-out seeds).

As a probe, :class:`EarlyWarning` asks for a flush once the window is over and decides in ``on_flush``, where
every rank sees the same numbers: the rows of the window, every probe's columns combined across ranks
(``session.flushed``). It decides with the early-failure predictor (:class:`probes.predictor.Predictor`, by
default the one fitted on the seed bank, ``probes/early_warning_model.json``) over the features of
:mod:`probes.early_signals`: the same numbers ``python -m diagnostics.report --early`` and ``diagnose`` compute
from the records. Without a predictor (``predictor=None``, or no model file) it falls back to the collapse score
alone. It warns, writes the decision as series ``scalars/early_warning`` and, with ``stop=True``, asks the run to
stop (``session.stop_requested``, honoured by the Hugging Face Trainer through :class:`probes.ProbeCallback`).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from probes import catalogue
from probes.base import Declared, Probe
from probes.early_signals import SOURCES, signals_from, window_features
from probes.predictor import DEFAULT, Predictor, default_predictor

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


class EarlyWarning(Probe):
    """Decide at step ``window_end`` whether the run is going to fail; warn, record, maybe stop.

    ``predictor``: a fitted :class:`Predictor`, ``"default"`` (the seed bank's, at ``window_end / total_steps``)
    or None (the collapse score against ``threshold``). It reads the rows the other probes write, the series the
    signal catalogue names (:data:`probes.early_signals.CATALOGUE`).
    """

    def __init__(self, window_end: int, threshold: float = DEFAULT_THRESHOLD, stop: bool = False,
                 predictor: Predictor | str | None = DEFAULT, total_steps: int | None = None) -> None:
        if window_end < 4:
            raise ValueError(f"EarlyWarning(window_end={window_end}): the window needs at least 4 steps")
        self.window_end, self.threshold, self.stop, self.total_steps = window_end, threshold, stop, total_steps
        fraction = (window_end + 1) / total_steps if total_steps else 0.15
        self.predictor = default_predictor(fraction) if predictor == DEFAULT else predictor
        self.decision: tuple[int, float, float, bool] | None = None
        self.features: dict[str, float] = {}
        self._written = False

    def bind(self, session) -> None:
        self._steps: list[int] = []
        self._rows: list[np.ndarray] = []

    def series(self) -> list[Declared]:
        rule = ("flagged when the predictor's P(fail) >= 0.5 (probes/predictor.py)" if self.predictor else
                "flagged when collapse_score < threshold (probes/early_warning.py)")
        attrs = {"rule": rule, "window_end": self.window_end}
        if self.total_steps:
            attrs["total_steps"] = self.total_steps
        return [Declared(catalogue.EARLY_WARNING, COLUMNS, attrs=attrs)]

    def after_step(self, session, row: torch.Tensor) -> None:
        if self.decision is None and session.step >= self.window_end:
            session.flush_requested = True

    def on_flush(self, session, steps: list[int], block: np.ndarray) -> None:
        if self.decision is not None:
            return
        all_steps, host = session.flushed
        inside = [i for i, step in enumerate(all_steps) if step <= self.window_end]
        self._steps += [all_steps[i] for i in inside]
        self._rows.append(host[inside])
        if all_steps[-1] < self.window_end:
            return
        steps_seen, rows = np.array(self._steps), np.concatenate(self._rows)
        signals = {}
        for probe in session.probes:
            declared = probe.series()
            if any(one.spec in SOURCES for one in declared):
                for one, values in zip(declared, probe.rows(rows[:, probe.columns])):
                    signals.update(signals_from(one.spec, steps_seen, one.columns, values, one.attrs))
        self.features = window_features(signals, self.window_end)
        score = self.features["collapse"]
        probability = self.predictor.probability_of(self.features) if self.predictor else math.nan
        flagged = bool(probability >= 0.5) if self.predictor else bool(score < self.threshold)
        self.decision = (all_steps[-1], score, probability, flagged)
        self._rows.clear()
        if flagged:
            evidence = (f"P(fail) = {probability:.2f} from the early signals, " if self.predictor else "") + \
                       f"encoder gradient norms changed 10^{score:.1f}-fold over the window"
            warnings.warn(f"early warning at step {all_steps[-1]}: {evidence}, the pattern of failed runs; consider "
                          "bias-corrected Adam, a lower learning rate or re-initialising the top layers",
                          RuntimeWarning, stacklevel=2)
            session.stop_requested = session.stop_requested or self.stop

    def write(self, writer, steps: list[int], block: np.ndarray) -> None:
        if self.decision is not None and not self._written:
            step, score, probability, flagged = self.decision
            threshold = 0.5 if self.predictor else self.threshold
            writer.append(catalogue.EARLY_WARNING.name, step, [score, probability, float(flagged), threshold, self.window_end])
            self._written = True

"""Early warning: flag a run that is going to fail from its first steps, so a sweep can stop it and save compute.

The signal is the papers' mechanism. In a failing run the encoder's gradients vanish around the end of warm-up
(Mosbach et al. 2020, Fig. 4a) while the classifier's stay large; a run that goes on to learn sees them dip and
grow again. :func:`collapse_score` measures it as log10 of the encoder's gradient norm late in an early window over
its value at the start of the window: strongly negative means collapsed. A run is flagged when the score falls
below a threshold fitted on seeds whose outcome is known (``python -m diagnostics.report --early`` fits and
measures it; docs/verdicts.md gives what it knows on held-out seeds).

As a probe, :class:`EarlyWarning` asks for a flush once the window is over and decides in ``on_flush``, where every rank
sees the same numbers: the rows of the window, every probe's columns combined across ranks (``session.flushed``). It
decides with a predictor file (:mod:`probes.early_failure.predictor_file`; by default the one fitted on the seed bank,
``probes/early_failure/model.json``) over the features of :mod:`probes.early_failure.signals`: the same numbers
``python -m diagnostics.report --early`` and ``diagnose`` compute from the records, and the same verdict
(:func:`probes.early_failure.verdict.judge`): the configuration's prior from the bank, then this run's P(fail). A run
outside the file's domain (another architecture, size, number of classes, run length or optimiser) gets no P(fail) but a
line saying why and how to calibrate, and is judged, like a run without a predictor (``predictor=None``), by the
collapse score alone. A flagged run is reported through :mod:`logging` (logger ``probes.early_failure.warning``: one
line, no source echo, so a progress bar can print it), the decision is written as series ``scalars/early_warning`` and,
with ``stop=True``, the run is asked to stop (``session.stop_requested``, honoured by the Hugging Face Trainer through
:class:`probes.ProbeCallback`).
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch

from probes import catalogue
from probes.early_failure import signals as early_signals
from probes.base import Declared, Probe
from probes.early_failure.signals import SOURCES, signals_from
from probes.early_failure.domain import live_profile
from probes.early_failure.verdict import EarlyVerdict, judge
from probes.optimizer_audit import bias_correction
from probes.early_failure.predictor import DEFAULT, FLAG_AT, Predictor
from probes.early_failure.predictor_file import MODEL_FILE, PredictorFile

DEFAULT_THRESHOLD = -1.0
COLUMNS = catalogue.EARLY_WARNING.columns
LOG = logging.getLogger(__name__)


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

    ``predictor``: ``"default"`` (the shipped predictor file), the path of a predictor file (``seed_bank --fit
    --predictor-out``), a loaded :class:`PredictorFile`, a bare fitted :class:`Predictor` (applied at
    ``window_end`` without a domain check or prior) or None (the collapse score against ``threshold``). It reads
    the rows the other probes write, the series the signal catalogue names
    (:data:`probes.early_failure.signals.CATALOGUE`); ``total_steps`` (the run's planned steps) lets it check the
    run's length against the bank's and pick the model of the share of steps seen.
    """

    def __init__(self, window_end: int, threshold: float = DEFAULT_THRESHOLD, stop: bool = False,
                 predictor: Predictor | PredictorFile | str | os.PathLike | None = DEFAULT,
                 total_steps: int | None = None) -> None:
        if window_end < 4:
            raise ValueError(f"EarlyWarning(window_end={window_end}): the window needs at least 4 steps")
        self.window_end, self.threshold, self.stop, self.total_steps = window_end, threshold, stop, total_steps
        if predictor == DEFAULT:
            predictor = MODEL_FILE if MODEL_FILE.is_file() else None
        if isinstance(predictor, (str, os.PathLike)):
            predictor = PredictorFile.load(predictor)
        self.predictor = predictor
        self.decision: tuple[int, float, float, bool] | None = None
        self.verdict: EarlyVerdict | None = None
        self.features: dict[str, float] = {}
        self._written = False

    def bind(self, session) -> None:
        self._steps: list[int] = []
        self._rows: list[np.ndarray] = []
        self._correct_bias = bias_correction(session.optimizer)

    def series(self) -> list[Declared]:
        rule = (f"flagged when the predictor's P(fail) >= {FLAG_AT} (probes/early_failure/predictor.py), else when "
                "collapse_score < threshold" if self.predictor else
                "flagged when collapse_score < threshold (probes/early_failure/warning.py)")
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
        self._rows.clear()
        self.features = early_signals.window_features(signals, self.window_end)
        score = self.features["collapse"]
        probability = self._probability(session.model, signals)
        flagged = bool(probability >= FLAG_AT) if math.isfinite(probability) else bool(score < self.threshold)
        self.decision = (all_steps[-1], score, probability, flagged)
        if flagged:
            LOG.warning(self._message(all_steps[-1], score, probability))
            session.stop_requested = session.stop_requested or self.stop
        elif self.verdict is not None and not self.verdict.calibrated:
            LOG.info(f"early warning at step {all_steps[-1]}: no P(fail); {self.verdict.note}")

    def _probability(self, model, signals: dict) -> float:
        """P(fail) from the predictor (NaN without one, or for a run outside its domain); keeps the verdict."""
        if isinstance(self.predictor, Predictor):
            return self.predictor.probability_of(self.features)
        if self.predictor is None:
            return math.nan
        lr = signals.get("lr", (None, np.array([])))[1]
        peak = float(np.nanmax(lr)) if np.isfinite(lr).any() else None
        profile = live_profile(model, self._correct_bias, self.total_steps, peak)
        total = self.total_steps

        def features(fraction: float) -> dict[str, float]:
            self.features = early_signals.window_features(signals, early_signals.window_end(total, fraction))
            return self.features

        self.verdict = judge(self.predictor, profile, self.window_end, features)
        return math.nan if self.verdict.probability is None else self.verdict.probability

    def _message(self, step: int, score: float, probability: float) -> str:
        """One line: the prior and this run's evidence, then advice the run does not already follow."""
        said = self.verdict.lines() if self.verdict is not None else []
        if not said and math.isfinite(probability):
            said = [f"P(fail) = {probability:.2f} from the early signals"]
        said.append(f"encoder gradient norms changed 10^{score:.1f}-fold over the window")
        advice = ["bias-corrected Adam"] if self._correct_bias is not True else []
        advice += ["a lower learning rate", "re-initialising the top layers"]
        return (f"early warning at step {step}: {'; '.join(said)}, the pattern of failed runs; consider "
                f"{', '.join(advice[:-1])} or {advice[-1]}")

    def write(self, writer, steps: list[int], block: np.ndarray) -> None:
        if self.decision is not None and not self._written:
            step, score, probability, flagged = self.decision
            threshold = FLAG_AT if math.isfinite(probability) else self.threshold
            writer.append(catalogue.EARLY_WARNING.name, step,
                          [score, probability, float(flagged), threshold, self.window_end])
            self._written = True

"""Prior and evidence, apart: what the bank says of a run's configuration, and what the run's own signals change.

A P(fail) alone mostly restates the learning rate. :func:`judge` returns both parts of the early verdict, so the
early warning and ``diagnose`` word them the same way: the configuration's prior (the share of the bank's seeds of
that bias correction and learning rate that failed, :class:`probes.predictor_file.PriorCell`), the predictor's
P(fail) from this run's signals with the update's measured within-cell AUC next to it, or, for a run outside the
bank's domain, no number and one line saying why and how to calibrate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from probes.domain import Profile
from probes.predictor_file import PredictorFile, PriorCell, UpdateAuc


@dataclass(frozen=True)
class EarlyVerdict:
    """``calibrated``: the run lies inside the predictor's domain; ``note``: why not, and how to calibrate;
    ``probability``: P(fail) from the model of ``fraction`` (None before the first fraction or uncalibrated)."""

    calibrated: bool
    note: str | None = None
    prior: PriorCell | None = None
    probability: float | None = None
    fraction: float | None = None
    update: UpdateAuc | None = None

    def lines(self) -> list[str]:
        """The verdict in words: the prior, then the evidence's update (or why there is none)."""
        found = []
        if self.prior is not None:
            found.append(f"prior: {self.prior.words()}")
        if not self.calibrated:
            found.append(f"not calibrated: {self.note}")
        elif self.probability is not None:
            measured = f" ({self.update.words()})" if self.update is not None else ""
            found.append(f"this run's signals: P(fail) = {self.probability:.2f} at {100 * self.fraction:.0f}% of "
                         f"the steps{measured}")
        return found

    def as_json(self) -> dict:
        """The JSON fields: ``calibrated``, ``calibration`` (the note), ``prior``, ``update_auc``."""
        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        prior = None if self.prior is None else {
            "correct_bias": self.prior.correct_bias, "lr": self.prior.lr, "runs": self.prior.runs,
            "failed": self.prior.failed, "failure_rate": self.prior.rate, "text": self.prior.words()}
        update = None if self.update is None or self.probability is None else {
            "method": self.update.method, "fraction": self.update.fraction, "auc": finite(self.update.auc),
            "low": finite(self.update.low), "high": finite(self.update.high)}
        return {"calibrated": self.calibrated, "calibration": self.note, "prior": prior, "update_auc": update}


def judge(predictors: PredictorFile, profile: Profile, last_step: int | None,
          features: Callable[[float], dict[str, float]]) -> EarlyVerdict:
    """The verdict on a run with ``profile`` whose records reach ``last_step`` (0-based); ``features(fraction)``
    gives its early features over that fraction of its steps."""
    note = predictors.note(profile)
    if note is not None:
        return EarlyVerdict(False, note)
    prior = predictors.prior_of(profile)
    fraction = predictors.fraction_for(profile.steps, last_step) if last_step is not None else None
    if fraction is None:
        return EarlyVerdict(True, None, prior)
    probability = predictors.models[fraction].probability_of(features(fraction))
    return EarlyVerdict(True, None, prior, probability, fraction, predictors.update.get(fraction))

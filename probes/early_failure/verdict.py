"""Prior and evidence, apart: what the bank says of a run's configuration, and what the run's own signals change.

A P(fail) alone mostly restates the learning rate. :func:`judge` returns both parts of the early verdict, so the
early warning and ``diagnose`` word them the same way: the configuration's prior (the share of the bank's seeds of
that bias correction and learning rate that failed, :class:`~probes.early_failure.predictor_file.PriorCell`), the
predictor's P(fail) from this run's signals with the update's measured within-cell AUC next to it, or, for a run
outside the bank's domain, no number and one line saying why and how to calibrate. Where the run has dev
evaluations (``diagnose``), :func:`dev_so_far` adds Dodge et al.'s reading: the dev metric so far against the
majority baseline, what became of the bank's seeds that stood there, and that rule's measured AUC.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from probes.early_failure.domain import Profile
from probes.early_failure.predictor_file import DevCell, PredictorFile, PriorCell, UpdateAuc

AT_BASELINE = 1e-9  # a dev metric this close to the majority baseline is at it (the runner's failed flag too)


def at_baseline(value: float, majority: float) -> bool:
    """Whether a dev metric is at (or below) the majority baseline: Dodge et al.'s reading of a run."""
    return value <= majority + AT_BASELINE


@dataclass(frozen=True)
class DevSoFar:
    """The run's last dev evaluation in what was seen, against the majority baseline (Dodge et al.'s rule), and
    where the bank has one, its seeds of the same configuration that stood there at ``fraction`` and the rule's
    measured within-cell AUC at that fraction."""

    metric: str
    value: float
    step: int  # optimiser updates before the evaluation
    majority: float | None
    fraction: float | None = None
    cell: DevCell | None = None
    auc: UpdateAuc | None = None

    @property
    def at_baseline(self) -> bool | None:
        return None if self.majority is None else at_baseline(self.value, self.majority)

    def words(self) -> str:
        """"mcc 0.000 after 40 steps, at the majority baseline (0.000); of the bank's ...; Dodge's rule ..."."""
        where = ("" if self.majority is None else
                 f", {'at' if self.at_baseline else 'above'} the majority baseline ({self.majority:.3f})")
        found = f"{self.metric} {self.value:.3f} after {self.step} steps{where}"
        if self.cell is not None:
            found += f"; {self.cell.words()}"
        if self.auc is not None and math.isfinite(self.auc.auc):
            found += (f"; within-cell AUC of Dodge's rule at {100 * self.auc.fraction:.0f}%: {self.auc.auc:.2f} "
                      f"[{self.auc.low:.2f}, {self.auc.high:.2f}]")
        return found

    def as_json(self) -> dict:
        cell = None if self.cell is None else {"runs": self.cell.runs, "failed": self.cell.failed,
                                               "failure_rate": self.cell.failed / self.cell.runs}
        auc = None if self.auc is None or not math.isfinite(self.auc.auc) else {
            "fraction": self.auc.fraction, "auc": self.auc.auc, "low": self.auc.low, "high": self.auc.high}
        return {"metric": self.metric, "value": self.value, "step": self.step, "majority": self.majority,
                "at_baseline": self.at_baseline, "fraction": self.fraction, "bank": cell, "dodge_auc": auc,
                "text": self.words()}


def dev_so_far(predictors: PredictorFile, profile: Profile, evaluation: tuple[str, float, int] | None,
               majority: float | None) -> DevSoFar | None:
    """Dodge's reading of a run: its last dev evaluation (metric, value, updates before it) against the majority
    baseline and, for a run inside the bank's domain, the bank's seeds of its configuration that stood there at
    the largest fraction the evaluation reached (no bank numbers outside the domain)."""
    if evaluation is None:
        return None
    metric, value, step = evaluation
    found = DevSoFar(metric, value, step, majority)
    if majority is None or profile.steps is None or predictors.note(profile) is not None:
        return found
    # the fractions whose evaluation the bank read at or before this one (probes.early_failure.benchmark.dev_metric_at)
    reached = [cell.fraction for cell in predictors.dev if cell.fraction * profile.steps - 1e-9 <= step]
    if not reached:
        return found
    fraction = max(reached)
    return replace(found, fraction=fraction, cell=predictors.dev_cell(profile, fraction, bool(found.at_baseline)),
                   auc=predictors.dodge.get(fraction))


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
    dev: DevSoFar | None = None

    def lines(self) -> list[str]:
        """The verdict in words: the prior, then the evidence's update (or why there is none)."""
        found = []
        if self.prior is not None:
            found.append(f"prior: {self.prior.words()}")
        if self.dev is not None:
            found.append(f"dev metric so far: {self.dev.words()}")
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
        return {"calibrated": self.calibrated, "calibration": self.note, "prior": prior, "update_auc": update,
                "dev_so_far": None if self.dev is None else self.dev.as_json()}


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

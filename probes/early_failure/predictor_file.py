"""A predictor file: what ``python -m diagnostics.seed_bank --fit`` writes and the early warning and ``diagnose`` read.

Besides one :class:`~probes.early_failure.predictor.Predictor` per fraction of the steps seen, it holds what a
practitioner needs to read a P(fail): the bank's domain (:class:`~probes.early_failure.domain.Domain`: outside it
there is no number), the configuration's prior (each cell of bias correction and learning rate, with how many of the
bank's seeds failed), Dodge et al.'s rule as the bank saw it (of the seeds at the majority baseline at each fraction,
how many failed), and what each early reading is worth: the within-cell ROC AUC with its 95% interval of the update
and of Dodge's rule at each fraction (:mod:`probes.early_failure.protocol`; NaN where the bank has no uncertain
cell). The shipped file is ``probes/early_failure/model.json``, fitted on the committed seed bank.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from probes.early_failure.domain import Domain, Profile
from probes.early_failure.signals import window_end
from probes.early_failure.predictor import Predictor
from probes.records import RecordsError

MODEL_FILE = Path(__file__).with_name("model.json")


@dataclass(frozen=True)
class PriorCell:
    """One configuration of the bank (bias correction, learning rate), pooled over its tasks, and its outcomes."""

    correct_bias: bool
    lr: float
    runs: int
    failed: int
    recipes: tuple[str, ...] = ()

    @property
    def rate(self) -> float:
        return self.failed / self.runs

    def words(self) -> str:
        """"Adam without bias correction (BERTAdam) at lr 0.0002 on this model: 80% of the bank's 40 seeds failed"."""
        adam = "bias-corrected Adam" if self.correct_bias else "Adam without bias correction (BERTAdam)"
        return (f"{adam} at lr {self.lr:g} on this model: {100 * self.rate:.0f}% of the bank's {self.runs} seeds "
                "failed")


@dataclass(frozen=True)
class UpdateAuc:
    """The predictor's within-cell ROC AUC on held-out seeds at one fraction, with its bootstrap 95% interval."""

    method: str
    fraction: float
    auc: float
    low: float
    high: float

    def words(self) -> str:
        """"within-cell AUC of this update at 20%: 0.55 [0.38, 0.71]", or that it is unmeasured."""
        measured = (f"{self.auc:.2f} [{self.low:.2f}, {self.high:.2f}]" if math.isfinite(self.auc) else
                    "unmeasured, the bank has no uncertain cell")
        return f"within-cell AUC of this update at {100 * self.fraction:.0f}%: {measured}"


@dataclass(frozen=True)
class DevCell:
    """Dodge et al.'s rule made a number: the bank's seeds of one configuration (bias correction, learning rate)
    whose dev metric at ``fraction`` of the steps was at the majority baseline (``at_baseline``) or above it, and how
    many of them failed in the end."""

    correct_bias: bool
    lr: float
    fraction: float
    at_baseline: bool
    runs: int
    failed: int

    def words(self) -> str:
        """"of the bank's 30 seeds of this configuration at the baseline at 20%, 24 failed (80%)"."""
        where = "at the baseline" if self.at_baseline else "above it"
        return (f"of the bank's {self.runs} seeds of this configuration {where} at {100 * self.fraction:.0f}%, "
                f"{self.failed} failed ({100 * self.failed / self.runs:.0f}%)")


@dataclass(frozen=True)
class PredictorFile:
    """The models by fraction, the domain, the prior cells, the update's measured AUC by fraction, and Dodge's
    rule: the bank's outcomes by dev metric so far (``dev``) and the rule's measured AUC by fraction (``dodge``)."""

    models: dict[float, Predictor]
    domain: Domain | None = None
    priors: tuple[PriorCell, ...] = ()
    update: dict[float, UpdateAuc] = field(default_factory=dict)
    fitted_on: dict = field(default_factory=dict)
    dev: tuple[DevCell, ...] = ()
    dodge: dict[float, UpdateAuc] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path = MODEL_FILE) -> "PredictorFile":
        """Read a predictor file; a missing or malformed one is a :class:`RecordsError` naming the fix."""
        path = Path(path)
        if not path.is_file():
            raise RecordsError(f"predictor file {path} not found; write one with python -m diagnostics.seed_bank "
                               "--fit CSV --predictor-out PATH")
        try:
            values = json.loads(path.read_text())
            models = {float(key): Predictor.from_json(json.dumps(model)) for key, model in values["models"].items()}
            domain = Domain.from_json(values["domain"]) if values.get("domain") else None
            priors = tuple(PriorCell(**{**cell, "recipes": tuple(cell.get("recipes", ()))})
                           for cell in values.get("priors", ()))
            update, dodge = (_aucs(values.get(key, {})) for key in ("update", "dodge"))
            dev = tuple(DevCell(**cell) for cell in values.get("dev", ()))
        except (ValueError, KeyError, TypeError) as error:
            raise RecordsError(f"{path} is not a predictor file ({error}); write one with python -m "
                               "diagnostics.seed_bank --fit CSV --predictor-out PATH") from None
        return cls(models, domain, priors, update, values.get("fitted_on", {}), dev, dodge)

    def to_json(self) -> str:
        """The file's text (NaN written as null)."""
        def plain(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return json.dumps(plain({
            "fitted_on": self.fitted_on,
            "domain": asdict(self.domain) if self.domain else None,
            "priors": [asdict(cell) for cell in self.priors],
            "update": {f"{k:g}": asdict(v) for k, v in sorted(self.update.items())},
            "dev": [asdict(cell) for cell in self.dev],
            "dodge": {f"{k:g}": asdict(v) for k, v in sorted(self.dodge.items())},
            "models": {f"{k:g}": asdict(v) for k, v in sorted(self.models.items())}}), indent=1) + "\n"

    def fraction_for(self, total: int, last_step: int) -> float | None:
        """The largest fitted fraction whose window (:func:`probes.early_failure.signals.window_end`) ends at or before
        ``last_step`` of a ``total``-step run: every share seen past the first fraction gets a model."""
        usable = [f for f in self.models if window_end(total, f) <= last_step]
        return max(usable) if usable else None

    def prior_of(self, profile: Profile) -> PriorCell | None:
        """The bank's cell of the run's bias correction and learning rate (None when the bank has no such cell)."""
        if profile.correct_bias is None or profile.lr is None:
            return None
        return next((cell for cell in self.priors if cell.correct_bias == profile.correct_bias
                     and math.isclose(cell.lr, profile.lr, rel_tol=1e-6)), None)

    def dev_cell(self, profile: Profile, fraction: float, at_baseline: bool) -> DevCell | None:
        """The bank's seeds of the run's configuration that stood where the run stands at ``fraction``."""
        return next((cell for cell in self.dev if cell.correct_bias == profile.correct_bias
                     and profile.lr is not None and math.isclose(cell.lr, profile.lr, rel_tol=1e-6)
                     and math.isclose(cell.fraction, fraction) and cell.at_baseline == at_baseline), None)

    def note(self, profile: Profile) -> str | None:
        """Why this file's predictor may not judge the run (None when it may)."""
        if self.domain is None:
            return ("the predictor file does not say which runs it was fitted on; refit it with python -m "
                    "diagnostics.seed_bank --fit CSV --predictor-out PATH")
        return self.domain.note(profile)


def _aucs(values: dict) -> dict[float, UpdateAuc]:
    """AUCs by fraction as the file holds them (null for NaN)."""
    return {float(key): UpdateAuc(**{k: math.nan if v is None else v for k, v in auc.items()})
            for key, auc in values.items()}

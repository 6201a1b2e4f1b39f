"""Stop the doomed seeds of a sweep early (Dodge et al. 2020: start many, stop the worst early), on any engine.

    --stop-early dodge                        # at the dev evaluation at 25% of the steps, keep the best 50% so far
    --stop-early dodge:at=0.3,keep=0.25       # ... at 30% of the steps, keep the best 25%
    --stop-early predictor                    # stop when the early warning's P(fail) >= 0.5 (at 15% of the steps)
    --stop-early predictor:threshold=0.7

The decision is taken inside the run, so it works the same whatever runs it. ``dodge`` compares the run's dev
metric at step ``ceil(at x steps)`` (an evaluation is added there) with those of the runs of the same task and
recipe under the same ``--out`` that got there before it: each writes its metric to ``OUT/stop-early/<run>.json``
(written whole, then renamed), so the runs share nothing but the output folder every engine needs anyway. It keeps
the run when it is among the best ``keep`` share of those so far, ranked by dev metric and then, among equal metrics
(early on, many runs still predict the majority class), by lower dev loss: the first run always goes on.
``predictor`` reads the calibrated P(fail) of the early warning probe (:func:`failure_probability`). A stopped run
is recorded as stopped, not failed: its summary has ``stopped_at`` and ``stop_rule`` and no ``failed`` flag.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

RULES = ("dodge", "predictor")
LEDGER = "stop-early"


class StopRuleError(ValueError):
    """A ``--stop-early`` value that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class StopRule:
    """``dodge``: keep the best ``keep`` share of the runs so far at ``at`` of the steps; ``predictor``: stop when
    P(fail) >= ``threshold``."""

    name: str
    at: float = 0.25
    keep: float = 0.5
    threshold: float = 0.5

    @classmethod
    def parse(cls, text: str) -> "StopRule":
        """``dodge``, ``predictor`` or either with ``:key=value,...`` (``at``, ``keep`` / ``threshold``)."""
        name, _, options = text.partition(":")
        allowed = {"dodge": ("at", "keep"), "predictor": ("threshold",)}.get(name)
        if allowed is None:
            raise StopRuleError(f"--stop-early {text!r}: the rule is dodge or predictor, e.g. --stop-early dodge")
        values = {}
        for option in filter(None, options.split(",")):
            key, _, value = option.partition("=")
            try:
                values[key] = float(value)
            except ValueError:
                values[key] = math.nan
            if key not in allowed or not 0 < values[key] <= 1:
                raise StopRuleError(f"--stop-early {text!r}: {name} takes {' and '.join(allowed)}, each a number "
                                    f"in (0, 1], e.g. --stop-early {name}:{allowed[0]}=0.3")
        return cls(name, **values)

    def __str__(self) -> str:
        options = f"at={self.at:g},keep={self.keep:g}" if self.name == "dodge" else f"threshold={self.threshold:g}"
        return f"{self.name}:{options}"

    def decision_step(self, total: int) -> int | None:
        """The step of dodge's decision (an evaluation is scheduled there); None for the predictor."""
        return max(1, math.ceil(self.at * total)) if self.name == "dodge" else None


class Stopper:
    """The rule applied to one run: asked after every optimiser step, it answers why to stop, or None."""

    def __init__(self, rule: StopRule, run_dir: Path, total: int) -> None:
        self.rule, self.run_dir, self.total = rule, Path(run_dir), total
        self.decided = False

    def after_step(self, step: int, session, evaluation: tuple[float, float] | None) -> str | None:
        """Decide once: dodge at its decision step (``evaluation``: that step's dev metric and dev loss), the
        predictor as soon as the early warning has a probability."""
        if self.decided:
            return None
        if self.rule.name == "dodge":
            if step != self.rule.decision_step(self.total):
                return None
            self.decided = True
            return self._dodge(step, *evaluation)
        probability = failure_probability(session)
        if probability is None:
            return None
        self.decided = True
        if probability >= self.rule.threshold:
            return f"P(fail) {probability:.2f} >= {self.rule.threshold:g} at step {step}"
        return None

    def _dodge(self, step: int, dev_metric: float, dev_loss: float) -> str | None:
        """Write this run's metric to the ledger, then stop it unless it is among the best ``keep`` so far."""
        ledger = self.run_dir.parent / LEDGER
        ledger.mkdir(exist_ok=True)
        name = self.run_dir.name
        partial = ledger / f".{name}.json.partial"
        partial.write_text(json.dumps({"step": step, "dev_metric": dev_metric, "dev_loss": dev_loss}))
        os.replace(partial, ledger / f"{name}.json")
        group = name.rsplit("-s", 1)[0]
        so_far = [_rank(json.loads(path.read_text())) for path in ledger.glob(f"{group}-s*.json")]
        bar = sorted(so_far, reverse=True)[math.ceil(self.rule.keep * len(so_far)) - 1]
        if _rank({"dev_metric": dev_metric, "dev_loss": dev_loss}) >= bar:
            return None
        return (f"dev metric {dev_metric:.3f} (loss {dev_loss:.3f}) at step {step} below the best "
                f"{self.rule.keep:.0%} of {len(so_far)} runs so far ({bar[0]:.3f}, loss {-bar[1]:.3f})")


def _rank(entry: dict) -> tuple[float, float]:
    """A ledger entry's rank key: higher dev metric first, then lower dev loss."""
    return entry["dev_metric"], -entry["dev_loss"]


def failure_probability(session) -> float | None:
    """The run's calibrated P(fail) once the early warning probe has decided (None before, and for runs without
    the probe or without a fitted predictor): the one place the stopping rules read the predictor."""
    from probes.early_failure.warning import EarlyWarning

    for probe in session.probes:
        if isinstance(probe, EarlyWarning) and probe.decision is not None:
            probability = probe.decision[2]
            return None if math.isnan(probability) else float(probability)
    return None

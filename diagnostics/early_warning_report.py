"""How well the early-failure predictor foresees failed runs on seeds it never saw, as a Markdown table.

The numbers come from :mod:`probes.early_failure.benchmark` (features, grouped-by-seed fitting and scoring, compute
saved); this module words them. ``python -m diagnostics.report RUNS --early`` prints it for runs on disk, ``python -m
diagnostics.seed_bank --benchmark data/seed_bank/features.csv`` for the committed seed bank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.early_failure.benchmark import (FOLDS, FRACTIONS, MIN_SCORED, SCOPES, UNSCORED, HeldOut, score, table,
                                    univariate)
from probes.early_failure.protocol import Protocol
from probes.early_failure.predictor import FLAG_AT


@dataclass(frozen=True)
class EarlyWarningReport:
    results: list[HeldOut]
    univariate: dict[str, float]  # each feature's own AUC at the reference fraction, default-recipe runs
    reference: float

    def markdown(self) -> str:
        lines = ["Early-failure predictor (logistic, on the early features), fitted and scored by seed: each run is "
                 f"scored by a model fitted on other seeds' runs only ({FOLDS} groups of seeds); flagged at "
                 f"P(fail) >= {FLAG_AT}.", "",
                 "| scope | seen | runs | failed | precision | recall | ROC AUC | steps saved | good runs lost |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            scored = (f"{_f(r.precision)} | {_f(r.recall)} | {_f(r.auc)} | {_percent(r.saved)} | "
                      f"{r.false_positives}") if r.scorable else f"{UNSCORED} | | | |"
            lines.append(f"| {r.scope} | {100 * r.fraction:.0f}% | {r.runs} | {r.failed} | {scored} |")
        ranked = sorted(self.univariate.items(), key=lambda item: -np.nan_to_num(item[1]))
        lines += ["", "`default`: runs without bias correction (failed vs surviving seeds of the same recipe); `all`: "
                      "every recipe. Steps saved: the share of the scope's training steps a sweep skips by stopping "
                      "the flagged runs there; good runs lost: flagged runs that would have succeeded. A scope with fewer "
                      f"than {MIN_SCORED} runs, or runs of one outcome only, is {UNSCORED}.", "",
                  f"Each feature alone at {100 * self.reference:.0f}% (ROC AUC over the default-recipe runs, "
                  "in-sample, better direction, 0.5 = no information): "
                  + ", ".join(f"{name} {_f(auc)}" for name, auc in ranked) + "."]
        return "\n".join(lines) + "\n"


def protocol_markdown(protocol: Protocol) -> str:
    """The protocol's table (:mod:`probes.early_failure.protocol`): within-cell scores first, the rows where we lose
    included, then the pooled and held-out-group scores and each feature's within-cell AUC."""
    cells = ", ".join(f"{task} {recipe} lr {lr} ({steps} steps)" for task, recipe, lr, _, steps in protocol.cells)
    lines = [f"Seed bank: {protocol.runs} runs; uncertain cells (failure rate 15-85%, >= 10 runs): "
             f"{cells or 'none'} ({protocol.uncertain_runs} runs, {protocol.uncertain_failed} failed).", "",
             "| seen | method | runs | pairs | within-cell AUC [95% CI] | p | pooled AUC | precision | recall | "
             "task held out | lr held out |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in protocol.results:
        lines.append(f"| {100 * r.fraction:.0f}% | {r.method} | {r.runs} | {r.pairs} | "
                     f"{_f(r.within)} [{_f(r.low)}, {_f(r.high)}] | "
                     f"{_f(r.p, 3)} | {_f(r.pooled)} | {_f(r.precision)} | {_f(r.recall)} | {_f(r.task_out)} | "
                     f"{_f(r.lr_out)} |")
    lines += ["", "Runs: the runs a method could score (Dodge's rule needs a dev evaluation at that point). Pairs: "
                  "the comparisons behind the within-cell AUC. "
                  "Within-cell AUC: a failed run against a surviving run of the same configuration (only the seed "
                  "differs), pooled over the uncertain cells; interval: bootstrap of runs within cells; p: outcomes "
                  "shuffled within cells (one-sided). Pooled AUC, precision and recall: every run of the bank (flagged "
                  f"at P(fail) >= {FLAG_AT}; Dodge: dev metric at or below the majority baseline). Task/lr held out: "
                  "pooled AUC of models fitted without that task (learning rate). Fitted methods are scored on seeds "
                  "they never saw.", ""]
    duels = [d for d in protocol.against_dodge if d.pairs]
    if duels:
        lines += ["Against Dodge's rule on the same runs (the uncertain runs with a dev evaluation at that point; "
                  "difference of within-cell AUCs with its paired bootstrap 95% interval):", "",
                  "| seen | method | runs | pairs | method AUC | Dodge AUC | difference [95% CI] |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {100 * d.fraction:.0f}% | {d.method} | {d.runs} | {d.pairs} | {_f(d.auc)} | {_f(d.dodge)} | "
                  f"{d.difference:+.2f} [{d.low:+.2f}, {d.high:+.2f}] |" for d in duels]
        lines.append("")
    for fraction, found in protocol.features.items():
        ranked = sorted(found.items(), key=lambda item: -abs(np.nan_to_num(item[1][0], nan=0.5) - 0.5))
        lines.append(f"Each feature's within-cell AUC at {100 * fraction:.0f}% (> 0.5: higher in failed runs): "
                     + ", ".join(f"{name} {_f(auc)} [{_f(low)}, {_f(high)}]" for name, (auc, low, high) in ranked)
                     + ".")
    return "\n".join(lines) + "\n"


def from_rows(rows: list[dict], fractions: tuple[float, ...] = FRACTIONS) -> EarlyWarningReport:
    """The report of feature rows (from records or from the committed table)."""
    reference = 0.2 if 0.2 in fractions else fractions[-1]
    results = [score(rows, scope, fraction) for scope in SCOPES for fraction in fractions]
    return EarlyWarningReport(results, univariate(rows, reference), reference)


def evaluate(paths: list[Path], fractions: tuple[float, ...] = FRACTIONS) -> EarlyWarningReport:
    """The report over the finished runs among ``paths``."""
    return from_rows(table(paths, fractions), fractions)


def _f(value: float, digits: int = 2) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _percent(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.0f}%"

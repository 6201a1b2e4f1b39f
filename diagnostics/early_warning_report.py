"""How well the early warning predicts failed runs, measured honestly: threshold fitted on some seeds, scored on others.

Each finished run's ``gradient_norms/layers`` record gives its collapse score over the first ``fraction`` of its
steps (the rule of :mod:`probes.early_warning`, the same the probe applies online). The threshold is fitted on the
runs of even seeds and tested on the odd ones, then the other way round; precision and recall add up the two
held-out halves. ``python -m diagnostics.report RUNS --early`` prints it; the study puts it in ``report.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.records import RecordsError, open_run
from probes.early_warning import DEFAULT_THRESHOLD, collapse_score, encoder_norm

FRACTION = 0.15


@dataclass(frozen=True)
class RunScore:
    name: str
    seed: int
    score: float
    failed: bool
    window_end: int


@dataclass(frozen=True)
class EarlyWarningReport:
    runs: list[RunScore]
    threshold: float
    true_positives: int
    false_positives: int
    false_negatives: int
    tested: int
    fraction: float

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else math.nan

    @property
    def recall(self) -> float:
        failed = self.true_positives + self.false_negatives
        return self.true_positives / failed if failed else math.nan

    def markdown(self) -> str:
        lines = [f"Collapse score over the first {100 * self.fraction:.0f}% of each run's steps (log10 of the "
                 "encoder's gradient norm late in that window over its start); flagged below the threshold.", "",
                 "| run | score | flagged | failed |", "|---|---|---|---|"]
        for run in self.runs:
            lines.append(f"| {run.name} | {run.score:.2f} | {'yes' if run.score < self.threshold else 'no'} | "
                         f"{'yes' if run.failed else 'no'} |")
        lines += ["", f"Threshold fitted on all runs: {self.threshold:.2f}. On held-out seeds (fitted on even "
                      f"seeds, tested on odd ones and back; {self.tested} runs): precision {_fraction(self.precision)}, "
                      f"recall {_fraction(self.recall)}."]
        return "\n".join(lines) + "\n"


def score_run(path: Path, fraction: float = FRACTION) -> RunScore | None:
    """The run's collapse score, or None for a run without gradient norms or without an outcome."""
    run = open_run(path)
    if "gradient_norms" not in run.records or "layers" not in run.records["gradient_norms"]:
        return None
    if "failed" not in run.summary or "steps" not in run.summary:
        return None
    layers = run.series("layers", kind="gradient_norms")
    window_end = max(4, round(fraction * int(run.summary["steps"])))
    score = collapse_score(layers.steps, encoder_norm(layers.columns, layers.values), window_end)
    name = Path(path).parent.name if Path(path).name == "run.h5" else Path(path).stem
    return RunScore(name, int(run.meta.get("seed", -1)), score, bool(run.summary["failed"]), window_end)


def fit_threshold(scores: np.ndarray, failed: np.ndarray) -> float:
    """The cut (midway between two sorted scores) that best separates failed from successful runs, by balanced
    accuracy; the default when either class is missing."""
    if failed.all() or not failed.any():
        return DEFAULT_THRESHOLD
    ordered = np.sort(scores)
    cuts = np.r_[ordered[0] - 1.0, (ordered[1:] + ordered[:-1]) / 2, ordered[-1] + 1.0]
    def balanced(cut: float) -> float:
        flagged = scores < cut
        return (flagged[failed].mean() + (~flagged[~failed]).mean()) / 2
    return float(max(cuts, key=balanced))


def evaluate(paths: list[Path], fraction: float = FRACTION) -> EarlyWarningReport:
    """Scores of every run with gradient norms and an outcome, the threshold and its held-out precision/recall."""
    runs = []
    for path in paths:
        try:
            scored = score_run(path, fraction)
        except RecordsError:
            continue
        if scored is not None and math.isfinite(scored.score):
            runs.append(scored)
    scores = np.array([r.score for r in runs])
    failed = np.array([r.failed for r in runs], dtype=bool)
    parity = np.array([r.seed % 2 for r in runs])
    tp = fp = fn = tested = 0
    for held_out in (0, 1):
        train, test = parity != held_out, parity == held_out
        if not train.any() or not test.any():
            continue
        flagged = scores[test] < fit_threshold(scores[train], failed[train])
        tp += int((flagged & failed[test]).sum())
        fp += int((flagged & ~failed[test]).sum())
        fn += int((~flagged & failed[test]).sum())
        tested += int(test.sum())
    threshold = fit_threshold(scores, failed) if runs else DEFAULT_THRESHOLD
    return EarlyWarningReport(runs, threshold, tp, fp, fn, tested, fraction)


def _fraction(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"

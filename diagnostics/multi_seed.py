"""The multi-seed report as data: the outcome of every finished run, the table per task and recipe, its Markdown.

``python -m diagnostics.report`` prints it, the study writes it as ``report.md``, and ``diagnostics.html_report``
lays the same report out as one page; all three read it from here, so the numbers agree. A run failed when its
final dev metric is at or below the majority-class baseline (Dodge et al. 2020).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from diagnostics import early_warning_report, instability
from diagnostics.seed_statistics import GroupRow, Outcome
from probes.records import RunRecords, iter_runs, open_run


@dataclass
class Report:
    """The seeds table (one row per task and recipe), Levene's test per task, the unfinished runs, and the
    optional early-warning benchmark and instability measures."""

    rows: list[GroupRow]
    levene: dict[str, tuple[float, float]]
    unfinished: list[str] = field(default_factory=list)
    early: early_warning_report.EarlyWarningReport | None = None
    measures: dict[tuple[str, str], instability.Instability] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = ["| task | recipe | seeds | failed | std | mean | median | max | majority | disagreement | CKA |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            measures = self.measures.get((r.task, r.recipe))
            lines.append(f"| {r.task} | {r.recipe} | {r.seeds} | {r.failed} | {percent(r.std)} | {percent(r.mean)} | "
                         f"{percent(r.median)} | {percent(r.max)} | {percent(r.majority)} | "
                         f"{percent(measures.disagreement if measures else math.nan)} | "
                         f"{fraction(measures.cka if measures else math.nan)} |")
        metrics = sorted({r.metric for r in self.rows})
        lines.append("")
        lines.append(f"Dev metric ({', '.join(metrics)}) in percent; a run failed when it ended at or below the "
                     "majority-class baseline. Over the successful seeds: disagreement = share of dev examples "
                     "two seeds label differently, in percent, averaged over pairs; CKA = mean pairwise linear CKA "
                     "of the final [CLS] representations of the dev set (1: the same up to rotation and scale); "
                     "- where fewer than two successful seeds have these records.")
        for task, (statistic, p_value) in sorted(self.levene.items()):
            lines.append(f"Levene's test across recipes on {task}: W = {statistic:.2f}, p = {p_value:.3g}.")
        if self.unfinished:
            lines.append(f"Unfinished runs left out: {', '.join(self.unfinished)}.")
        if self.early is not None:
            lines += ["", "## Early warning", "", self.early.markdown()]
        return "\n".join(lines) + "\n"

    def json_rows(self) -> list[dict]:
        rows = []
        for r in self.rows:
            row = asdict(r)
            row["levene_p"] = self.levene.get(r.task, (None, None))[1]
            measures = self.measures.get((r.task, r.recipe))
            if measures is not None:
                row.update(asdict(measures))
            rows.append({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
        return rows


def load_outcomes(paths: list[str]) -> tuple[list[Outcome], list[str]]:
    """Outcomes of every finished run under ``paths``, and the paths of the unfinished ones."""
    outcomes, unfinished = [], []
    for path in iter_runs(paths):
        outcome = outcome_of(open_run(path), path)
        if outcome is None:
            unfinished.append(str(path))
        else:
            outcomes.append(outcome)
    return outcomes, unfinished


def outcome_of(run: RunRecords, path: Path) -> Outcome | None:
    """How the run read from ``path`` ended, or None while its summary has no final dev metric (unfinished)."""
    summary = run.summary
    if "final_dev_metric" not in summary:
        return None
    return Outcome(
        task=run.meta.get("task", ""), recipe=run.meta.get("recipe", ""), seed=int(run.meta.get("seed", -1)),
        metric=summary.get("metric", "accuracy"), value=float(summary["final_dev_metric"]),
        majority=float(summary.get("majority", math.nan)),
        final_train_loss=float(summary.get("final_train_loss", math.nan)), path=str(path))


def percent(value: float) -> str:
    """A share as a percentage with one decimal, ``-`` for NaN (not measured)."""
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def fraction(value: float) -> str:
    """A number in 0..1 to three decimals, ``-`` for NaN (not measured)."""
    return "-" if math.isnan(value) else f"{value:.3f}"

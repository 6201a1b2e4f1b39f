"""Multi-seed report: failed runs and the spread of the dev metric per task and recipe.

    python -m diagnostics.report runs/study                 # every run.h5 below the folder
    python -m diagnostics.report runs/study --json          # the rows as JSON, for scripts
    python -m diagnostics.report runs/study --out report.md # also write the Markdown table
    python -m diagnostics.report runs/study --early         # the early-failure predictor on held-out seeds
    python -m diagnostics.report runs/study --html report.html  # one self-contained page with every figure

A run failed when its final dev metric is at or below the majority-class baseline. Levene's test compares the
variance of the dev metric between the recipes of each task (scipy). Beyond the spread, two instability measures
over the successful seeds (``diagnostics.instability``): the pairwise disagreement of their dev predictions and
the mean pairwise linear CKA of their final [CLS] representations (``--json`` also gives both over all seeds).
Unfinished runs (no summary yet) are listed and left out of the numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from diagnostics import early_warning_report, instability
from diagnostics.command import CommandParser, fail
from probes.output_paths import check_parent
from probes.records import RunRecords, iter_runs, open_run
from diagnostics.seed_statistics import GroupRow, Outcome, group_rows, levene_by_task


@dataclass
class ReportConfig:
    runs: list[str]
    json: bool = False
    out: str | None = None
    early: bool = False
    window: float | None = None
    html: str | None = None
    overwrite: bool = False


@dataclass
class Report:
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
            lines.append(f"| {r.task} | {r.recipe} | {r.seeds} | {r.failed} | {_pct(r.std)} | {_pct(r.mean)} | "
                         f"{_pct(r.median)} | {_pct(r.max)} | {_pct(r.majority)} | "
                         f"{_pct(measures.disagreement if measures else math.nan)} | "
                         f"{_fraction(measures.cka if measures else math.nan)} |")
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


def run(config: ReportConfig) -> Report:
    outcomes, unfinished = load_outcomes(config.runs)
    if not outcomes:
        raise ValueError(f"no finished runs under {', '.join(config.runs)}; "
                         "pass run.h5 files or folders written by python -m diagnostics.finetune")
    rows = group_rows(outcomes)
    fractions = (config.window,) if config.window else early_warning_report.FRACTIONS
    early = early_warning_report.evaluate([Path(o.path) for o in outcomes], fractions) if config.early else None
    return Report(rows, levene_by_task(rows), unfinished, early, instability.by_group(outcomes))


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m diagnostics.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run.h5 files or folders holding them")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    parser.add_argument("--out", help="also write the Markdown report to this file (refused if it exists)")
    parser.add_argument("--early", action="store_true",
                        help="add the early-failure predictor's precision, recall and ROC AUC on held-out seeds "
                             "against the share of training seen, and the compute it saves")
    parser.add_argument("--window", type=float,
                        help="only this share of each run's steps (default: 5, 10, 15, 20 and 30%%)")
    parser.add_argument("--html", metavar="OUT", help="also write one self-contained HTML page: the table, each "
                        "run's verdict, every figure inline, links to the records (diagnostics.html_report)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out or --html file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = ReportConfig(runs=args.runs, json=args.json, out=args.out, early=args.early, window=args.window,
                          html=args.html, overwrite=args.overwrite)
    try:
        for path in config.runs:
            if not Path(path).exists():
                raise ValueError(f"{path} does not exist; pass run.h5 files or folders of runs")
        if config.window is not None and not 0 < config.window <= 1:
            raise ValueError(f"--window {config.window} must lie in (0, 1]: the share of the steps to look at")
        if config.html and Path(config.html).exists() and not config.overwrite:
            raise ValueError(f"{config.html} already exists; pass --overwrite to replace it, or another --html path")
        if config.html:
            check_parent(config.html)
        if config.out and Path(config.out).exists() and not config.overwrite:
            raise ValueError(f"{config.out} already exists; pass another --out path")
        folder = Path(config.out or ".").parent
        if config.out and not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise ValueError(f"cannot write {config.out}: its folder is missing or not writable; "
                             "pass another --out path")
        report = run(config)
    except ValueError as error:
        return fail(error)
    text = report.markdown()
    print(json.dumps(report.json_rows(), indent=1) if config.json else text, end="" if not config.json else "\n")
    if config.out:
        Path(config.out).write_text(text)
    if config.html:
        from diagnostics.html_report import write_html
        try:
            print(f"wrote {write_html(report, config.runs, Path(config.html))}", file=sys.stderr)
        except OSError as error:
            print(f"error: cannot write {config.html} ({error.strerror}); pass a writable --html path",
                  file=sys.stderr)
            return 1
    return 0


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def _fraction(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())

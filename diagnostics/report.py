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
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from diagnostics import early_warning_report, instability
from diagnostics.command import CommandParser, fail
from diagnostics.multi_seed import Report, load_outcomes
from diagnostics.seed_statistics import group_rows, levene_by_task
from probes.output_paths import check_parent


@dataclass
class ReportConfig:
    """What one report reads and writes (the command line's options)."""

    runs: list[str]
    json: bool = False
    out: str | None = None
    early: bool = False
    window: float | None = None
    html: str | None = None
    overwrite: bool = False


def run(config: ReportConfig) -> Report:
    """The report of every finished run under ``config.runs``; a ValueError names a folder with none."""
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


if __name__ == "__main__":
    raise SystemExit(main())

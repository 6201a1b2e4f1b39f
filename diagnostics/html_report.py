"""One self-contained HTML page for a study: the seeds table, each run's verdict, every figure, links to the records.

    python -m diagnostics.report runs/study --html runs/study/report.html
    (the study writes DIR/report.html itself)

The page is one file that reads offline in any browser: figures are inline SVG (sharp, text selectable), styles
inline, no script, nothing fetched. It is derived from the records alone and made again the same, byte for byte
(no clock in it; SVG ids are salted per figure, the SVGs' metadata is left out), so it can be rewritten at any time. Links to the records are
relative to the page, so the folder can be moved or zipped with it.
"""
from __future__ import annotations

import html
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt

from diagnostics.multi_seed import Report, outcome_of, percent
from diagnostics.seed_statistics import Outcome
from plots.batch import figure_options
from plots.registry import FIGURES
from plots.runs import load_runs
from plots.sources import MissingRecord, early_warning_decision
from plots.style import paper_style
from probes.early_failure.benchmark import UNSCORED
from probes.records import RunRecords, iter_runs, open_run

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 62rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.92rem; }
th, td { border-bottom: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
tr.failed td { background: #fbe9e7; }
figure { margin: 1.5rem 0; } figure svg { max-width: 100%; height: auto; }
figcaption { font-size: 0.9rem; color: #555; }
.note { color: #555; font-size: 0.9rem; }
"""


@dataclass(frozen=True)
class RunRow:
    """One line of the runs table: the run's outcome as the report reads it, with the verdict the run recorded."""

    name: str
    outcome: Outcome
    failed: bool
    early_warning: str


def run_rows(paths: list[str | os.PathLike]) -> list[RunRow]:
    """One row per finished run (a summary with a final dev metric), in path order."""
    rows = []
    for path in iter_runs(paths):
        run = open_run(path)
        outcome = outcome_of(run, path)
        if outcome is not None:
            rows.append(RunRow(path.parent.name if path.stem == "run" else path.stem, outcome,
                               bool(run.summary.get("failed", False)), _early_warning(run)))
    return rows


def _early_warning(run: RunRecords) -> str:
    """What the probe decided during the run, if it ran."""
    decision = early_warning_decision(run)
    if decision is None:
        return "not recorded"
    return f"{'flagged' if decision.flagged else 'clear'} at step {decision.step} ({decision.said()})"


def figure_svgs(paths: list[str | os.PathLike]) -> tuple[dict[str, str], dict[str, str]]:
    """Every figure the records allow as inline SVG text, and the reason for each one they do not allow."""
    runs = load_runs(paths)
    verdicts = {"failed": [r.records for r in runs if r.failed is True],
                "successful": [r.records for r in runs if r.failed is False]}
    loaded = [run.records for run in runs]
    drawn, skipped = {}, {}
    for name, kind in FIGURES.items():
        try:
            figure = kind.draw(loaded, **figure_options(name, verdicts, strict=False))
        except MissingRecord as error:
            skipped[name] = str(error)
            continue
        buffer = io.StringIO()
        try:
            with paper_style(), plt.rc_context({"svg.hashsalt": name}):
                figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
        finally:
            plt.close(figure)
        text = buffer.getvalue()
        drawn[name] = re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S)
    return drawn, skipped


def render(report: Report, rows: list[RunRow], figures: dict[str, str], skipped: dict[str, str], page: Path,
           title: str = "Stability study", intro: str = "") -> str:
    """The page's HTML; links to the records are relative to ``page``."""
    e = html.escape
    parts = [f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{e(title)}</title>\n'
             f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{e(title)}</h1>\n"]
    if intro:
        parts.append(f"<p>{e(intro)}</p>\n")
    parts.append("<h2>Seeds</h2>\n<table>\n<tr><th>task</th><th>recipe</th><th>seeds</th><th>failed</th><th>std</th>"
                 "<th>mean</th><th>median</th><th>max</th><th>majority</th></tr>\n")
    for r in report.rows:
        spread = (r.std, r.mean, r.median, r.max, r.majority)
        cells = [r.task, r.recipe, r.seeds, r.failed, *(percent(v) for v in spread)]
        parts.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>\n")
    parts.append("</table>\n<p class=\"note\">Dev metric in percent; a run failed when it ended at or below the "
                 "majority-class baseline.")
    for task, (statistic, p_value) in sorted(report.levene.items()):
        parts.append(f" Levene's test across recipes on {e(task)}: W = {statistic:.2f}, p = {p_value:.3g}.")
    parts.append("</p>\n<h2>Runs</h2>\n<table>\n<tr><th>run</th><th>task</th><th>recipe</th><th>seed</th>"
                 "<th>dev metric</th><th>majority</th><th>verdict</th><th>early warning</th><th>records</th></tr>\n")
    for row in rows:
        run = row.outcome
        link = Path(os.path.relpath(Path(run.path).resolve(), page.resolve().parent)).as_posix()
        cells = [row.name, run.task, run.recipe, run.seed, f"{run.metric} {percent(run.value)}", percent(run.majority),
                 "failed" if row.failed else "succeeded", row.early_warning]
        parts.append(f'<tr class="{"failed" if row.failed else "ok"}">'
                     + "".join(f"<td>{e(str(c))}</td>" for c in cells)
                     + f'<td><a href="{e(link)}">{e(link)}</a></td></tr>\n')
    parts.append("</table>\n")
    if report.early is not None:
        early = report.early
        parts.append("<h2>Early-failure predictor on held-out seeds</h2>\n<table>\n<tr><th>scope</th><th>seen</th>"
                     "<th>runs</th><th>failed</th><th>precision</th><th>recall</th><th>ROC AUC</th>"
                     "<th>steps saved</th></tr>\n")
        for r in early.results:
            cells = [r.scope, f"{100 * r.fraction:.0f}%", r.runs, r.failed]
            scored = [_share(r.precision), _share(r.recall), _share(r.auc), f"{100 * r.saved:.0f}%"]
            parts.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells)
                         + ("".join(f"<td>{e(c)}</td>" for c in scored) if r.scorable else
                            f'<td colspan="4">{e(UNSCORED)}</td>') + "</tr>\n")
        parts.append("</table>\n")
    parts.append("<h2>Figures</h2>\n")
    for name, svg in figures.items():
        parts.append(f'<figure id="figure-{name}">\n{svg}\n<figcaption>{e(name)}: {e(FIGURES[name].shows)}'
                     "</figcaption>\n</figure>\n")
    if skipped:
        parts.append('<p class="note">Not drawn: ' + "; ".join(f"{e(n)} ({e(why)})" for n, why in skipped.items())
                     + "</p>\n")
    host = _hardware(rows)
    parts.append(f'<p class="note">Made from the records by instability-diagnostics{e(host)}.</p>\n</body>\n</html>\n')
    return "".join(parts)


def write_html(report: Report, paths: list[str | os.PathLike], page: Path, *, intro: str = "",
               figure_records: list[str | os.PathLike] | None = None) -> Path:
    """Draw the figures (from ``figure_records``, default ``paths``) and write the page atomically; the caller
    decides whether an existing page may be replaced."""
    figures, skipped = figure_svgs(figure_records or paths)
    text = render(report, run_rows(paths), figures, skipped, page, intro=intro)
    page.parent.mkdir(parents=True, exist_ok=True)
    partial = page.with_name(f".{page.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, page)
    finally:
        partial.unlink(missing_ok=True)
    return page


def _share(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _hardware(rows: list[RunRow]) -> str:
    """Where the runs were recorded (host and torch version of the first run), for the figures' context."""
    if not rows:
        return ""
    meta = open_run(rows[0].outcome.path).meta
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    torch = versions.get("torch", "")
    return f"; runs recorded on {meta.get('host', 'an unknown host')}" + (f" with torch {torch}" if torch else "")


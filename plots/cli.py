"""The ``python -m plots`` command: redraw the papers' figures from records files, as PDF (or PNG/SVG).

    python -m plots gradients runs/rte-default-s1/run.h5 runs/rte-default-s2/run.h5 -o gradients.pdf
    python -m plots gradients RUNS... --failed runs/a/run.h5 --successful runs/b/run.h5 --matrix -o g.pdf
    python -m plots forgetting runs/ -o forgetting.pdf
    python -m plots surface surface.h5 -o surface.pdf
    python -m plots barriers barriers.h5 -o barriers.pdf
    python -m plots interpolation runs/rte-default-s1/run.h5 runs/rte-default-s2/run.h5 -o interpolation.pdf
    python -m plots all runs/ -o figures/          # every figure the records allow; says which it skipped
    python -m plots watch runs/my-run.h5 -o gradients.png   # redraw while the run writes it (plots.watch)

RECORDS are records files or folders (every ``*.h5`` inside). Failed and successful runs come from each run's
summary, or from ``--failed``/``--successful``. An existing output is refused unless ``--overwrite``; a missing
record is one line naming the record and the command that makes it, exit status 1.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from probes.records import RecordsError

from plots.command import PlotsParser
from plots.batch import Report, draw_figures
from plots.registry import FIGURES
from plots.sources import MissingRecord
from plots.style import FORMATS, FigureError


@dataclass
class PlotConfig:
    """One ``plots`` invocation: a figure name (or ``all``), its records, and where to write."""

    figure: str
    records: list[Path]
    out: Path
    failed: list[Path] = field(default_factory=list)
    successful: list[Path] = field(default_factory=list)
    overwrite: bool = False
    format: str = "pdf"
    options: dict[str, Any] = field(default_factory=dict)


def run(config: PlotConfig) -> Report:
    """Draw the figure (or, for ``all``, every figure the records allow) and report what was written."""
    if not config.records and not (config.failed or config.successful):
        raise FigureError("no records given; pass records files or folders (or --failed/--successful RUN)")
    if config.figure != "all":
        return draw_figures({config.figure: config.out}, config.records, failed=config.failed,
                            successful=config.successful, options=config.options, overwrite=config.overwrite)
    if config.out.suffix.lower() in FORMATS:
        raise FigureError(f"'all' writes one file per figure into a folder; pass a folder to -o, not {config.out.name}")
    if not config.out.parent.is_dir():
        raise FigureError(f"folder {config.out.parent} does not exist; create it or pass another -o folder")
    config.out.mkdir(exist_ok=True)
    outputs = {name: config.out / f"{name}.{config.format}" for name in FIGURES}
    return draw_figures(outputs, config.records, failed=config.failed, successful=config.successful,
                        options=config.options, overwrite=config.overwrite, strict=False)


def build_parser() -> argparse.ArgumentParser:
    parser = PlotsParser(prog="python -m plots", description=__doc__.splitlines()[0],
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="figures:\n" + "\n".join(f"  {n:15} {k.shows}" for n, k in FIGURES.items())
                         + "\n  all             every figure the records allow, into the -o folder"
                         + "\n  watch           python -m plots watch RUN -o FILE: redraw gradients live")
    parser.add_argument("figure", choices=[*FIGURES, "all"], metavar="FIGURE", help="a figure name (below) or all")
    parser.add_argument("records", nargs="*", type=Path, metavar="RECORDS", help="records files or folders")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output .pdf/.png/.svg (a folder for all)")
    parser.add_argument("--failed", action="append", type=Path, default=[], metavar="RUN",
                        help="treat this run as failed, whatever its summary says (repeatable)")
    parser.add_argument("--successful", action="append", type=Path, default=[], metavar="RUN",
                        help="treat this run as successful (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--format", choices=[f[1:] for f in FORMATS], default="pdf", help="file format for all")
    figure = parser.add_argument_group("figure options")
    figure.add_argument("--layers", help="gradients: subset (default), all, or depths like 1,4,8")
    figure.add_argument("--matrix", nargs="?", const="first", metavar="NAME",
                        help="gradients: one weight matrix per layer (the first, or NAME such as "
                             "attention.self.query.weight) instead of whole layers")
    figure.add_argument("--activations", action="store_true", default=None,
                        help="gradients: norms of the gradient with respect to each block's output (per depth, "
                             "also for ALBERT)")
    figure.add_argument("--name", help="forgetting, surface, line, barriers: the record to draw (default: the "
                                       "first); interpolation: start (default) or last_update")
    figure.add_argument("--task", help="generalisation: the task to draw (default: the one with most runs)")
    figure.add_argument("--successful-only", action="store_true", default=None,
                        help="generalisation: leave failed runs out")
    figure.add_argument("--no-training-panel", dest="training", action="store_false", default=None,
                        help="forgetting: leave out the failed runs' training panel")
    figure.add_argument("--log-loss", action="store_true", default=None, help="training: log axis for the loss")
    return parser


def config_from(args: argparse.Namespace) -> PlotConfig:
    options = {key: getattr(args, key) for key in ("layers", "matrix", "activations", "name", "task",
                                                   "successful_only", "training", "log_loss")
               if getattr(args, key) is not None}
    if isinstance(options.get("layers"), str) and options["layers"] not in ("subset", "all"):
        try:
            options["layers"] = [int(depth) for depth in options["layers"].split(",")]
        except ValueError:
            raise FigureError(f"--layers {options['layers']!r} is not subset, all or depths like 1,4,8") from None
    return PlotConfig(args.figure, list(args.records), args.out, list(args.failed), list(args.successful),
                      args.overwrite, args.format, options)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["watch"]:
        from plots.watch import main as watch
        return watch(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        report = run(config_from(args))
    except (FigureError, MissingRecord, RecordsError) as error:
        print(f"plots: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the output folder cannot be written (read-only, full)
        print(f"plots: error: cannot write {error.filename or args.out} ({error.strerror}); "
              "pass -o in a writable folder", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("plots: interrupted; no partial figure was left", file=sys.stderr)
        return 130
    for note in report.notes:
        print(f"plots: note: {note}", file=sys.stderr)
    for name, path in report.drawn.items():
        print(f"wrote {name}: {path}")
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}")
    if not report.drawn:
        print("plots: error: no figure could be drawn from these records (reasons above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

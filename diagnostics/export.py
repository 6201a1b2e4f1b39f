"""Export records to where people already look: tidy tables (CSV, Parquet) or TensorBoard scalars.

    python -m diagnostics.export runs/study --to csv tables/          # one tidy table per record, every run
    python -m diagnostics.export runs/a.h5 runs/b.h5 --to parquet tables/
    python -m diagnostics.export runs/study --to tensorboard tb/       # then: tensorboard --logdir tb/

The records stay the one store: an export is derived from them and can be made again at any time, byte for byte
(no clock or host name goes into the files). A series becomes ``DIR/<kind>.<name>.csv`` with columns ``run, step,
column, value`` (a grid such as a forgetting curve: its axes, ``field, value``), all runs in one table; for
TensorBoard each run gets a folder ``DIR/<run>/`` whose scalars are tagged ``<kind>/<name>/<column>`` (grids have
no step and are left out). A run is named by its file (``hedge-default-s0`` for ``hedge-default-s0/run.h5``).
Parquet needs pyarrow and TensorBoard needs tensorboard: ``pip install -e ".[export]"``. Existing outputs are
refused unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from diagnostics import tensorboard_events
from diagnostics.command import CommandParser, fail, summary
from probes.output_paths import check_parent
from probes.records import Grid, RunRecords, Series, iter_runs, open_run

FORMATS = ("csv", "parquet", "tensorboard")
NEEDS = {"parquet": "pyarrow", "tensorboard": "tensorboard"}


class ExportError(ValueError):
    """An export that cannot be done as asked; the message is one line naming the problem and the fix."""


@dataclass
class ExportConfig:
    runs: list[Path]
    to: str
    out: Path
    overwrite: bool = False


def run_name(path: Path) -> str:
    """``hedge-default-s0`` for ``.../hedge-default-s0/run.h5``, the file's stem otherwise."""
    return path.parent.name if path.stem == "run" and path.parent.name else path.stem


def read_runs(paths: list[Path]) -> dict[str, RunRecords]:
    """Every records file under ``paths`` by run name; two runs of one name are refused."""
    runs: dict[str, RunRecords] = {}
    for path in iter_runs(paths):
        records = open_run(path)
        name = run_name(path)
        if name in runs:
            raise ExportError(f"two runs are named {name!r} ({runs[name].path} and {path}); "
                              "export them separately")
        runs[name] = records
    if not runs:
        raise ExportError(f"no records files under {', '.join(map(str, paths))}; pass .h5 files or folders of them")
    return runs


def tidy_tables(runs: dict[str, RunRecords]) -> dict[str, pd.DataFrame]:
    """One long table per record name, ``kind.name``, over all runs, sorted by run then step (or axes)."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for name, records in sorted(runs.items()):
        for kind, named in records.records.items():
            for record_name, record in named.items():
                table = _series_table(record) if isinstance(record, Series) else _grid_table(record)
                table.insert(0, "run", name)
                parts.setdefault(f"{kind}.{record_name}", []).append(table)
    return {key: pd.concat(tables, ignore_index=True) for key, tables in sorted(parts.items())}


def _series_table(series: Series) -> pd.DataFrame:
    rows, columns = series.values.shape
    return pd.DataFrame({"step": np.repeat(series.steps, columns), "column": np.tile(series.columns, rows),
                         "value": series.values.reshape(-1)})


def _grid_table(grid: Grid) -> pd.DataFrame:
    mesh = np.meshgrid(*grid.axes.values(), indexing="ij")
    tables = [pd.DataFrame({**{a: m.reshape(-1) for a, m in zip(grid.axes, mesh)}, "field": field,
                            "value": values.reshape(-1)}) for field, values in grid.fields.items()]
    return pd.concat(tables, ignore_index=True)


def outputs(config: ExportConfig, runs: dict[str, RunRecords]) -> dict[str, Path]:
    """What the export will write: table name (or run name, for TensorBoard) -> file."""
    if config.to == "tensorboard":
        return {name: config.out / name / tensorboard_events.FILE_NAME for name in runs}
    names = sorted({f"{kind}.{record}" for records in runs.values() for kind in records.records
                    for record in records.records[kind]})
    return {name: config.out / f"{name}.{config.to}" for name in names}


def run(config: ExportConfig) -> dict[str, Path]:
    """Check, then write every output (each atomically); returns what was written."""
    _require_extra(config.to)
    if config.out.exists() and not config.out.is_dir():
        raise ExportError(f"{config.out} is a file; pass a folder to write the export into")
    check_parent(config.out / "x", ExportError)
    runs = read_runs(config.runs)
    planned = outputs(config, runs)
    existing = [str(path) for path in planned.values() if path.exists()]
    if existing and not config.overwrite:
        raise ExportError(f"{existing[0]} already exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}; "
                          "pass --overwrite to replace, or another folder")
    if config.to == "tensorboard":
        for name, path in planned.items():
            _atomic(path, lambda tmp, records=runs[name]: tensorboard_events.write_run(tmp, records))
    else:
        for name, table in tidy_tables(runs).items():
            _atomic(planned[name], lambda tmp, table=table: _write_table(table, tmp, config.to))
    return planned


def _write_table(table: pd.DataFrame, path: Path, to: str) -> None:
    if to == "csv":
        table.to_csv(path, index=False)  # the shortest text that gives back every bit of each float
    else:
        table.to_parquet(path, index=False, engine="pyarrow")


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _require_extra(to: str) -> None:
    package = NEEDS.get(to)
    if package is None:
        return
    try:
        __import__(package)
    except ImportError:
        raise ExportError(f"--to {to} needs {package}, which is not installed; "
                          'pip install -e ".[export]" (or pip install ' + package + ")") from None


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m diagnostics.export", description=summary(__doc__))
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="records files or folders of them")
    parser.add_argument("--to", nargs=2, required=True, metavar=("FORMAT", "DIR"),
                        help=f"one of {', '.join(FORMATS)}, and the folder to write into (created if missing)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.to[0] not in FORMATS:
        parser.error(f"--to {args.to[0]}: choose one of {', '.join(FORMATS)}")
    config = ExportConfig(runs=args.runs, to=args.to[0], out=Path(args.to[1]), overwrite=args.overwrite)
    try:
        for path in config.runs:
            if not path.exists():
                raise ExportError(f"{path} does not exist; pass records files or folders of them")
        written = run(config)
    except ValueError as error:  # ExportError and the records' one-line RecordsError
        return fail(error)
    except OSError as error:  # a read-only or full disk
        return fail(ExportError(f"cannot write {error.filename or config.out} ({error.strerror}); "
                                "pass a writable DIR"))
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The one HDF5 records format of the toolkit: every byte any command writes goes through this module.

A records file holds one run (one seed, one rank-0 process). Its prose specification is ``docs/records.md``; in
short, the root carries the run's metadata, and each kind of record is a group holding named records of two shapes:

* a **series** grows during training: ``step`` ``(N,)``, ``values`` ``(N, C)`` and the column names ``columns``
  ``(C,)`` (plus optional per-column axes such as ``depth``); chunked and resizable, grown a block of rows at a time;
* a **grid** has fixed axes (``k`` for a forgetting curve, ``a`` and ``b`` for a loss surface) stored as datasets,
  and one dataset per field, NaN where a point is not computed yet, so an interrupted grid can be resumed.

Writers use HDF5 SWMR: once :meth:`RunWriter.start` is called, another process can read the file while it grows,
and a writer killed with SIGKILL leaves a file holding every flushed step (reopening it for writing copies it into
a clean file first, see :func:`_recover`). Nothing is ever overwritten: a new file refuses an existing path, a new
record refuses an existing name. Only h5py and numpy are imported, so ``plots`` can read records without torch.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import h5py
import numpy as np

from probes.catalogue import KINDS, GridSpec, SeriesSpec
from probes.output_paths import make_parent

try:
    import resource
except ImportError:  # not on Windows, where only free disk space is checked
    resource = None

__all__ = ["FILE_TYPE", "KINDS", "SCHEMA_VERSION", "Grid", "RecordsError", "RunMeta", "RunRecords", "RunWriter",
           "Series", "iter_runs", "next_name", "open_run", "write_grid", "write_summary"]

SCHEMA_VERSION = 1
FILE_TYPE = "instability-diagnostics.run"
_STR = h5py.string_dtype()
_METADATA_ROOM = 256 * 1024  # bytes kept free beyond the data of a flush, for HDF5's own bookkeeping
_SWMR_READ_ATTEMPTS = 20
_VERSIONED_PACKAGES = ("instability-diagnostics", "torch", "transformers", "numpy", "h5py")


class RecordsError(ValueError):
    """A records file that cannot be used as asked; the message is one line naming the problem and the fix."""


@dataclass
class RunMeta:
    """What the root of a records file says about its run."""

    model: str = ""
    seed: int | None = None
    task: str = ""
    recipe: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    argv: Sequence[str] = field(default_factory=lambda: list(sys.argv))


@dataclass(frozen=True)
class Series:
    """A table grown step by step: ``values[i, j]`` is column ``columns[j]`` at ``steps[i]``."""

    steps: np.ndarray
    columns: list[str]
    values: np.ndarray
    axes: dict[str, np.ndarray]
    attrs: dict[str, Any]

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise RecordsError(f"series has no column {name!r}; it has {', '.join(self.columns)}")
        return self.values[:, self.columns.index(name)]


@dataclass(frozen=True)
class Grid:
    """Fields sampled on fixed axes; ``fields[f][i, j, ...]`` sits at ``axes[0][i], axes[1][j], ...``."""

    axes: dict[str, np.ndarray]
    fields: dict[str, np.ndarray]
    attrs: dict[str, Any]

    @property
    def missing(self) -> int:
        """How many points are not computed yet (NaN in any field: a point is written field by field)."""
        return int(np.logical_or.reduce([np.isnan(values) for values in self.fields.values()]).sum())


# ----------------------------------------------------------------------------------------------- writing


def _refusing_damage(method):
    """h5py's errors from a damaged file (a corrupted B-tree, heap or object header met while declaring records) become
    one-line RecordsErrors."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except RecordsError:
            raise
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as error:
            raise RecordsError(f"{self.path} is damaged ({_first_line(error)}); it cannot be written: rerun the "
                               "command that made it or write to another file") from None
    return guarded


class RunWriter:
    """Writes records into one file: declare series and grids, :meth:`start`, then append and fill.

    Use :meth:`create` for a new file and :meth:`open` to add records to an existing one. Nothing is buffered
    here: :meth:`extend` writes a block of rows at once (the probes buffer rows on the device and hand over one
    block per flush), and readers see it after :meth:`flush`.
    """

    def __init__(self, file: h5py.File) -> None:
        self._file, self._path = file, Path(file.filename)
        self._series: dict[str, h5py.Group] = {}
        self._grids: dict[str, h5py.Group] = {}
        self._open: dict[str, tuple[h5py.Dataset, h5py.Dataset]] = {}
        self._started = False

    @property
    def path(self) -> Path:
        return self._path

    @classmethod
    def create(cls, path: str | os.PathLike, meta: RunMeta) -> "RunWriter":
        """A new records file at ``path`` (its folders are created); refuses a path that exists."""
        path = Path(path)
        if path.exists():
            raise RecordsError(f"{path} already exists; records are never overwritten: pass another output path")
        make_parent(path, RecordsError)
        try:
            file = h5py.File(path, "x", libver="latest")
        except OSError as error:
            raise RecordsError(f"cannot create {path} ({_first_line(error)}); pass a writable output path") from None
        _write_meta(file, meta)
        return cls(file)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunWriter":
        """An existing records file, validated, to add records to (a file left by a killed writer is recovered)."""
        path = Path(path)
        _validate(path)
        try:
            file = h5py.File(path, "a", libver="latest")
        except OSError as error:
            if "lock" in str(error):
                raise RecordsError(f"{path} is open in another process that keeps others out (a writer, or a "
                                   "reader holding a file lock); close it or write to another file") from None
            if "already open for write" not in str(error):
                raise RecordsError(f"cannot open {path} for writing ({_first_line(error)}); "
                                   "check its permissions or write to another file") from None
            _refuse_live_writer(path)
            _recover(path)
            file = h5py.File(path, "a", libver="latest")
        return cls(file)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, meta: RunMeta) -> "RunWriter":
        """:meth:`open` if ``path`` exists, else :meth:`create` with ``meta``."""
        return cls.open(path) if Path(path).exists() else cls.create(path, meta)

    @_refusing_damage
    def add_series(self, name: str, columns: Sequence[str], *, kind: str = "scalars",
                   axes: Mapping[str, Sequence] | None = None, attrs: Mapping[str, Any] | None = None) -> None:
        """Declare a series ``kind/name`` with ``columns`` (and per-column ``axes``); must precede :meth:`start`.
        Series names are unique within a file, whatever their kind (appends name the series alone)."""
        if name in self._series:
            raise RecordsError(f"a series named {name!r} is already declared in {self.path}; give each series its "
                               "own name")
        group = self._new_record(kind, name, "series", attrs)
        columns = list(columns)
        if not columns:
            raise RecordsError(f"series {name!r} has no columns; give at least one")
        group.create_dataset("columns", data=np.array(columns, dtype=object), dtype=_STR)
        group.create_dataset("step", shape=(0,), maxshape=(None,), chunks=(1024,), dtype="i8")
        group.create_dataset("values", shape=(0, len(columns)), maxshape=(None, len(columns)),
                             chunks=(max(1, min(1024, 65536 // len(columns))), len(columns)), dtype="f4",
                             fillvalue=np.nan)
        for axis, values in (axes or {}).items():
            values = np.asarray(values)
            if len(values) != len(columns):
                raise RecordsError(f"axis {axis!r} of series {name!r} has {len(values)} entries for {len(columns)} columns")
            group.create_dataset(axis, data=values.astype(object) if values.dtype.kind == "U" else values,
                                 dtype=_STR if values.dtype.kind == "U" else values.dtype)
        self._series[name] = group

    def set_attribute(self, key: str, value: Any) -> None:
        """Add one metadata attribute to the file's root (the optimiser audit, say); only before :meth:`start`."""
        if self._started:
            raise RecordsError(f"attribute {key!r} must be set before start(); set it when the file is made")
        self._file.attrs[key] = _encode(value)

    @_refusing_damage
    def add_grid(self, name: str, axes: Mapping[str, Sequence[float]], fields: Sequence[str], *, kind: str,
                 attrs: Mapping[str, Any] | None = None) -> Grid | None:
        """Declare a grid ``kind/name``; returns the grid already there if it is the same one (to resume).

        A record of that name with other axes, fields or attributes is refused.
        """
        attrs = dict(attrs or {})
        existing = self._file.get(f"{kind}/{name}")
        if existing is not None:
            grid = _read_grid(existing)
            same = (list(grid.axes) == list(axes) and list(grid.fields) == list(fields)
                    and all(np.array_equal(grid.axes[a], np.asarray(v, dtype="f8")) for a, v in axes.items())
                    and all(grid.attrs.get(k) == _decode(_encode(v)) for k, v in attrs.items()))
            if not same:
                raise RecordsError(f"{self.path} already holds a different {kind} record {name!r}; "
                                   "pass another --out file or another record name")
            self._grids[name] = existing
            return grid
        group = self._new_record(kind, name, "grid", attrs)
        shape = tuple(len(v) for v in axes.values())
        if 0 in shape:
            raise RecordsError(f"grid {name!r} has an empty axis; give at least one point per axis")
        group.attrs["axes"] = json.dumps(list(axes))
        group.attrs["fields"] = json.dumps(list(fields))
        for axis, values in axes.items():
            group.create_dataset(axis, data=np.asarray(values, dtype="f8"))
        for name_ in fields:  # written whole now: HDF5 allocates storage at the first write, which must precede SWMR
            group.create_dataset(name_, data=np.full(shape, np.nan), fillvalue=np.nan)
        self._grids[name] = group
        return None

    @property
    def started(self) -> bool:
        return self._started

    @_refusing_damage
    def start(self) -> None:
        """Switch to SWMR: from here readers may open the file while it grows; no new records can be declared.
        Starting a started writer does nothing (a runner and the probes it attaches may both call it)."""
        if self._started:
            return
        self._file.attrs["writer"] = f"{platform.node()}:{os.getpid()}"
        self._file.flush()
        self._file.swmr_mode = True
        self._started = True

    def extend(self, name: str, steps: Sequence[int], block: np.ndarray) -> None:
        """Append the rows ``block[i]`` at ``steps[i]`` to series ``name`` and make them visible to readers.

        When the disk or the file-size limit has no room for them, nothing is written and a RecordsError is
        raised: HDF5 cannot recover from a failed write, so the file must never see one."""
        self._require_started()
        # Datasets stay open between writes: closing one writes its chunk cache from h5py's deallocator, where a
        # failure could not be caught; and looking them up again at every flush took a third of its time.
        if name not in self._open:
            group = self._series[name]
            self._open[name] = (group["step"], group["values"])
        step_set, value_set = self._open[name]
        block, width = np.asarray(block, dtype="f4"), value_set.shape[1]
        if block.ndim != 2 or block.shape != (len(steps), width):
            raise RecordsError(f"series {name!r} takes {len(steps)} rows of {width} columns for {len(steps)} steps, "
                               f"got shape {block.shape}")
        if not len(steps):
            return
        _check_room(self.path, self._bytes_needed(value_set, len(steps)))
        with self._failing_disk_guarded():
            start = step_set.shape[0]  # the values first, then the steps that make them visible to SWMR readers
            value_set.resize((start + len(steps), width))
            value_set[start:] = block
            value_set.flush()
            step_set.resize((start + len(steps),))
            step_set[start:] = np.asarray(steps, dtype="i8")
            step_set.flush()

    def append(self, name: str, step: int, values: Sequence[float] | np.ndarray) -> None:
        """Append one row of series ``name`` at ``step`` (see :meth:`extend`)."""
        self.extend(name, [step], np.asarray(values, dtype="f4").reshape(1, -1))

    def latest(self, name: str) -> tuple[int, dict[str, float]] | None:
        """The last flushed row of series ``name`` as ``(step, {column: value})``, None before its first flush:
        what a live summary (a trainer's loggers) mirrors, read through this writer's own handle."""
        group = self._series.get(name)
        if group is None or group["step"].shape[0] == 0:
            return None
        last = group["step"].shape[0] - 1
        columns = [c.decode() if isinstance(c, bytes) else c for c in group["columns"][()]]
        return int(group["step"][last]), dict(zip(columns, map(float, group["values"][last])))

    def write_point(self, name: str, index: tuple[int, ...], values: Mapping[str, float]) -> None:
        """Fill one point of grid ``name`` and flush it to disk at once (each point is worth keeping)."""
        self._require_started()
        group = self._grids[name]
        with self._failing_disk_guarded():
            for field_name, value in values.items():
                group[field_name][index] = value
                group[field_name].flush()

    @_refusing_damage
    def set_summary(self, values: Mapping[str, Any]) -> None:
        """Write or extend the run's summary (final metric, failed flag...); only before :meth:`start`."""
        if self._started:
            raise RecordsError("the summary is written before start() or after close(); use write_summary()")
        group = self._file.require_group("summary")
        _stamp(group, "summary")
        for key, value in values.items():
            group.attrs[key] = _encode(value)

    def flush(self) -> None:
        """Make everything written so far durable in the file (its metadata included)."""
        with self._failing_disk_guarded():
            self._file.flush()

    @contextlib.contextmanager
    def _failing_disk_guarded(self):
        """A write that fails under HDF5 (the disk filled after the room check, an I/O error) leaves a file HDF5
        cannot close: it retries the write at every attempt and can crash the process at exit. The file's descriptor
        is then pointed at /dev/null so that closing completes; the disk keeps what was written before."""
        try:
            yield
        except RecordsError:
            raise
        except Exception as error:
            path, self._open = self.path, {}
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, self._file.id.get_vfd_handle())
                os.close(null)
                self._file.close()
            except Exception:  # closing is best effort here; the error below is what the caller needs
                pass
            raise RecordsError(f"writing records to {path} failed ({_first_line(error)}); the steps flushed "
                               "before stay in it: free some space or write to another disk") from None

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    @staticmethod
    def _bytes_needed(values: h5py.Dataset, rows: int) -> int:
        """An upper bound of what appending ``rows`` rows adds to the file: new chunks and HDF5's bookkeeping."""
        chunk = int(np.prod(values.chunks)) * values.dtype.itemsize
        return _METADATA_ROOM + 8 * 1024 + chunk * (1 + rows // values.chunks[0])

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _new_record(self, kind: str, name: str, shape: str, attrs: Mapping[str, Any] | None) -> h5py.Group:
        if self._started:
            raise RecordsError(f"record {kind}/{name} declared after start(); declare every record before start()")
        if kind not in KINDS:
            raise RecordsError(f"unknown record kind {kind!r}; use one of {', '.join(KINDS)}")
        if not name or "/" in name:
            raise RecordsError(f"record name {name!r} must be non-empty and contain no '/'")
        parent = self._file.require_group(kind)
        _stamp(parent, kind)
        if name in parent:
            raise RecordsError(f"{self.path} already holds {kind}/{name}; records are never overwritten: "
                               "pass another name or another file")
        group = parent.create_group(name)
        _stamp(group, shape)
        for key, value in (attrs or {}).items():
            group.attrs[key] = _encode(value)
        return group

    def _require_started(self) -> None:
        if not self._file.id.valid:
            raise RecordsError(f"the writer of {self.path} is closed; open it again with RunWriter.open")
        if not self._started:
            raise RecordsError("call start() after declaring records and before writing to them")


def write_grid(path: str | os.PathLike, name: str, axes: Mapping[str, Sequence[float]],
               values: Mapping[str, np.ndarray], *, kind: str, attrs: Mapping[str, Any] | None = None,
               meta: RunMeta | None = None) -> None:
    """Write a whole grid record at once (a finished forgetting curve, say), creating the file if needed."""
    with RunWriter.open_or_create(path, meta or RunMeta()) as run:
        run.add_grid(name, axes, list(values), kind=kind, attrs=attrs)
        run.start()
        group = run._grids[name]
        for field_name, data in values.items():
            group[field_name][...] = np.asarray(data, dtype="f8")


def write_summary(path: str | os.PathLike, values: Mapping[str, Any]) -> None:
    """Add to the summary of a finished run (final dev metric, failed flag, ...)."""
    with RunWriter.open(path) as run:
        run.set_summary(values)


def next_name(path: str | os.PathLike, kind: str, prefix: str) -> str:
    """The first ``prefix``, ``prefix-1``, ``prefix-2``... not yet used under ``kind`` in ``path``."""
    taken = set(open_run(path).names(kind)) if Path(path).exists() else set()
    name, number = prefix, 0
    while name in taken:
        number += 1
        name = f"{prefix}-{number}"
    return name


# ----------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class RunRecords:
    """Everything a records file holds, read into memory (the file is closed again)."""

    path: Path
    meta: dict[str, Any]
    summary: dict[str, Any]
    records: dict[str, dict[str, Series | Grid]]

    def names(self, kind: str) -> list[str]:
        return list(self.records.get(kind, {}))

    def has(self, spec: SeriesSpec | GridSpec) -> bool:
        """Whether the file holds the record of this catalogue entry (``probes.catalogue``)."""
        return isinstance(self.records.get(spec.kind, {}).get(spec.name), Series if isinstance(spec, SeriesSpec)
                          else Grid)

    def get(self, spec: SeriesSpec | GridSpec) -> Series | Grid:
        """The record of a catalogue entry: how readers name what they read (one spelling, in the catalogue)."""
        if isinstance(spec, SeriesSpec):
            return self.series(spec.name, spec.kind)
        return self.grid(spec.name, spec.kind)

    def series(self, name: str, kind: str | None = None) -> Series:
        return self._get(name, kind, Series)

    def grid(self, name: str, kind: str | None = None) -> Grid:
        return self._get(name, kind, Grid)

    def grids(self, kind: str) -> dict[str, Grid]:
        return {n: r for n, r in self.records.get(kind, {}).items() if isinstance(r, Grid)}

    def frame(self, name: str, kind: str | None = None):
        """Series ``name`` as a pandas DataFrame indexed by step (pandas comes with seaborn)."""
        import pandas as pd

        series = self.series(name, kind)
        return pd.DataFrame(series.values, index=pd.Index(series.steps, name="step"), columns=series.columns)

    def _get(self, name: str, kind: str | None, shape: type):
        kinds = [kind] if kind else [k for k in self.records if name in self.records[k]]
        found = [self.records[k][name] for k in kinds if name in self.records.get(k, {})]
        found = [r for r in found if isinstance(r, shape)]
        if len(found) != 1:
            what = "no" if not found else "more than one"
            raise RecordsError(f"{self.path} has {what} {shape.__name__.lower()} named {name!r}; "
                               f"it has: {', '.join(f'{k}/{n}' for k in self.records for n in self.records[k]) or 'none'}")
        return found[0]


def open_run(path: str | os.PathLike) -> RunRecords:
    """Read and validate a records file (also one still being written, or left by a killed writer)."""
    path = Path(path)
    _validate(path)
    try:
        return _read_run(path)
    except RecordsError as error:
        raise RecordsError(f"{path} is damaged: {error}; rerun the command that made it") from None
    except Exception as error:  # h5py and json raise many kinds for damaged bytes; all mean the same here
        raise RecordsError(f"{path} is truncated or corrupt ({_first_line(error)}); "
                           "it cannot be read, rerun the command that made it") from None


def _read_run(path: Path) -> RunRecords:
    with _open_for_reading(path) as file:
        meta = {key: _decode(value) for key, value in file.attrs.items()}
        summary = _attrs(file["summary"]) if "summary" in file else {}
        _check_types(meta, _META_TYPES, "root")
        _check_types(summary, _SUMMARY_TYPES, "summary")
        records: dict[str, dict[str, Series | Grid]] = {}
        for kind in KINDS:
            if kind not in file:
                continue
            if not isinstance(file[kind], h5py.Group):
                raise RecordsError(f"{kind!r} is not a group")
            records[kind] = {}
            for name, group in file[kind].items():
                shape = group.attrs.get("type") if isinstance(group, h5py.Group) else None
                if shape not in ("series", "grid"):
                    raise RecordsError(f"{kind}/{name} is neither a series nor a grid")
                records[kind][name] = (_read_series if shape == "series" else _read_grid)(group)
    return RunRecords(path, meta, summary, records)


def _read_series(group: h5py.Group) -> Series:
    for name in ("step", "values", "columns"):
        _dataset(group, name)
    group["step"].refresh()
    group["values"].refresh()
    steps = _array(group, "step", "iu", ndim=1)
    columns = [c.decode() if isinstance(c, bytes) else c for c in _array(group, "columns", "OSU", ndim=1)]
    values = _dataset(group, "values")
    if values.ndim != 2 or values.dtype.kind != "f" or values.shape[1] != len(columns):
        raise RecordsError(f"{group.name}/values has shape {values.shape} ({values.dtype}) for {len(columns)} columns")
    steps = steps[: len(values)]  # rows are written before their steps; a failed write can leave more steps
    values = values[: len(steps)]
    axes = {}
    for name in group:
        if name not in ("step", "values", "columns"):
            axes[name] = _decode_array(_array(group, name, "iufOSU", ndim=1))
            if len(axes[name]) != len(columns):
                raise RecordsError(f"axis {group.name}/{name} has {len(axes[name])} entries for {len(columns)} columns")
    return Series(steps, columns, values, axes, _attrs(group))


def _read_grid(group: h5py.Group) -> Grid:
    attrs = _attrs(group)
    names = {key: attrs.pop(key, None) for key in ("axes", "fields")}
    if not all(isinstance(v, list) and v and all(isinstance(n, str) for n in v) for v in names.values()):
        raise RecordsError(f"grid {group.name} does not list its axes and fields")
    axes = {name: _array(group, name, "iuf", ndim=1) for name in names["axes"]}
    shape = tuple(len(values) for values in axes.values())
    fields = {name: _array(group, name, "f", ndim=len(shape)) for name in names["fields"]}
    for name, values in fields.items():
        if values.shape != shape:
            raise RecordsError(f"field {group.name}/{name} has shape {values.shape}, its axes {shape}")
    return Grid(axes, fields, attrs)


def _dataset(group: h5py.Group, name: str) -> h5py.Dataset:
    found = group.get(name)
    if not isinstance(found, h5py.Dataset):
        raise RecordsError(f"{group.name} has no dataset {name!r}")
    return found


def _array(group: h5py.Group, name: str, kinds: str, ndim: int) -> np.ndarray:
    """Dataset ``name`` of ``group`` read whole, refused unless of ``ndim`` dimensions and a dtype kind in ``kinds``."""
    values = _dataset(group, name)[()]
    if np.ndim(values) != ndim or np.asarray(values).dtype.kind not in kinds:
        raise RecordsError(f"{group.name}/{name} has shape {np.shape(values)} ({np.asarray(values).dtype}), "
                           f"not {ndim}-dimensional")
    return values


# What the root and the summary hold, where present: readers rely on these types.
_META_TYPES = {"type": str, "schema_version": int, "model": str, "seed": int, "task": str, "recipe": str,
               "config": dict, "argv": list, "versions": dict, "started": str, "host": str}
_SUMMARY_TYPES = {"final_dev_metric": float, "metric": str, "majority": float, "failed": int, "steps": int,
                  "final_train_loss": float, "seconds": float}


def _check_types(values: Mapping[str, Any], types: Mapping[str, type], where: str) -> None:
    for key, kind in types.items():
        value = values.get(key)
        numeric = kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in values and not (isinstance(value, kind) or (numeric and (kind is float or float(value).is_integer()))):
            raise RecordsError(f"attribute {key!r} of the {where} is {value!r}, not a {kind.__name__}")


# ----------------------------------------------------------------------------------------------- helpers


def _validate(path: Path) -> None:
    """One-line errors for a missing, non-HDF5, truncated, foreign or newer-schema file."""
    if not path.exists():
        raise RecordsError(f"records file {path} does not exist; check the path")
    if path.is_dir():
        raise RecordsError(f"{path} is a folder, not a records file; pass the .h5 file inside it")
    if not h5py.is_hdf5(path):
        raise RecordsError(f"{path} is not an HDF5 file; pass a records file written by this toolkit")
    try:
        with _open_for_reading(path) as file:
            kind, version = _decode(file.attrs.get("type")), _decode(file.attrs.get("schema_version"))
    except RecordsError:
        raise
    except Exception as error:  # OSError mostly; h5py raises others for damaged bytes
        raise RecordsError(f"{path} is truncated or corrupt ({_first_line(error)}); "
                           "it cannot be read, rerun the command that made it") from None
    if not isinstance(kind, str) or kind != FILE_TYPE:
        raise RecordsError(f"{path} is an HDF5 file but not an instability-diagnostics records file (type={kind!r}); "
                           "pass a file written by this toolkit")
    if not isinstance(version, int) or version < 1:
        raise RecordsError(f"{path} has no valid schema version ({version!r}); it is damaged, rerun the command "
                           "that made it")
    if version > SCHEMA_VERSION:
        raise RecordsError(f"{path} uses records schema {int(version)}, newer than this toolkit's "
                           f"{SCHEMA_VERSION}; upgrade instability-diagnostics")


def _open_for_reading(path: Path) -> h5py.File:
    """Open read-only; a file a writer holds (or a killed writer left) is opened as an SWMR reader instead.

    The plain open comes first because only it checks the file's length, which catches a truncated copy. Readers
    take no file lock, so a reader never keeps a writer out (a writer holding the file is seen by its flags).
    """
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as error:
        if "already open for write" not in str(error):
            raise
    access = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    access.set_file_locking(False, True)
    _limit_read_attempts(access)
    try:
        return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=access))
    except OSError as error:
        if "not already open for SWMR writing" not in str(error):
            raise
    raise RecordsError(f"{path} is open for writing by another process that has not started recording yet (or was "
                       "left by one killed before it did); wait for it to start, or rerun the command that made it")


def _limit_read_attempts(access: h5py.h5p.PropFAID) -> None:
    """An SWMR reader retries metadata whose checksum fails (a read torn by the writer); HDF5's default of 100
    attempts backs off for minutes on a damaged file. 20 attempts fail in milliseconds (h5py does not wrap the call,
    so it is made through the HDF5 library h5py loaded; without it the default stays)."""
    try:
        function = ctypes.CDLL(h5py.h5p.__file__).H5Pset_metadata_read_attempts
    except (OSError, AttributeError):
        return
    function.argtypes, function.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int
    function(access.id, _SWMR_READ_ATTEMPTS)


def _check_room(path: Path, needed: int) -> None:
    """Raise if the disk or the process's file-size limit (RLIMIT_FSIZE) leaves fewer than ``needed`` bytes."""
    free = shutil.disk_usage(path.parent).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource else -1
    size = path.stat().st_size
    if needed > free or (limit not in (-1, getattr(resource, "RLIM_INFINITY", -1)) and size + needed > limit):
        raise RecordsError(f"no room for {needed} more bytes of records in {path} (disk full or file-size limit); "
                           "free some space or write to another disk")


def _refuse_live_writer(path: Path) -> None:
    """Raise if the process that holds ``path`` open for writing is still alive (only a dead one's file is recovered)."""
    with _open_for_reading(path) as file:
        host, _, pid = str(file.attrs.get("writer", ":")).rpartition(":")
    if host != platform.node():
        raise RecordsError(f"{path} is held open by a writer on host {host or 'unknown'}; "
                           "wait for that run to finish or write to another file")
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return
    except PermissionError:
        pass
    raise RecordsError(f"{path} is being written by process {pid}; wait for it to finish or write to another file")


def _recover(path: Path) -> None:
    """Copy a file left open by a killed SWMR writer into a clean one (same content), replacing it atomically."""
    tmp = path.with_name(path.name + ".recovering")
    tmp.unlink(missing_ok=True)
    with _open_for_reading(path) as source, h5py.File(tmp, "x", libver="latest") as target:
        for key, value in source.attrs.items():
            target.attrs[key] = value
        for name in source:
            source.copy(source[name], target, name=name)
    os.replace(tmp, path)


def _write_meta(file: h5py.File, meta: RunMeta) -> None:
    _stamp(file, FILE_TYPE)
    file.attrs["model"] = str(meta.model)
    file.attrs["seed"] = -1 if meta.seed is None else int(meta.seed)
    file.attrs["task"] = meta.task
    file.attrs["recipe"] = meta.recipe
    file.attrs["config"] = _encode(dict(meta.config))
    file.attrs["argv"] = _encode(list(meta.argv))
    file.attrs["versions"] = _encode(_versions())
    file.attrs["started"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    file.attrs["host"] = platform.node()


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _stamp(obj: h5py.Group | h5py.File, kind: str) -> None:
    obj.attrs["type"] = kind
    obj.attrs["schema_version"] = SCHEMA_VERSION


def _encode(value: Any) -> Any:
    """Attributes hold numbers and strings; anything else (lists, dicts, None) is stored as JSON text."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, str, np.integer, np.floating)):
        return value
    return "json:" + json.dumps(value, default=str)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode_array(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v.decode() if isinstance(v, bytes) else v for v in values])
    return values


def _attrs(group: h5py.Group) -> dict[str, Any]:
    attrs = {key: _decode(value) for key, value in group.attrs.items() if key not in ("type", "schema_version")}
    for key in ("axes", "fields"):
        if key in attrs and isinstance(attrs[key], str):
            attrs[key] = json.loads(attrs[key])
    return attrs


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def iter_runs(paths: Iterable[str | os.PathLike]) -> Iterable[Path]:
    """Every ``*.h5`` under the given files and folders, sorted: how commands take 'RUNS...' arguments."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(path.rglob("*.h5"))
        else:
            yield path

"""Seeded fuzzing of records files: mutate real records, feed each mutant to every reader in a guarded worker.

Not a test module: ``tests/test_fuzz_records.py`` runs a small slice in CI, ``bench/fuzz_records.py`` the full
battery (1,000+ mutants). A reader must end every mutant with a valid result or a one-line ``error:`` and a non-zero
status, within a time limit; the worker process that runs the readers is watched from outside, so a segfault of
HDF5 or a hang is caught and reported instead of ending the fuzzing.

* **Sources**: records written by every producer (``seed_files``): the probes on a real tiny model (a plain loop),
  the same killed before closing (the SWMR file a SIGKILL leaves), fine-tuning runs with a forgetting curve, and a
  loss plane and line, all through the real ``RunWriter``.
* **Mutations** (``MUTATIONS``): bytes (truncation, flips in the superblock, in HDF5's metadata blocks and in the
  data chunks, anywhere) and structure (attributes dropped or retyped, datasets reshaped, retyped or removed,
  NaN and infinite values, steps out of order or repeated, grid points missing).
* **Readers** (``READERS``): ``open_run``, ``python -m plots all``, ``python -m diagnostics.report --early``, and the
  records paths of the writing commands (``forgetting --out`` adding a curve, ``surface --out`` resuming a grid,
  ``finetune`` looking for a finished run).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# ----------------------------------------------------------------------------------------------- sources

PROBED_RUN = r'''
import os, sys, torch, probes, tiny
torch.manual_seed(0); torch.set_num_threads(1)
model = tiny.classifier("bert", layers=2, seed=0).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
session = probes.attach(model, optimizer, sys.argv[1], probes=[probes.GradientNorms(), probes.ActivationGradients(), probes.ParameterNorms()],
                        schedule=probes.Schedule(every=1), flush_every=8)
for step in range(40):
    loss = model(**tiny.batch(4, 8, seed=step)).loss
    loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step(); optimizer.zero_grad()
    if sys.argv[2] == "killed" and step == 30:
        session.writer.flush(); os._exit(0)  # as SIGKILL: the file stays open for writing, in SWMR mode
session.__exit__(None, None, None)
'''


def seed_files(folder: Path) -> dict[str, Path]:
    """One records file per producer, written by the real code: what the mutations start from."""
    sys.path.insert(0, str(TESTS))
    import records_factory

    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}
    sources = {}
    for mode in ("probed", "killed"):
        sources[mode] = folder / f"{mode}.h5"
        subprocess.run([sys.executable, "-c", PROBED_RUN, str(sources[mode]), mode], check=True, env=env,
                       cwd=REPO, timeout=600)
    sources["failed"] = records_factory.finetune_run(folder / "failed.h5", failed=True, seed=3, steps=120)
    sources["successful"] = records_factory.finetune_run(folder / "successful.h5", failed=False, seed=4, steps=120)
    sources["surface"] = records_factory.surface_records(folder / "surface.h5", size=9)
    return sources


# ----------------------------------------------------------------------------------------------- mutations

# Signatures of HDF5's own metadata blocks (object headers and their continuations, B-trees, heaps, free-space
# managers, extensible and fixed arrays indexing chunks, the global heap of variable-length strings).
_METADATA = re.compile(rb"OHDR|OCHK|BTHD|BTIN|BTLF|FRHP|FHDB|FHIB|FSHD|FSSE|EAHD|EAIB|EADB|EASB|FAHD|FADB|GCOL|"
                       rb"TREE|HEAP|SNOD")


def _flip(path: Path, rng: np.random.Generator, start: int, stop: int, count: int) -> str:
    data = bytearray(path.read_bytes())
    stop = min(stop, len(data))
    offsets = sorted(int(o) for o in rng.integers(start, max(start + 1, stop), size=count))
    for offset in offsets:
        data[offset] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))
    return f"{count} byte(s) flipped at {offsets}"


def truncate(path: Path, rng: np.random.Generator) -> str:
    size = path.stat().st_size
    cut = int(rng.integers(0, size)) if rng.random() < 0.7 else int(size - rng.integers(1, min(size, 4096)))
    with open(path, "r+b") as file:
        file.truncate(cut)
    return f"truncated to {cut} of {size} bytes"


def flip_superblock(path: Path, rng: np.random.Generator) -> str:
    return "superblock: " + _flip(path, rng, 0, 48, int(rng.integers(1, 3)))


def flip_metadata(path: Path, rng: np.random.Generator) -> str:
    """Flip bytes inside one of HDF5's metadata blocks (found by signature), its signature included or not."""
    found = [m.start() for m in _METADATA.finditer(path.read_bytes())]
    at = found[int(rng.integers(len(found)))]
    name = path.read_bytes()[at:at + 4].decode()
    return f"{name} at {at}: " + _flip(path, rng, at, at + 96, int(rng.integers(1, 4)))


def flip_data(path: Path, rng: np.random.Generator) -> str:
    """Flip bytes in the stored values of one dataset (a chunk, or contiguous storage)."""
    places = []
    with h5py.File(path, "r", swmr=True) as file:
        file.visititems(lambda name, obj: places.extend(_storage(name, obj)))
    name, offset, size = places[int(rng.integers(len(places)))]
    return f"data of {name}: " + _flip(path, rng, offset, offset + size, int(rng.integers(1, 9)))


def _storage(name: str, obj) -> list[tuple[str, int, int]]:
    if not isinstance(obj, h5py.Dataset):
        return []
    if obj.chunks is None:
        offset = obj.id.get_offset()
        return [] if offset is None else [(name, offset, obj.id.get_storage_size())]
    chunks = [obj.id.get_chunk_info(i) for i in range(obj.id.get_num_chunks())]
    return [(name, c.byte_offset, c.size) for c in chunks if c.size]


def flip_anywhere(path: Path, rng: np.random.Generator) -> str:
    return "anywhere: " + _flip(path, rng, 0, path.stat().st_size, int(rng.integers(1, 17)))


def _objects(file: h5py.File) -> list[str]:
    names = ["/"]
    file.visit(names.append)
    return names


def _datasets(file: h5py.File, pattern: str = "") -> list[str]:
    return [n for n in _objects(file) if isinstance(file[n], h5py.Dataset) and re.search(pattern, n)]


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def drop_attribute(path: Path, rng: np.random.Generator) -> str:
    with h5py.File(path, "r+") as file:
        owners = [n for n in _objects(file) if len(file[n].attrs)]
        owner = _pick(rng, owners)
        key = _pick(rng, sorted(file[owner].attrs))
        del file[owner].attrs[key]
    return f"attribute {key!r} of {owner} dropped"


_ODD_VALUES = ("", "json:{", "json:null", "json:[1, 2]", "grid", "series", -1, 0, 2, 99, 2.5, float("nan"),
               np.array([1, 2, 3]), np.array(["a", "b"], dtype=object), "x" * 300)


def retype_attribute(path: Path, rng: np.random.Generator) -> str:
    with h5py.File(path, "r+") as file:
        owners = [n for n in _objects(file) if len(file[n].attrs)]
        owner = _pick(rng, owners)
        key = _pick(rng, sorted(file[owner].attrs))
        value = _pick(rng, list(_ODD_VALUES))
        if isinstance(value, np.ndarray) and value.dtype == object:
            file[owner].attrs.create(key, value, dtype=h5py.string_dtype())
        else:
            file[owner].attrs[key] = value
    return f"attribute {key!r} of {owner} set to {value!r}"


def reshape_dataset(path: Path, rng: np.random.Generator) -> str:
    """Replace a dataset with one of another shape, rank or type (same name)."""
    with h5py.File(path, "r+") as file:
        name = _pick(rng, _datasets(file))
        data = file[name][()]
        flat = np.asarray(data).reshape(-1)
        choice = int(rng.integers(6))
        if choice == 0:
            new = flat[: max(0, flat.size // 2 - 1)]
        elif choice == 1:
            new = np.zeros((0,) + np.shape(data)[1:], dtype=np.asarray(data).dtype)
        elif choice == 2:
            new = np.asarray(data).T if np.ndim(data) == 2 else np.asarray(data)[..., None]
        elif choice == 3:
            new = np.float64(flat[0]) if flat.size and flat.dtype != object else np.float64(1.0)
        elif choice == 4:
            new = np.array([b"text"] * max(1, min(flat.size, 8)), dtype=object)
        else:
            new = np.tile(flat[:1] if flat.size else np.array([0.0]), 3).reshape(3, 1, 1)
        del file[name]
        if new.dtype == object:
            file.create_dataset(name, data=new, dtype=h5py.string_dtype())
        else:
            file.create_dataset(name, data=new)
    return f"dataset {name} {np.shape(data)} replaced by {np.shape(new)} {new.dtype}"


def remove_object(path: Path, rng: np.random.Generator) -> str:
    with h5py.File(path, "r+") as file:
        name = _pick(rng, _objects(file)[1:])
        del file[name]
    return f"{name} removed"


def non_finite(path: Path, rng: np.random.Generator) -> str:
    """NaN, +inf and -inf in a float dataset (values, grid fields, axes, column axes)."""
    with h5py.File(path, "r+") as file:
        name = _pick(rng, [n for n in _datasets(file) if file[n].dtype.kind == "f" and file[n].size])
        data = file[name][()]
        flat = data.reshape(-1)
        where = rng.random(flat.size) < _pick(rng, [0.05, 0.5, 1.0])
        flat[where] = rng.choice([np.nan, np.inf, -np.inf], size=int(where.sum()))
        file[name][...] = flat.reshape(data.shape)
    return f"{int(where.sum())} of {flat.size} values of {name} made non-finite"


def disorder_steps(path: Path, rng: np.random.Generator) -> str:
    """A series whose steps are shuffled, reversed, repeated or negative."""
    with h5py.File(path, "r+") as file:
        name = _pick(rng, _datasets(file, r"/step$"))
        steps = file[name][()]
        how = _pick(rng, ["shuffled", "reversed", "repeated", "negative"])
        if how == "shuffled":
            steps = rng.permutation(steps)
        elif how == "reversed":
            steps = steps[::-1]
        elif how == "repeated":
            steps = np.full_like(steps, steps[0] if steps.size else 0)
        else:
            steps = -steps - 1
        file[name][...] = steps
    return f"steps of {name} {how}"


def missing_points(path: Path, rng: np.random.Generator) -> str:
    """A grid with points not computed (NaN in some or every field), as an interrupted run leaves it."""
    with h5py.File(path, "r+") as file:
        grids = [n for n in _objects(file) if file[n].attrs.get("type") == "grid"]
        if not grids:
            return _nan_rows(file, rng)
        grid = file[_pick(rng, grids)]
        fields = json.loads(grid.attrs["fields"])
        share = _pick(rng, [0.1, 0.5, 1.0])
        mask = rng.random(grid[fields[0]].shape) < share
        for name in fields if rng.random() < 0.5 else fields[:1]:
            data = grid[name][()]
            data[mask] = np.nan
            grid[name][...] = data
    return f"{int(mask.sum())} points of {grid.name} missing"


def _nan_rows(file: h5py.File, rng: np.random.Generator) -> str:
    name = _pick(rng, _datasets(file, r"/values$"))
    data = file[name][()]
    data[rng.random(len(data)) < 0.5] = np.nan
    file[name][...] = data
    return f"rows of {name} all NaN"


MUTATIONS: dict[str, Callable[[Path, np.random.Generator], str]] = {
    "truncate": truncate, "flip_superblock": flip_superblock, "flip_metadata": flip_metadata,
    "flip_data": flip_data, "flip_anywhere": flip_anywhere, "drop_attribute": drop_attribute,
    "retype_attribute": retype_attribute, "reshape_dataset": reshape_dataset, "remove_object": remove_object,
    "non_finite": non_finite, "disorder_steps": disorder_steps, "missing_points": missing_points,
}
BYTE_MUTATIONS = ("truncate", "flip_superblock", "flip_metadata", "flip_data", "flip_anywhere")


@dataclass(frozen=True)
class Mutant:
    path: Path
    source: str
    mutation: str
    description: str


def make_mutants(sources: dict[str, Path], folder: Path, count: int, seed: int) -> list[Mutant]:
    """``count`` mutants, round-robin over sources and mutations, each drawn from its own seeded generator.
    A killed writer's file cannot be opened for editing, so only byte mutations apply to it."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(s, m) for s in sources for m in MUTATIONS if s != "killed" or m in BYTE_MUTATIONS]
    mutants = []
    for number in range(count):
        source, mutation = pairs[number % len(pairs)]
        rng = np.random.default_rng([seed, number])
        path = folder / f"m{number:05d}-{source}-{mutation}.h5"
        shutil.copyfile(sources[source], path)
        try:
            description = MUTATIONS[mutation](path, rng)
        except Exception as error:  # a mutation that does not apply to this file (e.g. no grid): the file unchanged
            description = f"unchanged ({type(error).__name__}: {error})"
        mutants.append(Mutant(path, source, mutation, description))
    return mutants


# ----------------------------------------------------------------------------------------------- readers

# Each reader takes a mutant (a path it may not change) and a scratch folder; it returns (exit status, stderr).


def read_open_run(path: Path, scratch: Path) -> tuple[int, str]:
    from probes.records import RecordsError, open_run

    try:
        run = open_run(path)
        for kind in run.records:
            for name in run.names(kind):
                run.records[kind][name]
        return 0, ""
    except RecordsError as error:
        return 1, f"error: {error}\n"


def read_plots(path: Path, scratch: Path) -> tuple[int, str]:
    from plots.cli import main

    return _main(main, ["all", str(path), "-o", str(scratch / "figures")])


def read_report(path: Path, scratch: Path) -> tuple[int, str]:
    from diagnostics.report import main

    return _main(main, [str(path), "--early"])


def read_forgetting_out(path: Path, scratch: Path) -> tuple[int, str]:
    """What ``forgetting --out`` does with an existing records file: name the new record, add the curve."""
    from probes import records

    copy = _copy(path, scratch)

    def add() -> int:
        name = records.next_name(copy, "forgetting", "final")
        records.write_grid(copy, name, {"k": np.arange(3)}, {"perplexity": np.array([9.0, 8.0, 7.0])},
                           kind="forgetting")
        records.open_run(copy).grid(name)
        return 0

    return _call(add, records.RecordsError)


def read_surface_resume(path: Path, scratch: Path) -> tuple[int, str]:
    """What ``surface --out`` does with an existing file: open it, declare the grid (its own, to resume, or a new
    one), fill the missing points."""
    from probes import records

    copy = _copy(path, scratch)

    def resume() -> int:
        previous = records.open_run(copy).grids("surfaces") if Path(copy).exists() else {}
        name, grid = next(iter(previous.items()), ("plane", None))
        axes = grid.axes if grid else {"a": np.linspace(0, 1, 3), "b": np.linspace(0, 1, 3)}
        fields = list(grid.fields) if grid else ["loss", "accuracy"]
        with records.RunWriter.open(copy) as writer:
            existing = writer.add_grid(name, axes, fields, kind="surfaces", attrs=grid.attrs if grid else {})
            writer.start()
            shape = tuple(len(a) for a in axes.values())
            for index in np.ndindex(shape):
                if existing is None or any(np.isnan(existing.fields[f][index]) for f in fields):
                    writer.write_point(name, index, {f: 1.0 for f in fields})
        return 0

    return _call(resume, records.RecordsError)


def read_finetune_skip(path: Path, scratch: Path) -> tuple[int, str]:
    """How ``finetune`` (and ``study``) decide that a run folder holds a finished run."""
    from diagnostics.finetune import finished_run

    folder = scratch / "run"
    folder.mkdir()
    shutil.copyfile(path, folder / "run.h5")

    def look() -> int:
        finished_run(folder)  # a run found or not are both valid answers; only an escaping exception is not
        return 0

    return _call(look, ValueError)


READERS: dict[str, Callable[[Path, Path], tuple[int, str]]] = {
    "open_run": read_open_run, "plots": read_plots, "report": read_report, "forgetting_out": read_forgetting_out,
    "surface_resume": read_surface_resume, "finetune_skip": read_finetune_skip,
}


def _copy(path: Path, scratch: Path) -> Path:
    copy = scratch / "copy.h5"
    shutil.copyfile(path, copy)
    return copy


def _call(function: Callable[[], int], expected: type[BaseException]) -> tuple[int, str]:
    try:
        return function(), ""
    except expected as error:
        return 1, f"error: {error}\n"


def _main(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str]:
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, stderr.getvalue()


# ----------------------------------------------------------------------------------------------- the worker


def _serve() -> None:
    """Worker loop: one JSON request per line on stdin, one JSON verdict per line on stdout."""
    import matplotlib

    matplotlib.use("Agg")
    protocol = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr  # anything a reader prints goes elsewhere than the protocol
    for line in sys.stdin:
        request = json.loads(line)
        scratch = Path(request["scratch"])
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                code, stderr = READERS[request["reader"]](Path(request["path"]), scratch)
                verdict = {"code": code, "stderr": stderr}
            except BaseException:  # an exception escaping the reader: the traceback a user would see
                verdict = {"code": 1, "stderr": traceback.format_exc(), "traceback": True}
        verdict["warnings"] = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught})
        protocol.write(json.dumps(verdict) + "\n")
        protocol.flush()


class Worker:
    """A subprocess running the readers; restarted after a crash (a signal) or a hang (killed at the time limit)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.process: subprocess.Popen | None = None

    def _start(self) -> None:
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1",
               "MPLBACKEND": "Agg", "HDF5_USE_FILE_LOCKING": os.environ.get("HDF5_USE_FILE_LOCKING", "TRUE")}
        self.process = subprocess.Popen([sys.executable, "-c", "import records_fuzz; records_fuzz._serve()"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, env=env, cwd=REPO)

    def read(self, reader: str, path: Path, scratch: Path) -> dict:
        """The verdict of ``reader`` on ``path``: its status and stderr, or ``crash``/``hang``."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        started = time.monotonic()
        self.process.stdin.write(json.dumps({"reader": reader, "path": str(path), "scratch": str(scratch)}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        line = self.process.stdout.readline() if ready else ""
        seconds = time.monotonic() - started
        if line:
            return {**json.loads(line), "seconds": seconds}
        if not ready:
            self.process.kill()
        code = self.process.wait()
        self.process = None
        return {"code": code, "stderr": "", "seconds": seconds, "crash" if ready else "hang": True}

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


def judge(verdict: dict) -> str:
    """``ok`` (a result, status 0), ``error`` (a non-zero status with one line of stderr saying ``error:``), or
    what went wrong: ``crash``, ``hang``, ``traceback``, ``bad-error`` (several lines, or no ``error:``)."""
    for fault in ("crash", "hang", "traceback"):
        if verdict.get(fault):
            return fault
    lines = [line for line in verdict["stderr"].splitlines() if line.strip()]
    if "Traceback" in verdict["stderr"]:
        return "traceback"
    if verdict["code"] == 0:
        return "ok"
    errors = [line for line in lines if "error:" in line]
    return "error" if len(errors) == 1 else "bad-error"

"""A live view: redraw the vanishing-gradient figure of a run while it is being written, until it ends or Ctrl-C.

    python -m plots watch runs/my-run.h5 -o gradients.png            # every 5 s; open the PNG in any viewer
    python -m plots watch runs/my-run.h5 -o gradients.png --every 2 --layers all

Records files are HDF5 in SWMR mode, so this opens the file read-only as a second reader between the writer's
flushes and never writes to it, locks it or slows it beyond one read per redraw. The figure is redrawn only when
the file changed, into a temporary file then renamed, so a viewer never sees half a PNG; its title carries the last
recorded step and, once the run's early warning decided (``scalars/early_warning``), its verdict. The watch ends by
itself after a last redraw when the writer closes the file (or its process is gone), or on Ctrl-C (exit 130).
Steps appear as the writer flushes them (every 50 recorded steps by default: ``flush_every``).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import matplotlib.pyplot as plt

from probes.records import RecordsError, RunRecords, open_run

from plots import sources
from plots.command import PlotsParser
from plots.gradients import plot_gradients
from plots.sources import MissingRecord
from plots.style import FigureError, check_output, save


@dataclass
class WatchConfig:
    run: Path
    out: Path
    every: float = 5.0
    layers: str = "subset"
    overwrite: bool = False


def is_being_written(path: Path) -> bool:
    """Whether a live process still holds ``path`` open for writing (a killed writer's file counts as finished)."""
    try:
        h5py.File(path, "r").close()  # a plain open fails while an SWMR writer holds the file
        return False
    except OSError:
        pass
    try:
        with h5py.File(path, "r", swmr=True) as file:
            host, _, pid = str(file.attrs.get("writer", ":")).rpartition(":")
    except OSError:
        return True  # created but not yet switched to SWMR: the writer is declaring its records
    if host != platform.node():
        return True  # another machine's writer: trust the file's flag
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        pass
    return True


def verdict(run: RunRecords) -> str:
    """The early warning's decision, once made."""
    decision = sources.early_warning_decision(run)
    if decision is None:
        return ""
    said = "flagged: gradients collapsing" if decision.flagged else "not flagged"
    return f"early warning at step {decision.step}: {said} ({decision.said()})"


def draw(config: WatchConfig, run: RunRecords, finished: bool) -> int:
    """Redraw the figure from ``run``; returns the last recorded step (-1 when nothing is recorded yet)."""
    kind, name = sources.LAYER_NORMS
    layers = run.series(name, kind)
    if not layers.steps.size:
        return -1
    figure = plot_gradients([run], layers=config.layers)
    try:
        last = int(layers.steps[-1])
        state = "finished" if finished else "live"
        title = f"{run.path.name}: {state}, step {last}"
        figure.suptitle("\n".join(filter(None, [title, verdict(run)])), fontsize="small")
        save(figure, config.out, overwrite=True)
    finally:
        plt.close(figure)
    return last


def watch(config: WatchConfig, say=print, stop: threading.Event | None = None) -> int:
    """Redraw until the run ends; returns the last step drawn. Setting ``stop`` ends the watch (KeyboardInterrupt)
    after the redraw in progress."""
    check_output(config.out, overwrite=config.overwrite)
    stop = stop or threading.Event()
    seen, last = None, -1
    while not stop.is_set():
        if not config.run.exists():
            stop.wait(config.every)
            continue
        finished = not is_being_written(config.run)
        stamp = (config.run.stat().st_mtime_ns, config.run.stat().st_size)
        if stamp != seen or finished:
            seen = stamp
            try:
                drawn = draw(config, open_run(config.run), finished)
            except MissingRecord:
                drawn = -1
            except RecordsError:
                if finished:
                    raise
                drawn = -1  # caught between the writer's creation and its start: look again
            if drawn != last or finished:
                last = drawn
                say(f"{config.out}: step {drawn}" if drawn >= 0 else f"{config.run}: no step flushed yet")
        if finished:
            return last
        stop.wait(config.every)
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = PlotsParser(prog="python -m plots watch", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the records file being written")
    parser.add_argument("-o", "--out", type=Path, required=True, help="the figure (.png, .svg or .pdf), redrawn")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between looks (default %(default)s)")
    parser.add_argument("--layers", default="subset", help="subset, all or encoder depths like 1,4,8")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output at the start")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = WatchConfig(args.run, args.out, args.every, args.layers, args.overwrite)
    layers = config.layers if config.layers in ("subset", "all") else config.layers.split(",")
    config.layers = layers
    # Ctrl-C only sets ``stop``, looked at between redraws: a KeyboardInterrupt raised wherever the signal landed
    # (inside h5py or matplotlib) was once lost under load, and the watch ran on to the run's end
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda number, frame: stop.set())
    try:
        if not math.isfinite(config.every) or config.every <= 0:
            raise FigureError(f"--every {args.every} must be a positive number of seconds")
        last = watch(config, stop=stop)
    except (FigureError, RecordsError) as error:
        print(f"plots: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the figure's folder cannot be written
        print(f"plots: error: cannot write {error.filename or config.out} ({error.strerror}); "
              "pass -o in a writable folder", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"plots: watch stopped; {config.out} holds the last complete figure", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    print(f"run ended; wrote gradients: {config.out} (step {last})")
    return 0

"""Ctrl-C and SIGTERM stop a command the same way: cleanly, within seconds, with its records closed and readable.

Python turns SIGINT (Ctrl-C) into ``KeyboardInterrupt``, so ``with`` blocks close the records writers and each
command's ``main`` says what it kept. SIGTERM (``kill``, a job scheduler's time limit, ``docker stop``) would end the
process at once, leaving files open; inside :func:`stop_on_signals` it raises the same ``KeyboardInterrupt``
instead. :func:`deferred` holds both signals during a write that must land whole (a record is there or not, never
half). The exit status is 128 + the signal number, as a shell reports it (130 for SIGINT, 143 for SIGTERM).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A stop asked for by a signal; ``signal`` is its number, ``kept`` what was written whole before it (or "")."""

    def __init__(self, number: int, kept: str = "") -> None:
        super().__init__(signal.Signals(number).name)
        self.signal = number
        self.kept = kept


def _raise(number: int, frame) -> None:
    """The first signal stops the command; later ones are ignored so that closing the records is not cut short
    (SIGKILL still ends it at once, and leaves readable records too)."""
    for other in SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise Stopped(number)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` (a ``KeyboardInterrupt``) inside; previous handlers come back after.
    Outside the main thread (where handlers cannot be set) it does nothing."""
    with _handling(_raise):
        yield


@contextlib.contextmanager
def deferred(kept: str = "") -> Iterator[None]:
    """Signals arriving inside are held until the block has finished, then raise :class:`Stopped` saying ``kept``
    (what the block wrote): a record is written whole or not at all."""
    held: list[int] = []
    with _handling(lambda number, frame: held.append(number)):
        yield
    if held:
        raise Stopped(held[0], kept)


@contextlib.contextmanager
def _handling(handler) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM inside, the previous handlers after; nothing outside the main thread."""
    try:
        previous = {number: signal.signal(number, handler) for number in SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for number, handler_before in previous.items():
            signal.signal(number, handler_before)


_stop_asked = 0  # in a pool's worker process: the signal that asked it to stop (it then declines every run)
_running = False  # in a pool's worker process: a run is in progress


def worker_signals() -> None:
    """Initializer of a pool's worker processes. Ctrl-C goes to the parent, which stops each worker with SIGTERM.
    Outside a run SIGTERM is only remembered: a worker killed while it waits for work would leave the pool's queue
    lock held and its siblings, and so the parent, waiting forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _remember)
    threading.Thread(target=_end_with_parent, args=(os.getppid(),), daemon=True, name="end-with-parent").start()


def _end_with_parent(parent: int) -> None:
    """A worker whose parent was killed (SIGKILL, a crash) stops its run cleanly and exits: nobody else would ask.
    It exits once the main thread has taken the SIGTERM (from then on no run can start: a run about to start when
    the parent died would otherwise be cut off with its records open) and no run is in progress."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 120
    while (not _stop_asked or _running) and time.monotonic() < deadline:
        time.sleep(0.2)
    os._exit(128 + signal.SIGTERM)


def _remember(number: int, frame) -> None:
    global _stop_asked
    _stop_asked = number


def _stop_run(number: int, frame) -> None:
    """A signal during a run: remembered (later runs are declined), then the run stops as under
    :func:`stop_on_signals`."""
    _remember(number, frame)
    _raise(number, frame)


@contextlib.contextmanager
def worker_run() -> Iterator[None]:
    """One run in a pool's worker: SIGTERM inside stops it cleanly (as :func:`stop_on_signals`). A worker asked to
    stop, during a run or between two, declines every later run with :class:`Stopped` (the pool has queued
    some before the parent could cancel them)."""
    global _running
    try:
        _running = True
        with _handling(_stop_run):
            if _stop_asked:
                raise Stopped(_stop_asked)
            yield
    except Stopped as stop:
        _remember(stop.signal, None)
        raise
    finally:
        _running = False


def describe(stop: KeyboardInterrupt) -> str:
    """``SIGTERM`` or ``SIGINT`` (a plain KeyboardInterrupt is Ctrl-C)."""
    return signal.Signals(getattr(stop, "signal", signal.SIGINT)).name


def exit_status(stop: KeyboardInterrupt) -> int:
    """128 + the signal's number: what a shell reports for a process that a signal stopped."""
    return 128 + int(getattr(stop, "signal", signal.SIGINT))

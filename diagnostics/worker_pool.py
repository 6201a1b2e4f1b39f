"""Fine-tuning runs in worker processes, a few at a time, stopped cleanly by Ctrl-C or SIGTERM (the study and the
seed bank both run their seeds this way).

Each worker is a fresh (spawned) interpreter running one run at a time on one thread. What a worker logs (the
early warning, say) goes to the parent as one line naming the run, which prints it through its progress bar
instead of across it. Stopping follows
:mod:`diagnostics.interrupt`: the parent terminates its workers and waits; a worker stops its run with its records
closed and declines the runs the pool had queued; a worker whose parent was killed stops and exits by itself.
"""
from __future__ import annotations

import logging
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import active_children, get_context
from pathlib import Path
from typing import Callable

from diagnostics import interrupt
from diagnostics.finetune import FinetuneConfig, FinetuneResult, finished_run, run
from diagnostics.quiet import quiet_transformers, warnings_as_log_lines
from diagnostics.tasks import load_task

_progress = None  # in a worker process: the queue the parent reads, 1 per optimiser step or a line of text to print
_log = None  # in a worker process: the handler that sends its log records to the parent


class _ToParent(logging.Handler):
    """Puts each log record, formatted as one line, on the progress queue."""

    def emit(self, record: logging.LogRecord) -> None:
        _progress.put(self.format(record))


def _start_worker(progress) -> None:
    """Initializer of each worker process: signals as a worker takes them, the progress queue (a queue passes to a
    process only when it starts), and log records sent through it as lines."""
    global _progress, _log
    interrupt.worker_signals()
    _progress, _log = progress, _ToParent(logging.WARNING)
    logging.getLogger().addHandler(_log)


def _finetune_one(config: FinetuneConfig) -> FinetuneResult:
    """One run in a worker process (the runner attaches the standard probes), after setting aside what an
    interrupted attempt left; each update is counted on the progress queue, and what the run logs or warns is sent
    as one line of text prefixed with the run."""
    name = f"{Path(config.out).name}/{Path(config.task).name}-{config.recipe}-s{config.seed}"
    _log.setFormatter(logging.Formatter(f"{name}: %(message)s"))
    with interrupt.worker_run(), warnings_as_log_lines():  # SIGTERM (or Ctrl-C) closes this run's records
        quiet_transformers()
        set_aside_unfinished(config)
        return run(config, on_step=lambda: _progress.put(1))


def set_aside_unfinished(config: FinetuneConfig) -> None:
    """Move an interrupted run's folder to ``<run>.interrupted-N`` so it is redone (its records are kept)."""
    run_dir = config.run_dir(load_task(config.task).name)
    if run_dir.exists() and finished_run(run_dir) is None:
        number = 1
        while run_dir.with_name(f"{run_dir.name}.interrupted-{number}").exists():
            number += 1
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.interrupted-{number}"))


def finetune_in_workers(configs: list[FinetuneConfig], workers: int, on_result: Callable[[FinetuneResult], None],
                        on_steps: Callable[[int], None] | None = None,
                        on_message: Callable[[str], None] | None = None) -> list[FinetuneResult]:
    """Every run of ``configs``, ``workers`` at a time in fresh processes of one thread each; ``on_result`` sees each
    result as it comes, ``on_steps`` the optimiser steps done since the last call, ``on_message`` each line a run
    logged (default: printed to stderr; pass a progress bar's ``write``). Ctrl-C or SIGTERM stops every worker's
    run cleanly (its records closed) before ``KeyboardInterrupt`` goes on."""
    on_message = on_message or (lambda text: print(text, file=sys.stderr))
    results: list[FinetuneResult] = []
    context = get_context("spawn")  # fresh interpreters: no forked torch thread pools
    progress = context.SimpleQueue()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker,
                             initargs=(progress,)) as pool:
        pending = {pool.submit(_finetune_one, one) for one in configs}
        try:
            while pending:
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                counted = 0
                while not progress.empty():
                    item = progress.get()
                    if isinstance(item, str):
                        on_message(item)
                    else:
                        counted += item
                if on_steps and counted:
                    on_steps(counted)
                for future in done:
                    results.append(future.result())
                    on_result(results[-1])
        except KeyboardInterrupt:
            for worker in active_children():  # each stops its run cleanly and declines the runs queued after it
                worker.terminate()
            pool.shutdown(wait=True, cancel_futures=True)  # a first shutdown(wait=False) would make this one not wait
            raise
    return results

"""Fine-tuning runs in worker processes, a few at a time, stopped cleanly by Ctrl-C or SIGTERM (the study and the
seed bank both run their seeds this way).

Each worker is a fresh (spawned) interpreter running one run at a time on one thread. Stopping follows
:mod:`diagnostics.interrupt`: the parent terminates its workers and waits; a worker stops its run with its records
closed and declines the runs the pool had queued; a worker whose parent was killed stops and exits by itself.
"""
from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import active_children, get_context
from typing import Callable

from diagnostics import interrupt
from diagnostics.finetune import FinetuneConfig, FinetuneResult, finished_run, run
from diagnostics.quiet import quiet_transformers
from diagnostics.tasks import load_task

_steps = None  # in a worker process: the queue the parent's progress bar reads, one item per optimiser step


def _start_worker(steps) -> None:
    """Initializer of each worker process: signals as a worker takes them, and the progress queue (a queue passes
    to a process only when it starts)."""
    global _steps
    interrupt.worker_signals()
    _steps = steps


def _finetune_one(config: FinetuneConfig) -> FinetuneResult:
    """One run in a worker process (the runner attaches the standard probes), after setting aside what an
    interrupted attempt left; each update is counted on the progress queue."""
    with interrupt.worker_run():  # SIGTERM from the parent (or Ctrl-C) closes this run's records
        quiet_transformers()
        set_aside_unfinished(config)
        return run(config, on_step=lambda: _steps.put(1))


def set_aside_unfinished(config: FinetuneConfig) -> None:
    """Move an interrupted run's folder to ``<run>.interrupted-N`` so it is redone (its records are kept)."""
    run_dir = config.run_dir(load_task(config.task).name)
    if run_dir.exists() and finished_run(run_dir) is None:
        number = 1
        while run_dir.with_name(f"{run_dir.name}.interrupted-{number}").exists():
            number += 1
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.interrupted-{number}"))


def finetune_in_workers(configs: list[FinetuneConfig], workers: int, on_result: Callable[[FinetuneResult], None],
                        on_steps: Callable[[int], None] | None = None) -> list[FinetuneResult]:
    """Every run of ``configs``, ``workers`` at a time in fresh processes of one thread each; ``on_result`` sees each
    result as it comes, ``on_steps`` the optimiser steps done since the last call. Ctrl-C or SIGTERM stops every
    worker's run cleanly (its records closed) before ``KeyboardInterrupt`` goes on."""
    results: list[FinetuneResult] = []
    context = get_context("spawn")  # fresh interpreters: no forked torch thread pools
    steps = context.SimpleQueue()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker,
                             initargs=(steps,)) as pool:
        pending = {pool.submit(_finetune_one, one) for one in configs}
        try:
            while pending:
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                counted = 0
                while not steps.empty():
                    counted += steps.get()
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

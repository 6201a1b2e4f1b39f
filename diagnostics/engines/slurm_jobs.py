"""The ``slurm`` engine: the unfinished runs as one SLURM job array, submitted through submitit.

The array (``map_array``) runs at most ``--workers`` runs at a time (``slurm_array_parallelism``), each job with the
run's threads as CPUs, ``--slurm-time`` minutes, one GPU with ``--device cuda`` (or ``--slurm-gpus``), the
partition and any ``--slurm-option key=value`` passed to sbatch. A job preempted or out of time is requeued
(submitit's ``checkpoint``): the run restarts in a fresh folder, its unfinished one kept as ``<run>.interrupted-N``
(restarting is cheap next to keeping optimizer checkpoints of every run). Which job runs which run is kept in
``ROOT/slurm/jobs.json`` beside submitit's logs: with ``--no-wait`` the command submits and exits, and the same
command run again submits nothing that is still queued or running, waits for it (or exits again with
``--no-wait``) and collects every outcome from the run folders. ``--slurm-cluster local`` (a real subprocess per
job) and ``debug`` (in this process) run the same code without a SLURM cluster.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import submitit

from diagnostics.engines.engine import Engine, EngineError, OnResult, OnSteps
from diagnostics.finetune import FinetuneConfig, FinetuneResult, finished_run, run
from diagnostics.quiet import quiet_transformers
from diagnostics.tasks import load_task
from diagnostics.worker_pool import set_aside_unfinished

JOBS = "jobs.json"
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "UNKNOWN"}
KNOWN = {"partition": "slurm_partition", "gpus_per_node": "gpus_per_node"}  # the rest go to sbatch as they are
POLL_S = 5.0


class RunJob:
    """The array's function: one run. On preemption or timeout submitit calls ``checkpoint``, which requeues the
    same run; the restarted job sets the unfinished folder aside and starts afresh."""

    def __call__(self, config: FinetuneConfig) -> FinetuneResult:
        quiet_transformers()
        set_aside_unfinished(config)
        return run(config)

    def checkpoint(self, config: FinetuneConfig) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self, config)


def executor(engine: Engine, folder: Path, threads: int, cuda: bool) -> submitit.AutoExecutor:
    """submitit's executor for ``engine.slurm_cluster`` with the scheduler's options."""
    chosen = submitit.AutoExecutor(folder=folder / "%j", cluster=engine.slurm_cluster)
    options = dict(engine.slurm_options)
    parameters = {KNOWN[key]: options.pop(key) for key in list(options) if key in KNOWN}
    if cuda:
        parameters.setdefault("gpus_per_node", 1)
    if "gpus_per_node" in parameters:
        parameters["gpus_per_node"] = int(parameters["gpus_per_node"])
    chosen.update_parameters(timeout_min=engine.timeout_min, cpus_per_task=threads, name="finetune",
                             slurm_array_parallelism=engine.workers, slurm_additional_parameters=options,
                             **parameters)
    return chosen


def finetune_all(configs: list[FinetuneConfig], engine: Engine, on_result: OnResult,
                 on_steps: OnSteps | None = None) -> list[FinetuneResult] | None:
    """Submit the unfinished runs that no job is running yet, then (unless ``engine.no_wait``) wait for every job
    and return every run's result; None when jobs were left queued or running."""
    if not configs:
        return []
    folder = Path(os.path.commonpath([str(Path(one.out).resolve()) for one in configs])) / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    ledger = _read(folder / JOBS)
    dirs = {str(one.run_dir(load_task(one.task).name).resolve()): one for one in configs}
    todo = {path: one for path, one in dirs.items() if finished_run(Path(path)) is None}
    flying = {path: ledger[path] for path in todo if path in ledger and _active(ledger[path], engine, folder)}
    new = [one for path, one in todo.items() if path not in flying]
    jobs = []
    if new:
        jobs = executor(engine, folder, max(one.threads or 1 for one in new),
                        any(one.device == "cuda" for one in new)).map_array(RunJob(), new)
        ledger.update({path: job.job_id for path, job in zip([p for p in todo if p not in flying], jobs)})
        _write(folder / JOBS, ledger)
    if engine.no_wait and (jobs or flying):
        print(f"{len(jobs)} runs submitted, {len(flying)} still queued or running from before; logs in {folder}; "
              "run the same command again to collect and report", file=sys.stderr)
        return None
    results, errors = [], []
    for path, one in dirs.items():
        if path not in todo:
            results.append(run(one))  # finished before: read from its folder
            on_result(results[-1])
    for job, one in zip(jobs, new):  # in order: exception() waits, where the DebugExecutor's done() would start pdb
        error = job.exception()
        if error is None:
            results.append(job.result())
            if on_steps:
                on_steps(results[-1].steps)
            on_result(results[-1])
        else:
            errors.append(f"{one.run_dir(load_task(one.task).name).name} (job {job.job_id}): "
                          f"{_last_line(error)}")
    for path in flying:
        _wait(ledger[path], engine, folder, Path(path))
        if finished_run(Path(path)) is None:
            errors.append(f"{Path(path).name} (job {ledger[path]}): the job ended without finishing the run")
            continue
        results.append(run(dirs[path]))
        on_result(results[-1])
    if errors:
        raise EngineError(f"{len(errors)} of {len(dirs)} runs failed in their jobs, first {errors[0]}; the logs are "
                          f"in {folder}, the other runs are kept")
    return results


def _active(job_id: str, engine: Engine, folder: Path) -> bool:
    """Whether the job is still queued or running: the scheduler's state on SLURM, the process on this machine."""
    if engine.slurm_cluster == "local":
        try:
            os.kill(int(job_id), 0)
        except (ProcessLookupError, ValueError):
            return False
        return True
    if engine.slurm_cluster == "slurm":
        return submitit.SlurmJob(folder / job_id.split("_")[0], job_id).state.split()[0] in ACTIVE
    return False  # a debug job ran inside the command that submitted it


def _wait(job_id: str, engine: Engine, folder: Path, run_dir: Path) -> None:
    """Wait until the run of an earlier submission is finished or its job has ended."""
    while finished_run(run_dir) is None and _active(job_id, engine, folder):
        time.sleep(POLL_S)


def _last_line(error: BaseException) -> str:
    """The last non-empty line of a job's error: the exception itself, under submitit's traceback."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def _read(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(path: Path, ledger: dict[str, str]) -> None:
    """Written whole, then renamed: a reader never sees half of it."""
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(ledger, indent=1))
    os.replace(partial, partial.with_suffix(""))

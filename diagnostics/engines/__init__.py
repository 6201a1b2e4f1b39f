"""Where the runs of a study or a seed bank execute: ``local`` (the default: our own process pool, needs nothing),
``ray`` (a Ray cluster, joined or started here) or ``slurm`` (a job array submitted through submitit).

    engine = from_args(args)                          # after add_arguments(parser)
    check(engine, out)                                # one-line refusals before any run starts
    results = finetune_all(configs, engine, on_result, on_steps)   # None: submitted, not waited for (--no-wait)

Every engine runs the same :func:`diagnostics.finetune.run` on the same configs into the same run folders under
``--out``, so the records and the report do not depend on the engine (timings aside). Ray and submitit are imported
only by :mod:`diagnostics.engines.ray_cluster` and :mod:`diagnostics.engines.slurm_jobs`, and only when chosen.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path
from typing import Callable

from diagnostics.engines.engine import ENGINES, EXTRA, Engine, EngineError, OnResult, OnSteps
from diagnostics.finetune import FinetuneConfig, FinetuneResult

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine options of ``study`` and ``seed_bank`` (``--workers`` is each command's own)."""
    group = parser.add_argument_group("engine (docs/many-machines.md)")
    group.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: processes on this machine (default); ray: a Ray cluster; slurm: a job array")
    group.add_argument("--ray-address", metavar="HOST:PORT",
                       help="join this Ray cluster (default: RAY_ADDRESS if set, else start one here)")
    group.add_argument("--retries", type=int, default=2,
                       help="ray: times a run whose worker died is restarted (into a fresh folder)")
    group.add_argument("--slurm-partition", help="slurm: the partition")
    group.add_argument("--slurm-time", type=int, default=60, metavar="MINUTES", help="slurm: time limit of a run")
    group.add_argument("--slurm-gpus", type=int, help="slurm: GPUs per run (default: 1 with --device cuda)")
    group.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                       help="slurm: any sbatch option, e.g. account=my-lab or qos=low (repeatable)")
    group.add_argument("--slurm-cluster", choices=("slurm", "local", "debug"), default="slurm",
                       help="slurm: try the same path on this machine (submitit's LocalExecutor or DebugExecutor)")
    group.add_argument("--no-wait", action="store_true",
                       help="slurm: submit and exit; the same command run again collects and reports")


def from_args(args: argparse.Namespace) -> Engine:
    """The engine the command line asks for; a malformed ``--slurm-option`` is an :class:`EngineError`."""
    options = {}
    for option in args.slurm_option:
        key, equals, value = option.partition("=")
        if not equals or not key:
            raise EngineError(f"--slurm-option {option!r} is not KEY=VALUE; write e.g. --slurm-option account=my-lab")
        options[key.strip().lstrip("-").replace("-", "_")] = value
    if args.slurm_partition:
        options["partition"] = args.slurm_partition
    if args.slurm_gpus is not None:
        options["gpus_per_node"] = str(args.slurm_gpus)
    if args.retries < 0 or args.slurm_time < 1:
        raise EngineError("--retries must be >= 0 and --slurm-time >= 1 minute")
    if args.no_wait and args.engine != "slurm":
        raise EngineError("--no-wait submits SLURM jobs: use it with --engine slurm")
    return Engine(args.engine, args.workers, args.ray_address, args.retries, args.slurm_cluster, options,
                  args.slurm_time, args.no_wait)


def check(engine: Engine, out: Path) -> None:
    """Refuse, in one line and before any run starts, an engine that is not installed, a Ray cluster that cannot be
    reached or a SLURM engine without ``sbatch``."""
    module = {"ray": "ray", "slurm": "submitit"}.get(engine.name)
    if module and importlib.util.find_spec(module) is None:
        raise EngineError(f"--engine {engine.name} needs {module}, which is not installed: {EXTRA}")
    if engine.name == "ray":
        from diagnostics.engines import ray_cluster

        ray_cluster.check(engine, out)
    if engine.name == "slurm" and engine.slurm_cluster == "slurm" and shutil.which("sbatch") is None:
        raise EngineError("--engine slurm submits with sbatch, which is not on this machine: run the command on the "
                          "cluster's login node (or try the same path here with --slurm-cluster local)")


def finetune_all(configs: list[FinetuneConfig], engine: Engine, on_result: OnResult,
                 on_steps: OnSteps | None = None,
                 on_message: Callable[[str], None] | None = None) -> list[FinetuneResult] | None:
    """Every run of ``configs`` on ``engine``; ``on_result`` sees each result as it comes, ``on_steps`` the optimiser
    steps done since its last call, ``on_message`` the lines the local engine's runs log (a cluster's runs log to
    the cluster's own logs). None when the runs were submitted without waiting (``--no-wait``)."""
    if engine.name == "ray":
        from diagnostics.engines import ray_cluster

        return ray_cluster.finetune_all(configs, engine, on_result, on_steps)
    if engine.name == "slurm":
        from diagnostics.engines import slurm_jobs

        return slurm_jobs.finetune_all(configs, engine, on_result, on_steps)
    from diagnostics.worker_pool import finetune_in_workers

    return finetune_in_workers(configs, engine.workers, on_result, on_steps, on_message)

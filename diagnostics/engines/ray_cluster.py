"""The ``ray`` engine: one plain Ray task per run, on a cluster joined (``--ray-address``, or ``auto`` when
``RAY_ADDRESS`` is set) or started on this machine with ``--workers`` CPUs.

Plain tasks rather than Ray Tune: a run is one function call whose records go to its own folder, Ray's retries
(``max_retries``) restart a run whose worker died, and ``ray.cancel`` stops one; Tune's trial folders, checkpoints
and schedulers would duplicate what the run folders and :mod:`diagnostics.stop_early` already do. Each task asks
for the run's threads as CPUs and one GPU with ``--device cuda``. Before any run, a task on every node checks that
it sees ``--out`` (a file the driver wrote there) and can write there. Optimiser steps come back through a Ray
queue for the progress bar. Ctrl-C cancels the tasks (each run closes its records) and waits for them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Iterator

import ray
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from diagnostics.engines.engine import Engine, EngineError, OnResult, OnSteps
from diagnostics.finetune import FinetuneConfig, FinetuneResult, run
from diagnostics.quiet import quiet_transformers
from diagnostics.worker_pool import set_aside_unfinished

OBJECT_STORE = 200 * 1024 ** 2  # a cluster started here moves configs and results only: the minimum is plenty
SHARE = "put --out on storage every node mounts at the same path (NFS, Lustre, ...)"
CANCEL_WAIT_S = 120  # how long Ctrl-C waits for the cancelled runs to close their records


@ray.remote(num_cpus=1)
def finetune_task(config: FinetuneConfig, steps: Queue) -> FinetuneResult:
    """One run in a Ray worker; a retried run first sets its predecessor's folder aside as
    ``<run>.interrupted-N``."""
    quiet_transformers()
    set_aside_unfinished(config)
    return run(config, on_step=lambda: steps.put_nowait(1))


@ray.remote(num_cpus=0)
def sees(path: str, token: str) -> str | None:
    """None when this node reads ``token`` from ``path`` and can write an HDF5 file beside it; else the one-line
    error, naming the node."""
    import h5py

    host, out = socket.gethostname(), Path(path).parent
    unshared = f"--out {out} is not shared with the Ray workers: {host}"
    try:
        if Path(path).read_text() != token:
            return f"{unshared} finds another file there; {SHARE}"
        with h5py.File(f"{path}.{host}.h5", "w"):  # locks the file as a run's records do
            pass
        os.remove(f"{path}.{host}.h5")
    except OSError as error:
        if "lock" in str(error).lower():
            return (f"{host} cannot lock HDF5 files in {out} ({str(error).splitlines()[0]}); set "
                    "HDF5_USE_FILE_LOCKING=FALSE where you start the command (each records file has one writer)")
        return f"{unshared} cannot use it ({error.strerror or error}); {SHARE}"
    return None


def address(engine: Engine) -> str | None:
    """The cluster to join: ``--ray-address``, else ``auto`` when ``RAY_ADDRESS`` is set, else None (start one)."""
    return engine.ray_address or ("auto" if os.environ.get("RAY_ADDRESS") else None)


def check(engine: Engine, out: Path) -> None:
    """Refuse an explicit ``--ray-address`` that nothing answers on, before Ray spends a minute retrying it."""
    if not engine.ray_address or engine.ray_address == "auto":
        return
    host, _, port = engine.ray_address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or "no answer"
        raise EngineError(f"no Ray cluster answers at --ray-address {engine.ray_address} ({reason}); start one "
                          "with `ray start --head` or drop --ray-address to start one here") from None


@contextlib.contextmanager
def connected(engine: Engine) -> Iterator[None]:
    """Ray initialised for the block (joined or started), shut down after unless it was already initialised."""
    if ray.is_initialized():
        yield
        return
    joining = address(engine)
    # "local": a cluster of its own, even where an earlier one left its address in /tmp/ray
    options = dict(address=joining) if joining else dict(address="local", num_cpus=engine.workers,
                                                          object_store_memory=OBJECT_STORE)
    if "HDF5_USE_FILE_LOCKING" in os.environ:  # the workers of a joined cluster do not inherit this environment
        options["runtime_env"] = {"env_vars": {"HDF5_USE_FILE_LOCKING": os.environ["HDF5_USE_FILE_LOCKING"]}}
    try:
        ray.init(**options, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as error:
        raise EngineError(f"cannot join the Ray cluster at {joining}: {str(error).splitlines()[0]}; check "
                          "--ray-address (or RAY_ADDRESS)") from None
    try:
        yield
    finally:
        ray.shutdown()


def check_shared(out: Path) -> None:
    """Every alive node must see ``out``: the driver writes a token there and a task pinned to each node reads it."""
    out.mkdir(parents=True, exist_ok=True)
    probe = out.resolve() / f".shared-{uuid.uuid4().hex}"
    token = uuid.uuid4().hex
    probe.write_text(token)
    try:
        nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        answers = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                           .remote(str(probe), token) for node in nodes])
    finally:
        probe.unlink()
    wrong = [answer for answer in answers if answer]
    if wrong:
        raise EngineError(wrong[0])


def finetune_all(configs: list[FinetuneConfig], engine: Engine, on_result: OnResult,
                 on_steps: OnSteps | None = None) -> list[FinetuneResult]:
    """Every run as a Ray task (retried ``engine.retries`` times if its worker dies); results in completion order."""
    results: list[FinetuneResult] = []
    if not configs:
        return results
    with connected(engine):
        check_shared(Path(os.path.commonpath([str(Path(one.out).resolve()) for one in configs])))
        steps = Queue(actor_options={"num_cpus": 0})
        pending = {finetune_task.options(num_cpus=one.threads or 1, num_gpus=int(one.device == "cuda"),
                                         max_retries=engine.retries).remote(one, steps): one for one in configs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                _count(steps, on_steps)
                for ref in done:
                    config = pending.pop(ref)
                    results.append(_result(ref, config, engine))
                    on_result(results[-1])
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)  # KeyboardInterrupt inside the task: its records are closed
            if pending:
                ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
            raise
        _count(steps, on_steps)
    return results


def _count(steps: Queue, on_steps: OnSteps | None) -> None:
    """Hand the optimiser steps queued by the tasks since the last call to ``on_steps``."""
    counted = sum(steps.get_nowait_batch(steps.qsize())) if steps.qsize() else 0
    if on_steps and counted:
        on_steps(counted)


def _result(ref, config: FinetuneConfig, engine: Engine) -> FinetuneResult:
    """The task's result; a run's own error is raised as itself, a worker that died every time as one line."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        raise error.cause from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as error:
        raise EngineError(f"run {config.task}-{config.recipe}-s{config.seed}: its Ray worker died "
                          f"{engine.retries + 1} times ({type(error).__name__}); its folders are kept as "
                          "<run>.interrupted-N, see the Ray logs") from None

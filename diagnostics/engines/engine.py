"""What an engine is: its options (:class:`Engine`), its one-line refusal (:class:`EngineError`) and the callbacks
every engine reports through; the engines themselves (:mod:`diagnostics.engines`, ``ray_cluster``,
``slurm_jobs``) build on this.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from diagnostics.finetune import FinetuneResult

ENGINES = ("local", "ray", "slurm")
EXTRA = 'pip install -e ".[distributed]"'
OnResult = Callable[[FinetuneResult], None]
OnSteps = Callable[[int], None]


class EngineError(ValueError):
    """An engine that cannot be used as asked; the message is one line naming the fix."""


@dataclass
class Engine:
    """The engine and its options. ``workers``: runs at a time (local pool; the size of a Ray cluster started
    here; SLURM's ``--array`` parallelism). ``slurm_cluster``: ``slurm``, or ``local``/``debug`` to try the same
    code path on one machine (submitit's LocalExecutor and DebugExecutor)."""

    name: str = "local"
    workers: int = 2
    ray_address: str | None = None
    retries: int = 2
    slurm_cluster: str = "slurm"
    slurm_options: dict[str, str] = field(default_factory=dict)
    timeout_min: int = 60
    no_wait: bool = False

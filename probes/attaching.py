"""``probes.attach``: the one call that puts probes on a run, whatever wraps the model and the optimiser.

It unwraps DDP / DataParallel models and Accelerate optimisers (finding an Accelerate GradScaler on the way), finds
the model's layers, makes the records writer on rank 0 (from a path) or adopts the caller's, and opens a
:class:`probes.session.ProbeSession` (a context manager: leaving it flushes, removes every hook and closes a writer
it made). Example: ``with probes.attach(model, optimizer, "runs/run.h5") as session: ...``.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import torch
from torch import nn

from probes.records import RunMeta, RunWriter
from probes import distributed
from probes.activation_gradients import ActivationGradients
from probes.base import Probe
from probes.gradient_norms import GradientNorms
from probes.model.layers import find_layers
from probes.optimizer_audit import audit_optimizer
from probes.schedule import Schedule
from probes.session import ProbeSession


def attach(model: nn.Module, optimizer: torch.optim.Optimizer, writer: RunWriter | str | os.PathLike | None, *,
           schedule: Schedule | None = None, probes: Sequence[Probe] | None = None, blocks: str | None = None,
           scaler: Any = None, start_step: int = 0, flush_every: int = 50, strict: bool = False,
           post_clip: bool = True, meta: RunMeta | None = None, warmup_steps: int | None = None,
           total_steps: int | None = None) -> ProbeSession:
    """Attach probes (default: gradient norms and activation gradients) to a run; returns the open session.

    ``writer``: a :class:`RunWriter` not yet started (the probes declare their series, then the session starts it
    and leaves it open), a path for a new records file (closed with the session), or None to record nothing. On
    ranks other than 0 it is ignored. ``blocks`` names the encoder ModuleList of a model not found automatically;
    ``scaler`` is the GradScaler of an AMP loop (found by itself on an Accelerate optimiser). ``post_clip=False``
    skips the post-clipping total (a second pass over the gradients, ~2% of a BERT-base step on a CPU).
    The optimiser is audited first (:mod:`probes.optimizer_audit`; ``warmup_steps``/``total_steps`` tell it the
    schedule when no torch LR scheduler does): each problem is a warning at once, and the audit is stored as the
    records' ``optimizer_audit`` attribute.
    """
    inner = distributed.unwrap_model(model)
    chosen = list(probes) if probes is not None else [GradientNorms(), ActivationGradients()]
    session = ProbeSession(inner, distributed.unwrap_optimizer(optimizer), None, chosen, schedule or Schedule(),
                           find_layers(inner, blocks), scaler=distributed.scaler_of(optimizer, scaler),
                           start_step=start_step, flush_every=flush_every, strict=strict, post_clip=post_clip)
    if session.rank == 0 and isinstance(writer, RunWriter):
        session.writer = writer
    elif session.rank == 0 and writer is not None:
        session.writer = RunWriter.create(writer, meta or RunMeta(model=type(inner).__name__))
        session.owns_writer = True
    audit = audit_optimizer(session.optimizer, warmup_steps, total_steps)
    if session.rank == 0:
        for problem in audit["warnings"]:
            warnings.warn(f"optimiser audit: {problem}", UserWarning, stacklevel=2)
        if session.writer is not None and not session.writer.started:
            session.writer.set_attribute("optimizer_audit", audit)
    return session.open()

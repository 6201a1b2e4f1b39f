"""``probes.attach``: the one call that puts probes on a run, whatever wraps the model and the optimiser.

It refuses, in one line, a wrapper whose gradients it cannot read exactly (FSDP1 CPU offload, DeepSpeed stage 0...),
unwraps DDP / DataParallel / FSDP1 / DeepSpeed models and Accelerate / ZeRO optimisers (finding an Accelerate
GradScaler or ZeRO's fp16 loss scale on the way), finds the model's layers, makes the records writer on rank 0
(from a path) or adopts the caller's, and opens a :class:`probes.session.ProbeSession` (a context manager: leaving
it flushes, removes every hook and closes a writer it made). Example:
``with probes.attach(model, optimizer, "runs/run.h5") as session: ...``.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import torch
from torch import nn

from probes.records import RunMeta, RunWriter
from probes import distributed, zero
from probes.activation_gradients import ActivationGradients
from probes.base import Probe
from probes.early_failure.domain import ATTRIBUTE, architecture
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
    records' ``optimizer_audit`` attribute; a Hugging Face model's ``architecture`` (type, layers, width, classes)
    is stored beside it.
    """
    distributed.refuse_unsupported(model, optimizer)
    inner = distributed.unwrap_model(model)
    chosen = list(probes) if probes is not None else [GradientNorms(), ActivationGradients()]
    layers = find_layers(inner, blocks)
    rank = distributed.rank_and_world()[0]
    owns_writer = rank == 0 and writer is not None and not isinstance(writer, RunWriter)
    if rank != 0:
        writer = None
    elif owns_writer:
        writer = RunWriter.create(writer, meta or RunMeta(model=type(inner).__name__))
    unwrapped = distributed.unwrap_optimizer(optimizer)
    zeroed = zero.zero_optimizer(optimizer)  # DeepSpeed's ZeRO optimiser, None without DeepSpeed
    audit = audit_optimizer(unwrapped, warmup_steps, total_steps)
    if rank == 0:
        for problem in audit["warnings"]:
            warnings.warn(f"optimiser audit: {problem}", UserWarning, stacklevel=2)
        if writer is not None and not writer.started:
            writer.set_attribute("optimizer_audit", audit)
            if architecture(inner) is not None:  # what the early-failure predictor's domain check reads
                writer.set_attribute(ATTRIBUTE, architecture(inner))
    session = ProbeSession(inner, unwrapped, writer, chosen, schedule or Schedule(), layers,
                           scaler=distributed.scaler_of(optimizer, scaler) or zero.loss_scale(zeroed),
                           start_step=start_step, flush_every=flush_every, strict=strict, post_clip=post_clip,
                           owns_writer=owns_writer, zero=zeroed)
    return session.open()  # a failure to open removes the file the session was given to own

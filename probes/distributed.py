"""What probes need from torch.distributed and the wrappers around a model or optimiser (DDP, Accelerate).

Collectives run only at a flush, once per block, never per step: per-rank quantities (activation gradients, the
loss) and sharded ones (FSDP2 and FSDP1 gradients, :mod:`probes.fsdp`) are combined there. Replicated gradients
(DDP after its all-reduce) are the same on every rank and need no collective; DeepSpeed ZeRO's partitioned ones are
read through :mod:`probes.zero`. :func:`refuse_unsupported` names, in
one line, what probes cannot yet measure exactly, rather than record wrong numbers.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from probes import fsdp, zero

SUPPORTED = ("DDP, FSDP2 (fully_shard), FSDP1 (FULL_SHARD or SHARD_GRAD_OP), DeepSpeed ZeRO 1/2/3, Accelerate and "
             "the Trainer on those")


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel wrappers (their ``.module``), else ``model``."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The innermost torch optimiser inside wrappers (their ``.optimizer``): Accelerate's ``AcceleratedOptimizer``,
    DeepSpeed's ZeRO optimiser; ``optimizer`` itself without one."""
    inner = found = optimizer
    while getattr(inner, "optimizer", None) is not None:
        inner = inner.optimizer
        if isinstance(inner, torch.optim.Optimizer):
            found = inner
    return found


def scaler_of(optimizer: torch.optim.Optimizer, scaler=None):
    """The enabled GradScaler that scales this run's gradients: the one given, else an Accelerate wrapper's."""
    scaler = scaler if scaler is not None else getattr(optimizer, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def refuse_unsupported(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Raise a one-line ``ValueError`` for a wrapper whose gradients probes cannot yet read exactly."""
    zero.refuse_unsupported(model, optimizer)
    fsdp.refuse_unsupported(model)


def named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter | fsdp.LocalPart | zero.ZeroPart]]:
    """``(name, parameter)`` of the trainable parameters probes read: the model's own, or each parameter's part of
    this rank's shard under FSDP1 (under its original name, :mod:`probes.fsdp`) or under ZeRO (:mod:`probes.zero`)."""
    parts = fsdp.named_parameters(model)
    if parts is None:
        parts = zero.named_parameters(model)
    return parts if parts is not None else [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def is_sharded(params: list[nn.Parameter]) -> bool:
    """Whether parameters are sharded across ranks (FSDP2 ``DTensor`` parameters, FSDP1 flattened ones, ZeRO
    partitions)."""
    return any(hasattr(param, "to_local") or fsdp.is_flattened(param) or zero.is_part(param) for param in params)


def sum_norms_(block: torch.Tensor, world: int) -> None:
    """Norms of parts spread over ranks -> norms of the whole: root of the summed squares, in place."""
    if world > 1:
        squares = block.double().square()
        dist.all_reduce(squares)
        block.copy_(squares.sqrt())


def mean_(block: torch.Tensor, world: int) -> None:
    """Average ``block`` over ranks, in place."""
    if world > 1:
        dist.all_reduce(block)
        block.div_(world)

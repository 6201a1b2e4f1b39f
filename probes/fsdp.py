"""FSDP1 (``FullyShardedDataParallel``) for probes: each original parameter's part of this rank's gradient shard.

FSDP1 flattens the parameters of each wrapped unit into one ``FlatParameter`` and gives every rank a contiguous
slice of it. At the end of the backward each rank holds the reduce-scattered gradient of its slice only, so a
parameter's gradient is spread over ranks, and parts of it may be absent on some. Probes read, per original
parameter, the part in this rank's slice and sum the squares across ranks once per flush (the same collective as
FSDP2's sharded ``DTensor`` gradients, :func:`probes.distributed.sum_norms_`), which gives the norm of the whole.

* ``use_orig_params=True``: FSDP itself makes each original parameter (and its ``.grad``) a 1-D view of its part of
  the local shard (empty or None when the part is on another rank); only the names need cleaning.
* ``use_orig_params=False``: the model holds only ``FlatParameter`` s; :class:`LocalPart` stands for one original
  parameter, with ``.grad`` and ``.detach()`` as views of its part of the flat gradient and of the local shard,
  found from the flat parameter's own shard metadata (``_shard_param_infos``; offsets include FSDP's padding).

Supported, and tested under torchrun on gloo against one process: sharding strategies FULL_SHARD and SHARD_GRAD_OP,
both ``use_orig_params`` settings. Refused in one line by :func:`refuse_unsupported` until tested: NO_SHARD and the
hybrid strategies (replicated or two-level gradients), CPU offload (this CPU build of torch cannot run it), ignored
modules (their gradients are never reduced).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
FLAT = "_flat_param"
SUPPORTED = ("FULL_SHARD", "SHARD_GRAD_OP")


class LocalPart:
    """This rank's part of one original parameter inside a ``FlatParameter`` (``use_orig_params=False``)."""

    _fsdp_flattened = True  # a sharded part, as FSDP marks its own flattened tensors

    def __init__(self, flat: nn.Parameter, info) -> None:
        self.flat = flat
        self.start, self.length = (info.offset_in_shard, info.numel_in_shard) if info.in_shard else (0, 0)

    @property
    def grad(self) -> torch.Tensor | None:
        """The part of the flat parameter's (sharded, reduced) gradient that belongs to this parameter."""
        grad = self.flat.grad
        return None if grad is None else grad.narrow(0, self.start, self.length)

    @property
    def device(self) -> torch.device:
        return self.flat.device

    def detach(self) -> torch.Tensor:
        """The part of the local shard of weights (the tensor the optimiser updates) that is this parameter."""
        shard = getattr(self.flat, "_local_shard", self.flat)  # FSDP sets _local_shard at its first forward
        return shard.detach().narrow(0, self.start, self.length)


def fsdp1_units(model: nn.Module) -> list[nn.Module]:
    """The ``FullyShardedDataParallel`` modules in ``model`` (itself included); empty without FSDP1."""
    if not torch.distributed.is_available():
        return []
    from torch.distributed.fsdp import FullyShardedDataParallel

    return [module for module in model.modules() if isinstance(module, FullyShardedDataParallel)]


def refuse_unsupported(model: nn.Module) -> None:
    """Raise a one-line ``ValueError`` for an FSDP1 setting whose norms probes do not yet give exactly."""
    for unit in fsdp1_units(model):
        if unit.cpu_offload.offload_params:
            raise ValueError("probes do not support FSDP1 with CPU offload (untested: this CPU build of torch cannot "
                             "run it); use CPUOffload(offload_params=False), or FSDP2 (fully_shard)")
        if getattr(unit, "_ignored_params", None):
            raise ValueError("probes do not support FSDP1 with ignored_modules / ignored_states (their gradients "
                             "are never reduced across ranks); wrap every trainable parameter")
        strategy = unit.sharding_strategy.name
        if strategy not in SUPPORTED:
            raise ValueError(f"probes do not support FSDP1 with sharding_strategy={strategy}; use FULL_SHARD or "
                             f"SHARD_GRAD_OP, or DDP for replicated gradients")


def is_flattened(param) -> bool:
    """Whether ``param`` is an FSDP1 flattened tensor or a part of one (its gradient is sharded)."""
    return bool(getattr(param, "_fsdp_flattened", False))


def named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter | LocalPart]] | None:
    """``(original name, parameter or local part)`` of every trainable parameter in the model's original order,
    under FSDP1; None for a model without ``FlatParameter`` s or FSDP1's original-parameter views."""
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if not any(is_flattened(param) for _, param in named):
        return None
    if not any(name.endswith(FLAT) for name, _ in named):  # use_orig_params=True: views, in the original order
        return [(clean(name), param) for name, param in named]
    order = {id(module): index for index, module in enumerate(model.modules())}
    parts = sorted(_flat_parts(named), key=lambda part: (order.get(id(part[0]), -1), part[1]))
    return [(name, local_part) for _, _, name, local_part in parts]


def clean(name: str) -> str:
    """A parameter name without FSDP1's (and activation checkpointing's) wrapper prefixes."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _flat_parts(named) -> Iterator[tuple[nn.Module, int, str, LocalPart]]:
    """``(owning module, position, original name, local part)`` for every parameter in every flat parameter."""
    for name, flat in named:
        if not name.endswith(FLAT):
            raise ValueError(f"probes cannot read {name!r}: a trainable parameter outside FSDP1's flat parameters; "
                             f"wrap the whole model in FullyShardedDataParallel")
        prefix = clean(name[: -len(FLAT)])
        for position, (fqn, info, param_info) in enumerate(zip(flat._fqns, flat._shard_param_infos,
                                                               flat._param_infos)):
            yield param_info.module, position, prefix + fqn, LocalPart(flat, info)

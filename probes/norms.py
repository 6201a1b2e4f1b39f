"""Device-side norm maths for probes: fused per-tensor L2 norms, no host synchronisation (pure functions).

Norms, not squared norms, are what the buffers hold: a squared gradient norm of 1e-25 underflows in float32 while
the norm does not. Sums of squares are formed in float64 on the host (:meth:`ParameterTable.layer_norms`) or across
ranks in :mod:`probes.distributed`. Sharded tensors (FSDP2 ``DTensor``) contribute their local shard.
"""
from __future__ import annotations

from typing import Sequence

import torch


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` held by this rank (a ``DTensor``'s local shard, else the tensor itself)."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def tensor_norms(tensors: Sequence[torch.Tensor | None], device: torch.device) -> torch.Tensor:
    """``(len(tensors),)`` float32 L2 norms in one fused pass; a missing tensor (None) counts as zero."""
    present = [i for i, tensor in enumerate(tensors) if tensor is not None]
    norms = torch.zeros(len(tensors), dtype=torch.float32, device=device)
    if not present:
        return norms
    values = torch.stack(torch._foreach_norm([local(tensors[i]) for i in present], 2, dtype=torch.float32))
    if len(present) == len(tensors):
        return values.to(device)
    return norms.index_copy_(0, torch.tensor(present, device=device), values.to(device))


def total_norm(norms: torch.Tensor) -> torch.Tensor:
    """The L2 norm of everything whose per-part norms are ``norms`` (0-d tensor)."""
    return torch.linalg.vector_norm(norms.double()).float()


def combine(previous: torch.Tensor, new: torch.Tensor, first: bool) -> torch.Tensor:
    """Norm of the concatenation of two parts: ``new`` alone on the first part, else ``hypot(previous, new)``."""
    return new if first else torch.hypot(previous, new)


def versions(tensors: Sequence[torch.Tensor | None]) -> list[int]:
    """The in-place change counter of each tensor (-1 for a missing one): what changed them since is told by
    comparing two readings, without touching their values."""
    return [-1 if tensor is None else tensor._version for tensor in tensors]


def rescaled_total(tensors: Sequence[torch.Tensor | None], before: list[int], norms: torch.Tensor,
                   total: torch.Tensor, witnesses: Sequence[int]) -> torch.Tensor | None:
    """The total L2 norm of ``tensors`` now, from their per-tensor ``norms`` and ``total`` when ``before`` (their
    :func:`versions` then) was read, without a pass over them; None when that cannot be known this way.

    Known when nothing changed any tensor in place (the total is unchanged), or when every present tensor was
    changed in place the same number of times, at most twice (``clip_grad_norm_`` multiplies each by one shared
    factor; a GradScaler's unscaling is another), and the ``witnesses`` (indices of small tensors) were all scaled
    by the same factor: the total is then ``total`` times that factor. The witnesses are read on the host, so this
    is for CPU tensors, where reading costs no device synchronisation."""
    changes = {now - then for now, then in zip(versions(tensors), before) if then >= 0}
    if changes == {0}:
        return total
    if len(changes) != 1 or changes.pop() > 2:
        return None
    factors = []
    for index in witnesses:
        if tensors[index] is None or not float(norms[index]) > 0:
            return None
        factors.append(float(torch.linalg.vector_norm(local(tensors[index]), dtype=torch.float32)) / float(norms[index]))
    if not factors or max(factors) - min(factors) > 1e-5 * max(factors):
        return None
    return total * factors[0]

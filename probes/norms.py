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
    """``(len(tensors),)`` float32 L2 norms in one fused pass; a missing tensor (None) counts as zero.

    Two operations whatever the number of tensors (three with a missing one), and no copy from the host, which on
    a GPU would wait for the queued kernels."""
    present = [local(tensor) for tensor in tensors if tensor is not None]
    if not present:
        return torch.zeros(len(tensors), dtype=torch.float32, device=device)
    found = iter(torch._foreach_norm(present, 2, dtype=torch.float32))
    if len(present) == len(tensors):
        return torch.stack(list(found)).to(device)
    zero = torch.zeros((), dtype=torch.float32, device=device)
    return torch.stack([zero if tensor is None else next(found).to(device) for tensor in tensors])


def total_norm(norms: torch.Tensor) -> torch.Tensor:
    """The L2 norm of everything whose per-part norms are ``norms`` (0-d float64: squares of small float32 norms
    would underflow in float32), in one operation."""
    return torch.linalg.vector_norm(norms, dtype=torch.float64)


def combine(previous: torch.Tensor, new: torch.Tensor, first: bool) -> torch.Tensor:
    """Norm of the concatenation of two parts: ``new`` alone on the first part, else ``hypot(previous, new)``."""
    return new if first else torch.hypot(previous, new)


def versions(tensors: Sequence[torch.Tensor | None]) -> list[int]:
    """The in-place change counter of each tensor (-1 for a missing one): what changed them since is told by
    comparing two readings, without touching their values."""
    return [-1 if tensor is None else tensor._version for tensor in tensors]


def scale_factor(tensors: Sequence[torch.Tensor | None], before: list[int], witness_norms: Sequence[float],
                 witnesses: Sequence[int]) -> float | None:
    """The one number every tensor of ``tensors`` was multiplied by in place since ``before`` (their
    :func:`versions` then) was read, without a pass over them: 1.0 when nothing changed any of them, None when it
    cannot be known this way. The total norm now is then the total norm then times that number.

    Known when every present tensor was changed in place the same number of times, at most twice
    (``clip_grad_norm_`` multiplies each by one shared factor; a GradScaler's unscaling is another), and the
    ``witnesses`` (indices of small tensors, whose norms were ``witness_norms`` then) were all scaled by the same
    factor. The witnesses are measured in one fused pass and read on the host, so this is for CPU tensors, where
    reading costs no device synchronisation."""
    changes = {now - then for now, then in zip(versions(tensors), before) if then >= 0}
    if changes == {0}:
        return 1.0
    if len(changes) != 1 or changes.pop() > 2 or not witnesses:
        return None
    if any(tensors[index] is None for index in witnesses) or not all(norm > 0 for norm in witness_norms):
        return None
    now = torch.stack(torch._foreach_norm([local(tensors[index]) for index in witnesses], 2, dtype=torch.float32))
    factors = [norm / then for norm, then in zip(now.tolist(), witness_norms)]
    if max(factors) - min(factors) > 1e-5 * max(factors):
        return None
    return factors[0]

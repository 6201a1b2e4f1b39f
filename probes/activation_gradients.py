"""Activation-gradient norms per depth: the L2 norm of dLoss/d(block output) (kind ``activation_gradients``).

A forward hook on each encoder block registers a tensor hook on the block's output; the tensor hook adds the
gradient's norm to its depth. ALBERT runs one shared block at every depth, so the block's forward hook fires L
times per forward: calls are counted within each forward of the model, the k-th call being depth k. Calls outside
the model's forward (gradient-checkpointing recomputation) are ignored. Micro-batches and DDP ranks are combined
as the norm of the whole step's activation gradient, for the loss averaged over ranks as DDP does (so one process
on the global batch gives the same numbers). Recorded only on scheduled steps: on the others the block hooks only
count calls and register nothing. On a recorded step each depth costs one operation (its norm, in the tensor hook);
the depths are then stacked into the row in one more.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch

from probes import catalogue, distributed
from probes.base import Declared, Probe


class ActivationGradients(Probe):
    """Per-depth L2 norms of the gradient of the loss with respect to each block's output."""

    def bind(self, session) -> None:
        self.depth = session.layers.depth
        self.width = self.depth
        self.modules: dict[int, tuple[torch.nn.Module, list[int]]] = {}
        for depth, block in enumerate(session.layers.blocks, start=1):
            self.modules.setdefault(id(block), (block, []))[1].append(depth)
        self.calls = {key: 0 for key in self.modules}
        self.in_forward = False
        self.pending: list[tuple[int, torch.Tensor]] = []  # (depth, norm) of each block-output gradient seen
        self.zero = torch.zeros((), dtype=torch.float32, device=session.device)

    def series(self) -> list[Declared]:
        return [Declared(catalogue.ACTIVATION_NORMS, [f"encoder.{d}" for d in range(1, self.depth + 1)],
                         {"depth": np.arange(1, self.depth + 1, dtype="f8")},
                         {"norm": "l2", "of": "gradient of the loss with respect to each block's output, over the "
                          "whole step's batch (micro-batches and ranks combined), unscaled"})]

    def attach(self, session) -> None:
        model = session.model
        session.hooks.add(model.register_forward_pre_hook(self._forward_starts), "activation depth counter reset")
        session.hooks.add(model.register_forward_hook(self._forward_ends), "activation depth counter stop")
        for key, (block, _) in self.modules.items():
            hook = partial(self._block_output, session, key)
            session.hooks.add(block.register_forward_hook(hook), "activation gradient of a block output")

    def on_backward(self, session, row: torch.Tensor, first: bool) -> None:
        pending, self.pending = self.pending, []
        scale = session.loss_scale
        norms = self._depth_norms(pending, row if first and scale is None else None)
        if scale is not None:
            norms = norms / scale
        if not first:
            torch.hypot(row, norms, out=row)
        elif norms is not row:
            row.copy_(norms)

    def _depth_norms(self, pending: list[tuple[int, torch.Tensor]], out: torch.Tensor | None) -> torch.Tensor:
        """``(depth,)`` norms of the gradients seen per depth (one operation when each depth was seen once; a
        depth seen several times, as when two forwards share one backward, gets the norm of its parts)."""
        by_depth: list[list[torch.Tensor]] = [[] for _ in range(self.depth)]
        for depth, norm in pending:
            by_depth[depth - 1].append(norm)
        parts = [norms[0] if len(norms) == 1 else self._combined(norms) for norms in by_depth]
        return torch.stack(parts) if out is None else torch.stack(parts, out=out)

    def _combined(self, norms: list[torch.Tensor]) -> torch.Tensor:
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else self.zero

    def reduce(self, session, block: torch.Tensor) -> None:
        distributed.sum_norms_(block, session.world)
        block.div_(session.world)

    def _forward_starts(self, module, args) -> None:
        self.in_forward = True
        self.calls = dict.fromkeys(self.calls, 0)

    def _forward_ends(self, module, args, output) -> None:
        self.in_forward = False

    def _block_output(self, session, key: int, module, args, output) -> None:
        if not self.in_forward:
            return
        depths = self.modules[key][1]
        depth = depths[self.calls[key] % len(depths)]
        self.calls[key] += 1
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        if self.live(session) and torch.is_tensor(hidden) and hidden.requires_grad and session.active:
            hidden.register_hook(partial(self._output_grad, depth))

    def _output_grad(self, depth: int, grad: torch.Tensor) -> None:
        self.pending.append((depth, torch.linalg.vector_norm(grad, dtype=torch.float32)))

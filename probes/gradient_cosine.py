"""Cosine between consecutive recorded gradients, per layer (kind ``gradient_cosine``, series ``consecutive``).

Early in a run that will learn, successive minibatch gradients of the encoder share a direction; in one that is
collapsing, the encoder's gradient turns into noise around a flat plateau (cosine near 0) or the head alone drives
it. Per recorded step, inside ``optimizer.step()`` (clipping scales every tensor by one factor, which a cosine does
not see), cos(g_t, g_prev) per layer, where g_prev is the gradient of the previous recorded step: record every
step (``Schedule(every=1)``) to compare consecutive minibatches. The previous gradient is kept in one copy of the
trainable weights' size. NaN on the first recorded step. Single-process only. On the seed bank's 100-seed cell its
change over the early window did not separate the seeds of one configuration (docs/verdicts.md), so the runner
does not record it and the predictor does not read it; it is here for your own banks.
"""
from __future__ import annotations

import numpy as np
import torch

from probes import catalogue
from probes.base import Declared, Probe
from probes.norms import tensor_norms


class GradientCosine(Probe):
    """Per layer, cos(gradient now, gradient at the previous recorded step)."""

    def bind(self, session) -> None:
        if session.sharded:
            raise ValueError("GradientCosine keeps whole gradients: use it in one process (no FSDP or ZeRO)")
        self.table = session.table
        self.count = len(self.table.params)
        self.width = 3 * self.count  # per tensor: g . g_prev, ||g||, ||g_prev||
        self.previous = [torch.zeros_like(param, dtype=torch.float32) for param in self.table.params]

    def series(self) -> list[Declared]:
        return [Declared(catalogue.GRADIENT_COSINE, self.table.layers, {"depth": self.table.layer_depth},
                         {"cosine": "cos(grad at this recorded step, grad at the previous recorded step) per layer",
                          "read_at": "inside optimizer.step(), before the update"})]

    def on_step(self, session, row: torch.Tensor) -> None:
        grads = [torch.zeros_like(previous) if param.grad is None else param.grad.detach().float()
                 for param, previous in zip(self.table.params, self.previous)]
        dots = torch.stack([torch.vdot(now.flatten(), before.flatten()) for now, before in zip(grads, self.previous)])
        row[: self.count] = dots.to(row.device)
        row[self.count: 2 * self.count] = tensor_norms(grads, row.device)
        row[2 * self.count:] = tensor_norms(self.previous, row.device)
        torch._foreach_copy_(self.previous, grads)

    def rows(self, block: np.ndarray) -> list[np.ndarray]:
        dots = self.table.layer_sums(block[:, : self.count])
        now = self.table.layer_norms(block[:, self.count: 2 * self.count])
        before = self.table.layer_norms(block[:, 2 * self.count:])
        with np.errstate(divide="ignore", invalid="ignore"):
            return [dots / (now * before)]

"""Parameter norms and update/weight ratios per layer (kinds ``parameter_norms`` and ``update_ratios``), optional.

On a recorded step the parameters are copied into a snapshot just before ``optimizer.step()`` (the snapshot is
allocated once: it costs one more copy of the trainable weights in memory) and compared after it. Series
``parameters`` holds ||theta_layer|| before the step; series ``updates`` holds ||delta theta_layer|| / ||theta_layer||.
"""
from __future__ import annotations

import numpy as np
import torch

from probes import catalogue, distributed
from probes.base import Declared, Probe
from probes.norms import local, tensor_norms


class ParameterNorms(Probe):
    """Per-layer parameter norms and update/weight ratios on recorded steps."""

    def bind(self, session) -> None:
        self.table = session.table
        self.count = len(self.table.params)
        self.width = 2 * self.count
        self.snapshot = [torch.empty_like(local(param.detach())) for param in self.table.params]

    def series(self) -> list[Declared]:
        axes = {"depth": self.table.layer_depth}
        return [Declared(catalogue.PARAMETER_NORMS, self.table.layers, axes,
                         {"norm": "l2", "read_at": "just before optimizer.step()"}),
                Declared(catalogue.UPDATE_RATIOS, self.table.layers, axes,
                         {"ratio": "||theta_after - theta_before|| / ||theta_before||, per layer"})]

    def on_step(self, session, row: torch.Tensor) -> None:
        weights = [local(param.detach()) for param in self.table.params]
        torch._foreach_copy_(self.snapshot, weights)
        row[: self.count] = tensor_norms(weights, session.device)

    def after_step(self, session, row: torch.Tensor) -> None:
        weights = [local(param.detach()) for param in self.table.params]
        row[self.count:] = tensor_norms(torch._foreach_sub(weights, self.snapshot), session.device)

    def reduce(self, session, block: torch.Tensor) -> None:
        if session.sharded:
            distributed.sum_norms_(block, session.world)

    def rows(self, block: np.ndarray) -> list[np.ndarray]:
        weights = self.table.layer_norms(block[:, : self.count])
        updates = self.table.layer_norms(block[:, self.count:])
        with np.errstate(divide="ignore", invalid="ignore"):
            return [weights, updates / weights]

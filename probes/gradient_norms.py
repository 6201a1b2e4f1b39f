"""Parameter-gradient L2 norms per layer and per parameter tensor (kind ``gradient_norms``).

Series ``layers``: one column per layer of :func:`probes.model.layers.find_layers` (``embeddings``, ``encoder.1`` ...,
``pooler``, ``head``) with a ``depth`` axis; series ``components``: one column per parameter tensor
(``encoder.3/attention.self.query.weight``) with ``depth``, ``layer`` and ``component`` axes, for the papers'
one-matrix-per-layer curves. Both are pre-clipping norms read at the end of the step's last backward (after
accumulation and all-reduce, unscaled from AMP). ALBERT's shared block appears once, as ``encoder.shared``: its
gradient sums over depths (use ``activation_gradients`` for per-depth signals).
"""
from __future__ import annotations

import numpy as np
import torch

from probes import catalogue, distributed
from probes.base import Declared, Probe

ATTRS = {"clipping": "pre", "norm": "l2",
         "read_at": "end of the step's last backward: after accumulation and all-reduce, unscaled, before clipping"}


class GradientNorms(Probe):
    """Per-layer and per-tensor parameter-gradient norms, before clipping."""

    def bind(self, session) -> None:
        self.table = session.table
        self.width = len(self.table.params)

    def series(self) -> list[Declared]:
        table = self.table
        layer_of = [component.split("/")[0] for component in table.components]
        return [Declared(catalogue.LAYER_NORMS, table.layers, {"depth": table.layer_depth}, ATTRS),
                Declared(catalogue.COMPONENT_NORMS, table.components, {
                    "depth": table.component_depth, "layer": np.array(layer_of),
                    "component": np.array(table.component_path)}, ATTRS)]

    def rows(self, block: np.ndarray) -> list[np.ndarray]:
        return [self.table.layer_norms(block), block]

    def on_backward(self, session, row: torch.Tensor, first: bool) -> None:
        row.copy_(session.grad_norms)

    def reduce(self, session, block: torch.Tensor) -> None:
        if session.sharded:
            distributed.sum_norms_(block, session.world)

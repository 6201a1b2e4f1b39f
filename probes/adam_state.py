"""Adam's second moment per layer (kind ``optimizer_state``, series ``second_moment``).

Without bias correction Adam's first steps divide by sqrt(v) while v is still ~(1 - beta2) g^2, so the updates
are ~30x larger than bias-corrected Adam's for beta2 = 0.999 (Mosbach et al. 2020): the mechanism behind failed
runs. Per recorded step, right after ``optimizer.step()``, the L2 norm of ``exp_avg_sq`` (the state name of
``torch.optim.Adam``/``AdamW``, transformers' ``AdamW`` and ``diagnostics.bert_adam.BertAdam``) per layer,
``embeddings`` ... ``head``: per-tensor norms in one fused pass on the device, combined per layer on the host. A
tensor without that state (another optimiser, or no step yet) counts as zero; NaN when a layer has none at all.
"""
from __future__ import annotations

import numpy as np
import torch

from probes import catalogue, distributed, zero
from probes.base import Declared, Probe
from probes.norms import tensor_norms

STATE = "exp_avg_sq"


class AdamSecondMoment(Probe):
    """Per-layer L2 norm of the optimiser's ``exp_avg_sq`` after each recorded step."""

    def bind(self, session) -> None:
        self.table = session.table
        self.width = len(self.table.params)

    def series(self) -> list[Declared]:
        return [Declared(catalogue.SECOND_MOMENT, self.table.layers, {"depth": self.table.layer_depth},
                         {"state": STATE, "norm": "l2", "read_at": "just after optimizer.step()"})]

    def rows(self, block: np.ndarray) -> list[np.ndarray]:
        return [self.table.layer_norms(block)]

    def after_step(self, session, row: torch.Tensor) -> None:
        state = session.optimizer.state
        moments = [param.optimizer_state(STATE) if zero.is_part(param) else state[param].get(STATE)
                   if param in state else None for param in self.table.params]
        if any(moment is not None for moment in moments):
            row.copy_(tensor_norms(moments, session.device))

    def reduce(self, session, block: torch.Tensor) -> None:
        if session.sharded:
            distributed.sum_norms_(block, session.world)

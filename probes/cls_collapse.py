"""Collapse of the training batch's [CLS] representations (kind ``scalars``, series ``cls``).

Before a classifier collapses to one class its input, the last hidden state at the first token, often loses its
diversity first: the batch's [CLS] vectors turn towards one direction (mean pairwise cosine near 1) and span fewer
dimensions (effective rank near 1). A forward hook on the base model's output reads them on the training forwards
of a recorded step: ``cosine``, the mean cosine over pairs of examples; ``effective_rank``, exp of the entropy of the
normalised singular values of the centred batch (Roy & Vetterli 2007). Averaged over the step's forwards (every
micro-batch); under DDP over the ranks.
"""
from __future__ import annotations

import torch

from probes import catalogue, distributed
from probes.base import Declared, Probe

COLUMNS = catalogue.CLS_COLLAPSE.columns


def cls_statistics(cls: torch.Tensor) -> torch.Tensor:
    """``[mean pairwise cosine, effective rank]`` of the rows of ``cls`` (examples x units, at least 2 rows)."""
    cls = cls.float()
    unit = torch.nn.functional.normalize(cls, dim=-1)
    n = unit.shape[0]
    total = unit.sum(0)
    cosine = (total @ total - n) / (n * (n - 1))
    singular = torch.linalg.svdvals(cls - cls.mean(0, keepdim=True))
    share = singular / singular.sum().clamp_min(torch.finfo(torch.float32).tiny)
    entropy = -(share * torch.log(share.clamp_min(torch.finfo(torch.float32).tiny))).sum()
    return torch.stack([cosine, entropy.exp()])


class ClsCollapse(Probe):
    """Mean pairwise cosine and effective rank of the training batch's first-token representations."""

    width = len(COLUMNS)

    def bind(self, session) -> None:
        self._sums, self._forwards = None, 0

    def series(self) -> list[Declared]:
        return [Declared(catalogue.CLS_COLLAPSE, COLUMNS, attrs={
            "read_at": "forward hook on the base model's last hidden state, training forwards of the recorded step",
            "effective_rank": "exp(entropy of the normalised singular values of the centred batch)"})]

    def attach(self, session) -> None:
        prefix = session.layers.base_prefix
        base = getattr(session.model, prefix) if prefix else session.model
        session.hooks.add(base.register_forward_hook(self._seen(session)), "cls collapse: base model output")

    def _seen(self, session):
        def hook(module, inputs, output) -> None:
            if not (self.live(session) and module.training and torch.is_grad_enabled() and session.active):
                return
            hidden = output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", output)
            if hidden.shape[0] < 2:
                return
            with torch.no_grad():
                values = cls_statistics(hidden[:, 0].detach())
            self._sums = values if self._sums is None else self._sums + values
            self._forwards += 1
        return hook

    def on_step(self, session, row: torch.Tensor) -> None:
        if self._forwards:
            row.copy_(self._sums / self._forwards)
        self._sums, self._forwards = None, 0

    on_skip = on_step

    def reduce(self, session, block: torch.Tensor) -> None:
        distributed.mean_(block, session.world)

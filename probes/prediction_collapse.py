"""Prediction collapse of the classifier (kind ``scalars``, series ``predictions``): is the head predicting one class?

A failed fine-tuning run ends predicting the majority class for every input (Mosbach et al. 2020, Dodge et al.
2020). A forward hook on the classifier head's output (the logits) measures, per recorded step and over the
training forwards of that step (every micro-batch): ``majority_share``, the share of the examples predicted as the
most predicted class; ``entropy``, the mean entropy of the predicted distribution in nats (ln C = uniform);
``margin``, the mean gap between the largest and the second largest logit. Evaluation forwards (``model.eval()``
or no grad) are not counted. Sums stay on the device until the flush; under DDP each rank's values are averaged.
"""
from __future__ import annotations

import math

import torch

from probes import catalogue, distributed
from probes.base import Declared, Probe

COLUMNS = catalogue.PREDICTION_COLLAPSE.columns


def head_module(model: torch.nn.Module, base_prefix: str) -> torch.nn.Module:
    """The classifier head: the last child of ``model`` outside its base model that holds parameters."""
    heads = [module for name, module in model.named_children()
             if name != base_prefix and any(True for _ in module.parameters())]
    if not heads:
        raise ValueError("no classifier head found next to the base model; PredictionCollapse needs one")
    return heads[-1]


class PredictionCollapse(Probe):
    """Majority-class share, mean entropy and mean top-2 logit margin of the head's training predictions."""

    width = len(COLUMNS)

    def bind(self, session) -> None:
        self._counts = self._sums = None
        self._examples = 0
        self.ln_c = math.log(max(2, getattr(getattr(session.model, "config", None), "num_labels", 2) or 2))

    def series(self) -> list[Declared]:
        return [Declared(catalogue.PREDICTION_COLLAPSE, COLUMNS, attrs={
            "read_at": "forward hook on the classifier head's output, training forwards of the recorded step",
            "entropy": "mean entropy of softmax(logits) in nats", "margin": "mean top-1 minus top-2 logit",
            "ln_c": self.ln_c})]

    def attach(self, session) -> None:
        head = head_module(session.model, session.layers.base_prefix)
        session.hooks.add(head.register_forward_hook(self._seen(session)), "prediction collapse: head logits")

    def _seen(self, session):
        def hook(module, inputs, output) -> None:
            logits = output[0] if isinstance(output, tuple) else output
            if not (self.live(session) and module.training and torch.is_grad_enabled() and session.active):
                return
            with torch.no_grad():
                logits = logits.detach().float().reshape(-1, logits.shape[-1])
                counts = torch.bincount(logits.argmax(-1), minlength=logits.shape[-1]).float()
                log_p = torch.log_softmax(logits, -1)
                top = logits.topk(min(2, logits.shape[-1]), -1).values
                sums = torch.stack([-(log_p.exp() * log_p).sum(-1).sum(), (top[:, 0] - top[:, -1]).sum()])
                self._counts = counts if self._counts is None else self._counts + counts
                self._sums = sums if self._sums is None else self._sums + sums
                self._examples += logits.shape[0]
        return hook

    def on_step(self, session, row: torch.Tensor) -> None:
        """Write the step's shares and means (also for a skipped step) and start counting the next one."""
        if self._examples:
            row[0] = self._counts.max() / self._examples
            row[1:] = self._sums / self._examples
        self._counts = self._sums = None
        self._examples = 0

    on_skip = on_step

    def reduce(self, session, block: torch.Tensor) -> None:
        distributed.mean_(block, session.world)

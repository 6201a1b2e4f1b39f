"""Forgetting during training: MLM perplexity of the live model with its top k blocks reset (kind ``forgetting``).

    corpus = masked_corpus(text, tokenizer, max_tokens=4096)       # probes.model.mlm: masked once, in advance
    probe = Forgetting(pretrained_mlm, corpus)                      # the curve k = 0..L every 50 steps
    probe = Forgetting(pretrained_mlm, corpus, curve=False)         # only k = 0 and the pre-trained reference
    probe = Forgetting(pretrained_mlm, corpus, profile=True)        # also weight change and CKA per layer
    with probes.attach(model, optimizer, "run.h5", probes=[probe]): ...

The same measurement as ``python -m diagnostics.forgetting`` (the cached sweep of ``probes.model.sweep``), taken after
the update of every step that both the session's schedule and the probe's ``schedule`` select. Series
``forgetting/training``: columns ``k=0`` ... ``k=L`` with a ``k`` axis, or ``finetuned`` and ``pretrained``; only
the evaluated steps are appended. The evaluation runs under ``torch.inference_mode()`` with every module in eval
mode (each module's own train/eval flag is restored after), on the fixed pre-masked corpus, so it draws no random
numbers and leaves the training trajectory exactly as it was. ``pretrained_mlm`` must be a separate model (it is
moved to the training device); its perplexity is computed once when only k = 0 is followed.

``profile=True`` adds series ``forgetting_profile/training``: per layer (``embeddings``, ``encoder.1`` ...),
``weight_change/<layer>`` (||theta - theta_pt|| / ||theta_pt||) and ``cka/<layer>`` (linear CKA of the hidden states
after it with the pre-trained model's, ``probes.model.similarity``). Its cost: one pass over the parameters and
three d x d products per depth and batch on top of the curve, which runs both models anyway (with ``curve=False``
it adds the pre-trained model's forward pass). The per-layer perplexities of ``python -m diagnostics.forgetting``
(each layer alone, embeddings reset) are not taken during training: they cost about 3 times the curve.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from probes.model.mlm import MaskedCorpus
from probes import catalogue
from probes.base import Declared, Probe
from probes.model.profile import cka_observer
from probes.model.similarity import CKATotals
from probes.model.sweep import check_same_shape, composed_nll, reset_depths
from probes.model.weight_change import weight_change_tensors
from probes.schedule import Schedule


class Forgetting(Probe):
    """MLM perplexity of the model being trained with its top (or bottom) k blocks reset to pre-trained weights."""

    measured_only = True  # only the steps of the probe's own schedule

    def __init__(self, pretrained_mlm: nn.Module, corpus: MaskedCorpus, *, schedule: Schedule | None = None,
                 curve: bool = True, direction: str = "top", batch_size: int = 16, profile: bool = False) -> None:
        self.pretrained, self.corpus, self.curve, self.profile = pretrained_mlm.eval(), corpus, curve, profile
        self.schedule = schedule or Schedule(every=50, dense=0)
        self.direction, self.batch_size = direction, batch_size
        self.reference: torch.Tensor | None = None

    def bind(self, session) -> None:
        model = session.model
        if {id(p) for p in model.parameters()} & {id(p) for p in self.pretrained.parameters()}:
            raise ValueError("the pre-trained model shares parameters with the model being trained; "
                             "pass a separate copy loaded from the pre-trained checkpoint")
        check_same_shape(model, self.pretrained)
        self.pretrained.to(session.device)
        self.depth, self.shared = session.layers.depth, session.layers.shared
        self.names = [f"k={k}" for k in range(self.depth + 1)] if self.curve else ["finetuned", "pretrained"]
        self.layers = ["embeddings"] + [f"encoder.{d}" for d in range(1, self.depth + 1)]
        self.profile_names = [f"{what}/{layer}" for what in ("weight_change", "cka") for layer in self.layers] \
            if self.profile else []
        self.width = len(self.names) + len(self.profile_names)

    def series(self) -> list[Declared]:
        axes = {"k": np.arange(self.depth + 1, dtype="f8")} if self.curve else {}
        return [Declared(catalogue.FORGETTING_DURING, self.names, axes, {
            "direction": self.direction, "masked_tokens": self.corpus.masked_tokens,
            "measured": "MLM perplexity with the pre-trained head, after the update of the step"})] + ([
            Declared(catalogue.FORGETTING_PROFILE_DURING, self.profile_names, {}, {
                "direction": self.direction, "masked_tokens": self.corpus.masked_tokens, "layers": self.layers,
                "measured": "relative weight change and linear CKA with the pre-trained model, after the update"})]
            if self.profile else [])

    def after_step(self, session, row: torch.Tensor) -> None:
        if self.schedule(session.step):
            row.copy_(self.evaluate(session.model).to(row))

    def evaluate(self, model: nn.Module) -> torch.Tensor:
        """Perplexities (on the device) for the probe's columns, the model's train/eval flags left as they were."""
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            with torch.inference_mode():
                ks = list(range(self.depth + 1)) if self.curve else [0]
                similarity = [CKATotals() for _ in self.layers] if self.profile else []
                observe = cka_observer(similarity) if self.profile else None
                nll = composed_nll(model, self.pretrained, self.corpus,
                                   [reset_depths(k, self.depth, self.direction) for k in ks],
                                   batch_size=self.batch_size, observe=observe)
                values = torch.exp(nll / self.corpus.masked_tokens)
                if not self.curve:
                    values = torch.cat([values, self._reference(model)])
                if self.profile:
                    values = torch.cat([values.to(torch.float64), self._profile(model, similarity)])
        finally:
            for module, training in modes:
                module.training = training
        return values

    def _profile(self, model: nn.Module, similarity: list[CKATotals]) -> torch.Tensor:
        """Weight change per layer, then CKA per depth (the probe's profile columns), on the device."""
        changes = weight_change_tensors(model, self.pretrained)
        weights = [changes.get("encoder.shared" if self.shared and layer != "embeddings" else layer,
                               torch.tensor(torch.nan, dtype=torch.float64)) for layer in self.layers]
        device = similarity[0].xx.device
        return torch.stack([w.to(device) for w in weights] + [totals.tensor() for totals in similarity])

    def _reference(self, model: nn.Module) -> torch.Tensor:
        """The pre-trained model's perplexity (k = L), computed once: the pre-trained model does not change."""
        if self.reference is None:
            nll = composed_nll(model, self.pretrained, self.corpus,
                               [reset_depths(self.depth, self.depth, self.direction)], batch_size=self.batch_size)
            self.reference = torch.exp(nll / self.corpus.masked_tokens)
        return self.reference

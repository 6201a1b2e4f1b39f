"""The forgetting profile: where, layer by layer, a fine-tuned model lost its pre-training.

One pass over the held-out text gives, for a model with L blocks (depth 0 is the input stage: the embeddings,
with ALBERT's or ELECTRA's projection to the hidden size), every perplexity scored by the **pre-trained** MLM head:

* ``perplexity``: the top (or bottom) k blocks reset, k = 0..L, the input stage reset with block 1, so k = L is the
  pre-trained model (the toolkit's forgetting curve);
* ``embeddings_finetuned``: the same with the input stage kept fine-tuned at every k (the papers' procedure: they
  reset encoder blocks only); ``embeddings_reset``: with the input stage reset at every k, so its k = 0 is the
  fine-tuned model with only its embeddings reset;
* ``alone``: per depth d = 0..L, the pre-trained model with only depth d fine-tuned: the damage of each layer read
  directly;

and, without any perplexity, per depth:

* ``cka``: linear CKA between the pre-trained and the fine-tuned model's hidden states after depth d, on every
  token of the same masked text (each model run once per batch: :mod:`probes.model.similarity`);
* ``weight_change``: ||theta_ft - theta_pt|| / ||theta_pt|| of the layer (:mod:`probes.model.weight_change`).

Cost: the two forward passes that the forgetting curve needs anyway, the blocks of the mixed compositions (with
both full passes, 69 block calls for L = 6 and 924 for L = 24, against 27 and 324 for the curve alone), one head
call per perplexity at the masked positions, and three d x d products per depth and batch for CKA. Library code; the command is
``python -m diagnostics.forgetting``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from probes.model.layers import find_layers
from probes.model.mlm import MaskedCorpus, perplexity
from probes.model.similarity import CKATotals
from probes.model.sweep import Observer, composed_nll, reset_depths
from probes.model.weight_change import relative_weight_change

CURVES = {"perplexity": "with-block-1", "embeddings_finetuned": "finetuned", "embeddings_reset": "reset"}


@dataclass(frozen=True)
class ForgettingProfile:
    """The curves over k = 0..L and the per-depth profiles over ``layers`` (``embeddings``, ``encoder.1``...)."""

    direction: str
    k: list[int]
    perplexity: list[float]
    embeddings_finetuned: list[float]
    embeddings_reset: list[float]
    layers: list[str]
    alone: list[float]
    cka: list[float]
    weight_change: list[float]
    masked_tokens: int

    @property
    def pretrained_perplexity(self) -> float:
        return self.perplexity[-1]

    @property
    def finetuned_perplexity(self) -> float:
        return self.perplexity[0]

    @property
    def embeddings_only_reset(self) -> float:
        """Perplexity of the fine-tuned model with only its input stage reset to pre-trained."""
        return self.embeddings_reset[0]


def forgetting_profile(finetuned: nn.Module, pretrained_mlm: nn.Module, corpus: MaskedCorpus, *,
                       direction: str = "top", batch_size: int = 16,
                       progress: Callable[[Any], Any] = iter) -> ForgettingProfile:
    """Every curve and profile of the module docstring, in one pass over ``corpus``; both models in eval mode."""
    layers = find_layers(pretrained_mlm)
    depth = layers.depth
    ks = list(range(depth + 1))
    resets = [reset_depths(k, depth, direction, rule) for rule in CURVES.values() for k in ks]
    resets += [set(ks) - {d} for d in ks]  # only depth d fine-tuned
    similarity = [CKATotals() for _ in ks]
    nll = composed_nll(finetuned, pretrained_mlm, corpus, resets, batch_size=batch_size, progress=progress,
                       observe=cka_observer(similarity))
    values = [perplexity(total, corpus.masked_tokens) for total in nll.tolist()]
    curves = {name: values[i * (depth + 1):(i + 1) * (depth + 1)] for i, name in enumerate(CURVES)}
    names = ["embeddings"] + [f"encoder.{d}" for d in range(1, depth + 1)]
    changes = relative_weight_change(finetuned, pretrained_mlm)
    per_depth = [changes.get("encoder.shared" if layers.shared and name != "embeddings" else name, math.nan)
                 for name in names]
    return ForgettingProfile(direction, ks, **curves, layers=names, alone=values[3 * (depth + 1):],
                             cka=[totals.value() for totals in similarity], weight_change=per_depth,
                             masked_tokens=corpus.masked_tokens)



def cka_observer(similarity: list[CKATotals]) -> Observer:
    """An ``observe`` for :func:`~probes.model.sweep.composed_nll` adding each depth's hidden states (the real,
    unpadded tokens) to ``similarity[d]``."""
    def observe(finetuned_states: list[torch.Tensor], pretrained_states: list[torch.Tensor],
                attention_mask: torch.Tensor) -> None:
        real = attention_mask.bool()
        for totals, tuned, reference in zip(similarity, finetuned_states, pretrained_states):
            totals.update(tuned[real], reference[real])
    return observe

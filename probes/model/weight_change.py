"""How far fine-tuning moved each layer: ||theta_ft - theta_ref|| / ||theta_ref|| per layer.

The norms are taken over all parameters of a layer at once (the square root of the summed squares), with layers
named as everywhere in the toolkit (:func:`probes.model.layers.find_layers`): ``embeddings`` (the whole input
stage, ALBERT's and ELECTRA's projection to the hidden size included), ``encoder.1`` ... ``encoder.L`` (one
``encoder.shared`` for ALBERT), ``pooler``, ``head``. Parameters of the base model are matched by their name inside
it, so a classifier is compared with a ``*ForMaskedLM``; parameters outside it by their full name, so a head is only
compared with a model that has the same head (the run's step-0 checkpoint, say). A layer is reported only when
every one of its parameters has a counterpart of the same shape. Library code, no command line.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from probes.model.layers import LayerMap, find_layers


@torch.no_grad()
def relative_weight_change(model: nn.Module, reference: nn.Module) -> dict[str, float]:
    """``{layer: ||theta_model - theta_ref|| / ||theta_ref||}`` in layer order, for the layers both models have."""
    layers = find_layers(model)
    others = dict(_keyed(reference, find_layers(reference)))
    moved: dict[str, float] = {}
    size: dict[str, float] = {}
    unmatched: set[str] = set()
    for key, group, parameter in _grouped(model, layers):
        counterpart = others.get(key)
        if counterpart is None or counterpart.shape != parameter.shape:
            unmatched.add(group)
            continue
        difference = parameter.detach().double() - counterpart.detach().to(parameter.device).double()
        moved[group] = moved.get(group, 0.0) + float(difference.square().sum())
        size[group] = size.get(group, 0.0) + float(counterpart.detach().double().square().sum())
    return {group: math.sqrt(moved[group]) / math.sqrt(size[group]) if size[group] > 0 else math.nan
            for group in moved if group not in unmatched}


def _grouped(model: nn.Module, layers: LayerMap):
    """``(matching key, layer, parameter)``; ``other`` parts of the base model count with the embeddings."""
    for key, name, parameter in _named(model, layers):
        group = layers.group_of(name)
        yield key, "embeddings" if group == "other" else group, parameter


def _keyed(model: nn.Module, layers: LayerMap):
    for key, _, parameter in _named(model, layers):
        yield key, parameter


def _named(model: nn.Module, layers: LayerMap):
    """``(key, full name, parameter)``: the key is the name inside the base model, or ``/`` and the full name
    outside it. A tied decoder is listed once, as the word embeddings (``named_parameters`` drops duplicates)."""
    prefix = layers.base_prefix + "." if layers.base_prefix else ""
    for name, parameter in model.named_parameters():
        inside = not prefix or name.startswith(prefix)
        yield (name[len(prefix):] if inside else "/" + name), name, parameter

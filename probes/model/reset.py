"""Layer resetting as patch-and-restore: a model runs with some of its encoder blocks set to pre-trained weights.

``with reset_blocks(model, pretrained, depths=[11, 12]): ...`` copies the pre-trained weights of blocks 11 and 12
into ``model`` and copies the model's own weights back on leaving, bit for bit, also after an exception. Depth 0
stands for the input stage (everything of the base model below block 1: embeddings, ALBERT's and ELECTRA's
projection to the hidden size). Parameters are matched by their name inside the base model and must agree in
shape, so a classifier can be patched from a ``*ForMaskedLM`` of the same architecture. ALBERT shares one block
across depths, so it can only reset all of its depths or none. Buffers are left alone (they are not trained).

This is the plain way to build one reset model (the naive oracle of the cached sweep in ``probes/model/sweep.py``);
library code, no command line.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

from probes.model.layers import LayerMap, find_layers


@contextmanager
def reset_blocks(model: nn.Module, pretrained: nn.Module, depths: Iterable[int]) -> Iterator[nn.Module]:
    """Run ``model`` with the blocks at ``depths`` (1..L; 0 for the input stage) set to ``pretrained``'s weights."""
    layers, source_layers = find_layers(model), find_layers(pretrained)
    groups = _groups(layers, sorted(set(depths)))
    source = dict(_relative_parameters(pretrained, source_layers))
    targets = [(name, relative, parameter) for name, relative, parameter in _named(model, layers)
               if layers.group_of(name) in groups]
    for name, relative, parameter in targets:
        if relative not in source or source[relative].shape != parameter.shape:
            raise ValueError(f"the pre-trained model has no parameter {relative} of shape {tuple(parameter.shape)}; "
                             "pass the pre-trained model of the same architecture and size")
    saved = [parameter.detach().clone() for _, _, parameter in targets]
    try:
        with torch.no_grad():
            for _, relative, parameter in targets:
                parameter.copy_(source[relative])
        yield model
    finally:
        with torch.no_grad():
            for (_, _, parameter), original in zip(targets, saved):
                parameter.copy_(original)


def _groups(layers: LayerMap, depths: list[int]) -> set[str]:
    """The ``find_layers`` group names of ``depths``."""
    outside = [d for d in depths if not 0 <= d <= layers.depth]
    if outside:
        raise ValueError(f"depth {outside[0]} is outside 0..{layers.depth}; pass depths of this model's blocks")
    blocks = [d for d in depths if d > 0]
    groups = {"embeddings", "other"} if 0 in depths else set()
    if layers.shared:
        if blocks and len(blocks) != layers.depth:
            raise ValueError("ALBERT shares one block across all depths: reset all of them or none "
                             "(the cached sweep resets single depths)")
        return groups | ({"encoder.shared"} if blocks else set())
    return groups | {f"encoder.{d}" for d in blocks}


def _named(model: nn.Module, layers: LayerMap) -> Iterator[tuple[str, str, nn.Parameter]]:
    """``(full name, name inside the base model, parameter)`` of every base-model parameter."""
    for name, parameter in model.named_parameters():
        relative = _relative(name, layers)
        if relative is not None:
            yield name, relative, parameter


def _relative_parameters(model: nn.Module, layers: LayerMap) -> Iterator[tuple[str, nn.Parameter]]:
    for _, relative, parameter in _named(model, layers):
        yield relative, parameter


def _relative(name: str, layers: LayerMap) -> str | None:
    if not layers.base_prefix:
        return name
    prefix = layers.base_prefix + "."
    return name[len(prefix):] if name.startswith(prefix) else None

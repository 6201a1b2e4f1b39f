"""The trainable parameters of a model, in the columns probes record them under (pure bookkeeping, no hooks).

Layers are the groups of :func:`probes.model.layers.find_layers`, ordered from the input up: ``embeddings``, ``other``
(ALBERT's and ELECTRA's embedding projection), ``encoder.shared`` (ALBERT) or ``encoder.1`` ... ``encoder.L``,
``pooler``, ``head``; only groups that hold a trainable parameter appear. Their ``depth`` axis is 0 for the
embeddings, d for ``encoder.d``, L+1 for the pooler and L+2 for the head, NaN where no single depth applies.
Components are the single parameter tensors, named ``layer/path`` (``encoder.3/attention.self.query.weight``,
``head/classifier.weight``) so the papers' one-matrix-per-layer curves can be drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from probes.model.layers import LayerMap


@dataclass(frozen=True)
class ParameterTable:
    """``params[i]`` is named ``names[i]`` and belongs to layer ``layers[layer_index[i]]``."""

    params: list[nn.Parameter]
    names: list[str]
    layers: list[str]
    layer_index: np.ndarray
    layer_depth: np.ndarray
    components: list[str]
    component_depth: np.ndarray
    component_path: list[str]

    def layer_norms(self, norms: np.ndarray) -> np.ndarray:
        """Per-layer L2 norms ``(N, layers)`` from per-tensor norms ``(N, params)``: root of summed squares."""
        squares = np.square(np.asarray(norms, dtype="f8"))
        sums = np.zeros((squares.shape[0], len(self.layers)))
        np.add.at(sums.T, self.layer_index, squares.T)
        return np.sqrt(sums)

    def layer_sums(self, values: np.ndarray) -> np.ndarray:
        """Per-layer sums ``(N, layers)`` of per-tensor values ``(N, params)`` (counts, dot products)."""
        values = np.asarray(values, dtype="f8")
        sums = np.zeros((values.shape[0], len(self.layers)))
        np.add.at(sums.T, self.layer_index, values.T)
        return sums


def parameter_table(model: nn.Module, layer_map: LayerMap, named: list | None = None) -> ParameterTable:
    """The trainable parameters of ``model`` (model order) with their layer and component columns; ``named``:
    the ``(name, parameter)`` pairs to use instead (FSDP1's local parts, :func:`probes.distributed.named_parameters`)."""
    if named is None:
        named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    depth = layer_map.depth
    layer_of = [layer_map.group_of(name) for name, _ in named]
    layers = sorted(set(layer_of), key=lambda layer: _position(layer, depth))
    paths = [_path_in_layer(name, layer, layer_map) for (name, _), layer in zip(named, layer_of)]
    component_depth = np.array([_depth(layer, depth) for layer in layer_of], dtype="f8")
    return ParameterTable(
        params=[param for _, param in named], names=[name for name, _ in named], layers=layers,
        layer_index=np.array([layers.index(layer) for layer in layer_of], dtype="i8"),
        layer_depth=np.array([_depth(layer, depth) for layer in layers], dtype="f8"),
        components=[f"{layer}/{path}" for layer, path in zip(layer_of, paths)],
        component_depth=component_depth, component_path=paths)


def _position(layer: str, depth: int) -> float:
    fixed = {"embeddings": 0.0, "other": 0.5, "encoder.shared": 1.0, "pooler": depth + 1.0, "head": depth + 2.0}
    return fixed[layer] if layer in fixed else float(layer.split(".")[1])


def _depth(layer: str, depth: int) -> float:
    return float("nan") if layer in ("other", "encoder.shared") else _position(layer, depth)


def _path_in_layer(name: str, layer: str, layer_map: LayerMap) -> str:
    if layer.startswith("encoder."):
        return layer_map.component_of(name) or name
    prefix = {"embeddings": layer_map.embeddings_prefix, "pooler": layer_map.pooler_prefix}.get(layer)
    return name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name

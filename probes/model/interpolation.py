"""Lines and planes through checkpoints in parameter space: the pure maths and an in-place weight setter.

A surface point ``(a, b)`` of the plane through ``theta_p``, ``theta_f`` and ``theta_s`` is
``theta_p + a (theta_f - theta_p) + b (theta_s - theta_p)`` (Mosbach et al. 2020, Fig. 7: raw differences, neither
normalised nor orthogonalised); a point ``a`` of the line through ``theta_a`` and ``theta_b`` is
``theta_a + a (theta_b - theta_a)``. :class:`Subspace` moves a live model to such a point without copying it: it
writes ``(1 - a - b) theta_p + a theta_f + b theta_s`` (the same point, built by lerps so that the corners are
the checkpoints bit for bit) into the model's own parameter tensors with multi-tensor ``torch._foreach_*`` ops, and
:meth:`Subspace.moving` restores the original weights exactly when the block ends::

    space = Subspace.from_models([pretrained, failed, successful])
    with space.moving(model) as move_to:
        move_to((0.5, -0.25))        # model now holds the plane's point a=0.5, b=-0.25
    # model holds its own weights again

:meth:`Subspace.around` spans the plane of Li et al. (2018) instead: one checkpoint plus two random Gaussian
directions, filter-normalised (each filter scaled to the norm of the checkpoint's filter; biases and LayerNorm
left still). Only floating-point parameters span the subspace; buffers (position ids and the like) must be
identical in every checkpoint, or :meth:`Subspace.from_models` refuses them. Nothing here reads files or parses
arguments.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn


class SubspaceError(ValueError):
    """Checkpoints that do not span a line or plane (different names, shapes or buffers); one line, with the fix."""


def grid_axis(lo: float, hi: float, points: int) -> np.ndarray:
    """``points`` evenly spaced values from ``lo`` to ``hi``, both included."""
    if points < 1:
        raise ValueError(f"a grid needs at least one point per axis, got {points}; pass --grid 1 or more")
    if not lo < hi:
        raise ValueError(f"the range must go from low to high, got {lo} .. {hi}; pass --range LO HI with LO < HI")
    return np.linspace(float(lo), float(hi), int(points))


def plane_point(theta_p: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """``theta_p + a d1 + b d2``: the plane's point at ``(a, b)`` (the reference definition)."""
    return theta_p + a * d1 + b * d2


def line_point(theta_a: torch.Tensor, d: torch.Tensor, a: float) -> torch.Tensor:
    """``theta_a + a d``: the line's point at ``a``."""
    return theta_a + a * d


def anchor_weights(coords: Sequence[float]) -> list[float]:
    """The weights of the anchors at ``coords``: ``[1 - sum(coords), *coords]`` (one anchor more than coordinates)."""
    coords = [float(c) for c in coords]
    return [1.0 - sum(coords), *coords]


def lerp_order(weights: Sequence[float]) -> tuple[int, list[tuple[int, float]]]:
    """How to reach sum_k weights[k] anchor_k (weights summing to 1) from one anchor by successive lerps.

    Returns ``(first, [(anchor, weight), ...])``: start from anchor ``first``, then ``x = lerp(x, anchor, weight)``
    for each step. For three anchors the one kept for last is the k with the largest |1 - w_k|, so the middle
    weight ``w_j / (1 - w_k)`` never divides by a small number (the three |1 - w_k| sum to at least 2).
    """
    if len(weights) == 2:
        return 0, [(1, float(weights[1]))]
    last = max(range(3), key=lambda k: abs(1.0 - weights[k]))
    first, middle = (k for k in range(3) if k != last)
    return first, [(middle, weights[middle] / (1.0 - weights[last])), (last, float(weights[last]))]


def grid_indices(shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Every index of a grid of ``shape``, in row-major order."""
    return [tuple(int(i) for i in index) for index in np.ndindex(*shape)]


def floating_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating-point parameters by name (shared ones once)."""
    return {name: p for name, p in model.named_parameters() if p.is_floating_point()}


def filter_normalised(direction: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Li et al. (2018): each filter (slice along dim 0) of ``direction`` rescaled to the norm of ``theta``'s;
    a 1-d tensor (bias, LayerNorm) gets a zero direction, as their default ``ignore='biasbn'``."""
    if direction.dim() <= 1:
        return torch.zeros_like(direction)
    flat, reference = direction.flatten(1), theta.flatten(1)
    scale = reference.norm(dim=1, keepdim=True) / (flat.norm(dim=1, keepdim=True) + 1e-10)
    return (flat * scale).view_as(direction)


@dataclass(frozen=True)
class Subspace:
    """The affine span of two or three checkpoints: ``anchors[k][n]`` is parameter ``names[n]`` of checkpoint k."""

    names: list[str]
    anchors: list[list[torch.Tensor]]

    @property
    def dimensions(self) -> int:
        return len(self.anchors) - 1

    @classmethod
    def from_models(cls, models: Sequence[nn.Module], labels: Sequence[str] | None = None) -> "Subspace":
        """Copy the floating parameters of ``models`` (same names and shapes, identical buffers) as the anchors."""
        labels = list(labels or [f"checkpoint {k + 1}" for k in range(len(models))])
        first = floating_parameters(models[0])
        first_buffers = dict(models[0].named_buffers())
        for model, label in zip(models[1:], labels[1:]):
            params = floating_parameters(model)
            _check_same(first, params, labels[0], label, "parameter")
            buffers = dict(model.named_buffers())
            _check_same(first_buffers, buffers, labels[0], label, "buffer")
            for name, buffer in buffers.items():
                if not torch.equal(buffer, first_buffers[name]):
                    raise SubspaceError(f"buffer {name} differs between {labels[0]} and {label}; the surface moves "
                                        "parameters only, so pass checkpoints with identical buffers")
        names = list(first)
        anchors = [[floating_parameters(m)[n].detach().clone() for n in names] for m in models]
        return cls(names, anchors)

    @classmethod
    def around(cls, model: nn.Module, seed: int = 0) -> "Subspace":
        """The plane through ``model`` along two filter-normalised Gaussian directions drawn from ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        params = floating_parameters(model)
        names = list(params)
        centre = [params[n].detach().clone() for n in names]
        anchors = [centre]
        for _ in range(2):
            directions = [torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) for t in centre]
            anchors.append([t + filter_normalised(d, t) for t, d in zip(centre, directions)])
        return cls(names, anchors)

    def move(self, params: list[torch.Tensor], coords: Sequence[float]) -> None:
        """Write the point at ``coords`` into ``params`` in place (aligned with :attr:`names`).

        The point is sum_k w_k anchor_k (:func:`anchor_weights`), built by :func:`lerp_order` from one copy and
        one or two ``lerp`` passes: three passes over the weights for a plane, two for a line, and each anchor
        comes out bit for bit at its corner (``lerp`` returns its end exactly at weight 1).
        """
        if len(coords) != self.dimensions:
            raise ValueError(f"a point of this {self.dimensions}-d subspace has {self.dimensions} coordinates")
        first, steps = lerp_order(anchor_weights(coords))
        with torch.no_grad():
            torch._foreach_copy_(params, self.anchors[first])
            for anchor, weight in steps:
                torch._foreach_lerp_(params, self.anchors[anchor], weight)

    @contextmanager
    def moving(self, model: nn.Module) -> Iterator[Callable[[Sequence[float]], None]]:
        """Yield ``move_to(coords)`` for ``model``; its own weights are put back exactly when the block ends."""
        own = floating_parameters(model)
        _check_same(dict(zip(self.names, self.anchors[0])), own, "the subspace", "the model", "parameter")
        params = [own[name] for name in self.names]
        saved = [p.detach().clone() for p in params]
        try:
            yield lambda coords: self.move(params, coords)
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, saved)


def _check_same(first: dict[str, torch.Tensor], other: dict[str, torch.Tensor], first_label: str, label: str,
                what: str) -> None:
    """Refuse two tensor dicts whose names, shapes or dtypes differ, naming the first difference."""
    missing = [n for n in first if n not in other] + [n for n in other if n not in first]
    if missing:
        raise SubspaceError(f"{first_label} and {label} have different {what}s (first: {missing[0]}); "
                            "pass checkpoints of the same architecture")
    for name, tensor in first.items():
        if tensor.shape != other[name].shape or tensor.dtype != other[name].dtype:
            raise SubspaceError(f"{what} {name} is {tuple(tensor.shape)} {tensor.dtype} in {first_label} but "
                                f"{tuple(other[name].shape)} {other[name].dtype} in {label}; "
                                "pass checkpoints of the same architecture and size")

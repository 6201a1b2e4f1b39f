"""Loss barriers on straight lines between checkpoints: pure numpy, no torch.

Along theta(a) = (1 - a) theta_i + a theta_j, a from 0 to 1, the barrier height is the highest loss on the line
minus the mean of the losses at its two ends (Frankle et al. 2020; Juneja et al. 2022): 0 when the loss never
rises above the ends' mean (the two models share a basin, linearly connected), large when a ridge separates them.
For accuracy the sign flips: the mean of the ends minus the lowest accuracy on the line.

A barrier grid holds ``loss[i, j, k]`` at ``a[k]`` on the line from run i to run j; ``loss[j, i]`` is the same
line walked backwards and ``loss[i, i]`` the constant line of run i. ``plots`` imports this module (numpy only).
"""
from __future__ import annotations

import numpy as np


def barrier_height(values: np.ndarray, *, higher_is_worse: bool = True) -> float:
    """The barrier along one line of ``values`` (first and last are the two ends); NaN if any point is missing."""
    values = np.asarray(values, dtype="f8")
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"a barrier needs the values along a line, both ends included; got shape {values.shape}")
    if np.isnan(values).any():
        return float("nan")
    ends = (values[0] + values[-1]) / 2
    return float(values.max() - ends) if higher_is_worse else float(ends - values.min())


def barrier_matrix(lines: np.ndarray, *, higher_is_worse: bool = True) -> np.ndarray:
    """``matrix[i, j]`` = :func:`barrier_height` of ``lines[i, j, :]`` for a grid of shape (runs, runs, points)."""
    lines = np.asarray(lines, dtype="f8")
    if lines.ndim != 3 or lines.shape[0] != lines.shape[1]:
        raise ValueError(f"a barrier grid has shape (runs, runs, points), got {lines.shape}")
    runs = lines.shape[0]
    return np.array([[barrier_height(lines[i, j], higher_is_worse=higher_is_worse) for j in range(runs)]
                     for i in range(runs)])

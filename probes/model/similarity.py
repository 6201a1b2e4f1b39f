"""How alike two fine-tuned models are, from what they output on the same examples: pure numpy, no torch.

* :func:`disagreement`: the share of examples two models label differently (Du and Nguyen 2023 call the mean over
  seed pairs prediction instability);
* :func:`linear_cka`: linear centred kernel alignment of two representation matrices (Kornblith et al. 2019),
  1 for representations equal up to rotation and isotropic scaling, near 0 for unrelated ones;
* :func:`mean_pairwise`: the mean of a pairwise measure over every pair of seeds.

``plots`` may import this module (it loads numpy only).
"""
from __future__ import annotations

from itertools import combinations
from typing import Callable, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def disagreement(first: Sequence[int] | np.ndarray, second: Sequence[int] | np.ndarray) -> float:
    """The share of positions where the two label sequences differ (both of the same length, at least one)."""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape or first.ndim != 1 or first.size == 0:
        raise ValueError(f"disagreement needs two label vectors of one non-zero length, got {first.shape} and "
                         f"{second.shape}; compare predictions on the same examples")
    return float(np.mean(first != second))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of ``x`` (n, p) and ``y`` (n, q), rows the same n examples.

    With both centred over the examples, CKA = ||y^T x||_F^2 / (||x^T x||_F ||y^T y||_F) (Kornblith et al. 2019,
    eq. 5), computed in float64 from the feature-space products, which stay small when n is large. A matrix with
    no variance (every example has the same representation) has no defined CKA: NaN.
    """
    x, y = np.asarray(x, dtype="f8"), np.asarray(y, dtype="f8")
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"linear_cka needs two matrices with the same number (>= 2) of rows, got {x.shape} and "
                         f"{y.shape}; pass representations of the same examples")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norms = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norms) if norms > 0 else float("nan")


def mean_pairwise(items: Sequence[T], measure: Callable[[T, T], float]) -> float:
    """The mean of ``measure`` over every unordered pair of ``items`` (NaN for fewer than two; NaN pairs skipped,
    NaN if all are)."""
    values = [measure(a, b) for a, b in combinations(items, 2)]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")

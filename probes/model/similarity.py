"""How alike two representations or two models' predictions are: linear CKA (accumulated over batches) and label
disagreement.

Linear centred kernel alignment (Kornblith et al. 2019) of activation matrices X (n x d1) and Y (n x d2) whose
columns are centred over the n inputs:

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

It is 1 when Y is X up to a rotation, an isotropic scale and a shift, and near 0 for unrelated representations.
The forgetting profile compares the hidden states of the pre-trained and the fine-tuned model at each depth on the
same held-out tokens. The n tokens never sit in memory together: :class:`CKATotals` keeps the running means and the
three centred cross-products (d x d each, float64), merged batch by batch with the parallel update of Chan et al.,
so the result equals CKA on the concatenated rows. Between seeds, :func:`disagreement` is the share of examples two
models label differently (Du and Nguyen 2023 call its mean over seed pairs prediction instability) and
:func:`mean_pairwise` averages a measure over every pair. Library code, no command line.
"""
from __future__ import annotations

import math
from itertools import combinations
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch

T = TypeVar("T")


class CKATotals:
    """Running totals for linear CKA between two representations; ``update`` with rows of matching inputs."""

    def __init__(self) -> None:
        self.count = 0
        self.mean_x = self.mean_y = self.xx = self.yy = self.yx = None

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``x`` ``[n, d1]`` and ``y`` ``[n, d2]`` (row i of both is one input)."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"CKA needs the same inputs on both sides; got {x.shape[0]} and {y.shape[0]} rows")
        n = x.shape[0]
        if n == 0:
            return
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # activations stay float32
        x, y = x.to(dtype), y.to(dtype)
        batch_x, batch_y = x.mean(dim=0), y.mean(dim=0)
        centred_x, centred_y = x - batch_x, y - batch_y
        moments = [(centred_x.T @ centred_x).double(), (centred_y.T @ centred_y).double(),
                   (centred_y.T @ centred_x).double()]
        batch_x, batch_y = batch_x.double(), batch_y.double()
        if self.count == 0:
            self.count, self.mean_x, self.mean_y = n, batch_x, batch_y
            self.xx, self.yy, self.yx = moments
            return
        total = self.count + n
        weight = self.count * n / total
        shift_x, shift_y = batch_x - self.mean_x, batch_y - self.mean_y
        self.xx += moments[0] + weight * torch.outer(shift_x, shift_x)
        self.yy += moments[1] + weight * torch.outer(shift_y, shift_y)
        self.yx += moments[2] + weight * torch.outer(shift_y, shift_x)
        self.mean_x += shift_x * (n / total)
        self.mean_y += shift_y * (n / total)
        self.count = total

    def value(self) -> float:
        """Linear CKA of everything added so far; NaN before any row or when one side is constant."""
        if self.count == 0:
            return math.nan
        return linear_cka_from_moments(self.xx, self.yy, self.yx)


def linear_cka_from_moments(xx: torch.Tensor, yy: torch.Tensor, yx: torch.Tensor) -> float:
    """CKA from the centred cross-products X^T X, Y^T Y and Y^T X; NaN when a side has no variance."""
    denominator = float(torch.linalg.matrix_norm(xx) * torch.linalg.matrix_norm(yy))
    if denominator == 0.0:
        return math.nan
    return float(torch.linalg.matrix_norm(yx) ** 2) / denominator


def linear_cka(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Linear CKA of two activation matrices ``[n, d1]`` and ``[n, d2]`` (rows: the same n >= 2 inputs); numpy
    arrays are taken in float64."""
    x, y = (torch.as_tensor(v, dtype=torch.float64) if isinstance(v, np.ndarray) else v for v in (x, y))
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"linear_cka needs two matrices with the same number (>= 2) of rows, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}; pass representations of the same examples")
    totals = CKATotals()
    totals.update(x, y)
    return totals.value()


def disagreement(first: Sequence[int] | np.ndarray, second: Sequence[int] | np.ndarray) -> float:
    """The share of positions where the two label sequences differ (both of the same length, at least one)."""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape or first.ndim != 1 or first.size == 0:
        raise ValueError(f"disagreement needs two label vectors of one non-zero length, got {first.shape} and "
                         f"{second.shape}; compare predictions on the same examples")
    return float(np.mean(first != second))


def mean_pairwise(items: Sequence[T], measure: Callable[[T, T], float]) -> float:
    """The mean of ``measure`` over every unordered pair of ``items`` (NaN for fewer than two; NaN pairs skipped,
    NaN if all are)."""
    values = [measure(a, b) for a, b in combinations(items, 2)]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")

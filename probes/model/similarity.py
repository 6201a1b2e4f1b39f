"""Linear CKA between two representations of the same inputs, accumulated over batches.

Linear centred kernel alignment (Kornblith et al. 2019) of activation matrices X (n x d1) and Y (n x d2) whose
columns are centred over the n inputs:

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

It is 1 when Y is X up to a rotation, an isotropic scale and a shift, and near 0 for unrelated representations.
The forgetting profile compares the hidden states of the pre-trained and the fine-tuned model at each depth on the
same held-out tokens. The n tokens never sit in memory together: :class:`CKATotals` keeps the running means and the
three centred cross-products (d x d each, float64), merged batch by batch with the parallel update of Chan et al.,
so the result equals CKA on the concatenated rows. Library code, no command line.
"""
from __future__ import annotations

import math

import torch


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
        batch_x, batch_y = x.float().mean(dim=0), y.float().mean(dim=0)
        centred_x, centred_y = x.float() - batch_x, y.float() - batch_y
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
        return math.nan if self.count == 0 else float(self.tensor())

    def tensor(self) -> torch.Tensor:
        """:meth:`value` as a float64 scalar on the rows' device (no host synchronisation); needs one update."""
        return linear_cka_from_moments(self.xx, self.yy, self.yx)


def linear_cka_from_moments(xx: torch.Tensor, yy: torch.Tensor, yx: torch.Tensor) -> torch.Tensor:
    """CKA from the centred cross-products X^T X, Y^T Y and Y^T X; NaN when a side has no variance."""
    denominator = torch.linalg.matrix_norm(xx) * torch.linalg.matrix_norm(yy)
    return torch.where(denominator > 0, torch.linalg.matrix_norm(yx) ** 2 / denominator, torch.nan)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two activation matrices ``[n, d1]`` and ``[n, d2]`` (rows: the same n inputs)."""
    totals = CKATotals()
    totals.update(x, y)
    return totals.value()

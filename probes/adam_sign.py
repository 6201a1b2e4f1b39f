"""Share of Adam's coordinates taking sign-like steps, per layer (kind ``optimizer_state``, series ``sign_share``).

Adam moves a coordinate by lr x m_hat / (sqrt(v_hat) + eps). Where a coordinate's gradient keeps its sign from step
to step, |m_hat| / sqrt(v_hat) approaches 1 and Adam behaves like sign descent, taking a full lr-sized step whatever
the gradient's size; where the gradient is noise it is small. A run whose encoder coordinates mostly take
sign-like steps right after warm-up moves every weight by the full learning rate at once: the overshoot that
precedes vanishing gradients (Mosbach et al. 2020). Per recorded step, right after ``optimizer.step()``, the share
of each layer's coordinates with bias-corrected |m_hat| / (sqrt(v_hat) + eps) >= ``threshold``, whether or not
the optimiser itself corrects the bias (so runs of both kinds are measured on one scale). Single-process only.
"""
from __future__ import annotations

import numpy as np
import torch

from probes import catalogue
from probes.base import Declared, Probe


def sign_like(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int, betas: tuple[float, float], eps: float,
              threshold: float) -> torch.Tensor:
    """How many coordinates have bias-corrected |m_hat| / (sqrt(v_hat) + eps) >= ``threshold`` (0-d tensor)."""
    beta1, beta2 = betas
    m_hat = exp_avg.abs() / (1 - beta1 ** step)
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    return (m_hat >= threshold * (v_hat.sqrt() + eps)).sum()


class AdamSignShare(Probe):
    """Per layer, the share of coordinates whose Adam step is sign-like (|m_hat| / (sqrt(v_hat) + eps) near 1)."""

    def __init__(self, threshold: float = 0.9) -> None:
        self.threshold = threshold

    def bind(self, session) -> None:
        if session.sharded:
            raise ValueError("AdamSignShare reads whole optimiser states: use it in one process (no FSDP or ZeRO)")
        self.table = session.table
        self.width = len(self.table.params)
        self.group_of = {param: group for group in session.optimizer.param_groups for param in group["params"]}

    def series(self) -> list[Declared]:
        return [Declared(catalogue.SIGN_SHARE, self.table.layers, {"depth": self.table.layer_depth},
                         {"threshold": self.threshold, "read_at": "just after optimizer.step()",
                          "ratio": "bias-corrected |m_hat| / (sqrt(v_hat) + eps)"})]

    def after_step(self, session, row: torch.Tensor) -> None:
        counts = []
        for param in self.table.params:
            state, group = session.optimizer.state.get(param, {}), self.group_of[param]
            if "exp_avg" not in state or "exp_avg_sq" not in state:
                counts.append(torch.zeros((), device=row.device))
                continue
            step = int(state.get("step", 1))
            counts.append(sign_like(state["exp_avg"], state["exp_avg_sq"], max(1, step), group["betas"],
                                    group["eps"], self.threshold).to(row.device, torch.float32))
        row.copy_(torch.stack(counts))

    def rows(self, block: np.ndarray) -> list[np.ndarray]:
        sizes = np.array([param.numel() for param in self.table.params], dtype="f8")
        return [self.table.layer_sums(block) / self.table.layer_sums(sizes[None, :])]

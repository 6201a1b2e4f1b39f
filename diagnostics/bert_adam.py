"""BertAdam: AdamW with a switch for Adam's bias correction (the original BERT code has none).

    from diagnostics.bert_adam import BertAdam
    optimizer = BertAdam(model.parameters(), lr=2e-5, eps=1e-6, weight_decay=0.01, correct_bias=False)

The original BERT optimiser (``AdamWeightDecayOptimizer`` in google-research/bert, "BERTAdam") updates

    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,   p <- p - lr (m / (sqrt(v) + eps) + wd p)

without dividing m and v by (1 - b^t). Early in training v is then ~(1 - b2) g^2, so the step is ~30x larger than
Adam's for b2 = 0.999: the mechanism Mosbach et al. (2020) blame for failed fine-tuning runs. ``torch.optim.AdamW``
cannot switch the correction off, hence this optimiser; with ``correct_bias=True`` it computes what AdamW does.
Weight decay is decoupled and scaled by lr, as in both. The maths use ``torch._foreach_*`` over all parameters of
a group at once.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class BertAdam(torch.optim.Optimizer):
    """AdamW whose bias correction can be switched off (``correct_bias=False`` is BERT's original optimiser)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = False) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"need lr, eps, weight_decay >= 0 and betas in [0, 1); got {lr}, {eps}, "
                             f"{weight_decay}, {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      correct_bias=correct_bias))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        """One step for the parameters of ``group`` that have a gradient."""
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("BertAdam does not support sparse gradients")
        beta1, beta2 = group["betas"]
        lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
        grads = [p.grad for p in params]
        states = [self._state(p) for p in params]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        for s in states:
            s["step"] += 1
        if decay:
            torch._foreach_mul_(params, 1.0 - lr * decay)
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        if group["correct_bias"]:
            torch._foreach_div_(denominators, [math.sqrt(1.0 - beta2 ** s["step"]) for s in states])
            torch._foreach_add_(denominators, eps)
            torch._foreach_addcdiv_(params, exp_avgs, denominators, [-lr / (1.0 - beta1 ** s["step"]) for s in states])
        else:
            torch._foreach_add_(denominators, eps)
            torch._foreach_addcdiv_(params, exp_avgs, denominators, -lr)

    def _state(self, param: torch.Tensor) -> dict:
        """The moments of ``param``, created as zeros on its first step."""
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

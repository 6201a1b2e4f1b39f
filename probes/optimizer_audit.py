"""Audit the optimiser before the first step: warn at once about what the papers found harmful.

    audit = audit_optimizer(optimizer, warmup_steps=..., total_steps=...)   # a dict, also stored in the records
    for problem in audit["warnings"]: ...

Checked, per parameter group: Adam's bias correction switched off (``correct_bias=False`` of transformers' old
``AdamW`` and ``diagnostics.bert_adam.BertAdam``, ``bias_correction=False`` of apex/DeepSpeed fused Adams, and the
original ``BertAdam`` of pytorch-pretrained-bert, which has none: Mosbach et al. 2020's cause of failed runs);
epsilon far from the recipes' 1e-8 (PyTorch) to 1e-6 (BERT); warm-up absent or far from the recipes' 10% (read from
a torch LR scheduler's ``initial_lr`` or given by the caller, e.g. the Hugging Face ``Trainer``'s arguments). The
result is plain data: ``probes.attach`` and ``ProbeCallback`` warn with each problem and its fix and store the audit
as the records' ``optimizer_audit`` attribute.
"""
from __future__ import annotations

import math

import torch

EPS_RANGE = (1e-10, 1e-4)
WARMUP_RANGE = (0.02, 0.3)  # share of the steps; the recipes use 0.1
ADAM_STATE = ("betas", "b1")


def bias_correction(optimizer: torch.optim.Optimizer) -> bool | None:
    """Whether Adam's moments are bias-corrected: False when any group switches it off (or the optimiser is the
    original BertAdam, which never corrects), None for an optimiser that is not Adam-like."""
    groups = optimizer.param_groups
    if type(optimizer).__name__ == "BertAdam" and not any("correct_bias" in g for g in groups):
        return False  # pytorch-pretrained-bert's BertAdam: no bias correction at all
    if not any(key in g for g in groups for key in ADAM_STATE):
        return None
    switches = [g.get("correct_bias", g.get("bias_correction", True)) for g in groups]
    return all(bool(s) for s in switches)


def audit_optimizer(optimizer: torch.optim.Optimizer, warmup_steps: int | None = None,
                    total_steps: int | None = None) -> dict:
    """What the optimiser does that the papers warn about: ``{"optimizer", "bias_correction", "eps",
    "warmup_share", "warnings": [one line with the fix, ...]}``."""
    problems = []
    corrected = bias_correction(optimizer)
    if corrected is False:
        problems.append(f"{type(optimizer).__name__} runs Adam without bias correction, the main cause of failed "
                        "fine-tuning runs (Mosbach et al. 2020): use torch.optim.AdamW or pass correct_bias=True")
    eps_values = sorted({float(g.get("eps", g.get("e", math.nan))) for g in optimizer.param_groups})
    eps = [e for e in eps_values if math.isfinite(e)]
    if corrected is not None and any(not EPS_RANGE[0] <= e <= EPS_RANGE[1] for e in eps):
        problems.append(f"Adam epsilon {', '.join(f'{e:g}' for e in eps)} is far from the recipes' 1e-8 to 1e-6; "
                        "pass eps=1e-6 unless you mean it")
    share = _warmup_share(optimizer, warmup_steps, total_steps)
    if share == 0.0:
        problems.append("no learning-rate warm-up: the recipes warm up over the first 10% of the steps; use "
                        "transformers.get_linear_schedule_with_warmup (warmup_ratio=0.1)")
    elif share is not None and not WARMUP_RANGE[0] <= share <= WARMUP_RANGE[1]:
        problems.append(f"warm-up over {100 * share:.0f}% of the steps, far from the recipes' 10%; set "
                        "warmup_ratio=0.1")
    return {"optimizer": type(optimizer).__name__, "bias_correction": corrected, "eps": eps,
            "warmup_share": share, "warnings": problems}


def _warmup_share(optimizer, warmup_steps: int | None, total_steps: int | None) -> float | None:
    """The warm-up's share of the steps when it can be known: from the caller, else 0 when a torch scheduler
    already holds every group at its initial (peak) learning rate; None when unknown."""
    if warmup_steps is not None:
        return warmup_steps / total_steps if total_steps else (0.0 if warmup_steps == 0 else None)
    groups = optimizer.param_groups
    if groups and all("initial_lr" in g for g in groups):
        return 0.0 if all(g["lr"] >= g["initial_lr"] for g in groups) else None
    return None

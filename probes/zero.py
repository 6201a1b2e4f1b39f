"""DeepSpeed ZeRO (stages 1, 2 and 3) for probes: each parameter's part of this rank's reduced gradient, read
just before ZeRO's step.

Under ZeRO, ``engine.backward`` reduces the gradients after the autograd backward has ended, and each rank then keeps
only its partition's part of them; ``param.grad`` is None or not the gradient. So probes read them at another point
and through other objects (docs/deepspeed.md):

* **When**: at the start of the ZeRO optimiser's ``step()``. Every stage has reduced by then (gradient accumulation
  included), and nothing is unscaled or clipped yet. That optimiser is not a torch optimiser and has no hooks, so
  :func:`wrap_step` puts a wrapper on the instance; the handle's ``remove()`` takes it off. After the step,
  ``overflow`` says whether DeepSpeed skipped it.
* **What**: :class:`ZeroPart` stands for one parameter. ``.grad`` is this rank's part of its reduced gradient, from
  DeepSpeed's own accessors (ZeRO-1/2: the parameter's fragment of the rank's partition, ``param._hp_mapping``;
  ZeRO-3: ``get_local_fp32_grad_for_param``). ``.detach()`` is its part of the fp32 master weights, the ones the
  optimiser updates, and ``.optimizer_state(key)`` its part of Adam's moments. Squares are summed across ranks
  once per flush, as for FSDP (:func:`probes.distributed.sum_norms_`).
* **After clipping**: DeepSpeed clips inside its step and hands the torch optimiser inside it flat fp32 partitions;
  the session measures those in that optimiser's step pre-hook (:mod:`probes.step_events`).

Supported, and tested under torchrun on gloo against DeepSpeed's own assembled gradients and one process:
``DeepSpeedZeroOptimizer`` (stages 1 and 2) and ``DeepSpeedZeroOptimizer_Stage3``, in fp32, bf16 and fp16 (divided by
ZeRO's loss scale, :class:`LossScale`; an overflow is a skipped step); stages 2 and 3 also with
``offload_optimizer``.
Refused in one line by :func:`refuse_unsupported`: stage 0 (DeepSpeed's DDP-like engine, and its fp16/bf16
optimisers), which reduces after the backward without a ZeRO step to read at. Nothing here imports DeepSpeed.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

ZERO_OPTIMIZERS = ("DeepSpeedZeroOptimizer", "DeepSpeedZeroOptimizer_Stage3")
SUPPORTED = "ZeRO stage 1, 2 or 3 (zero_optimization.stage), or DDP"


class ZeroPart:
    """This rank's part of one parameter's gradient and master weights under ZeRO."""

    def __init__(self, param: nn.Parameter) -> None:
        self.param = param
        self.stage3 = hasattr(param, "ds_id")

    @property
    def grad(self) -> torch.Tensor | None:
        """This rank's part of the reduced, unclipped gradient (between ``engine.backward`` and ZeRO's step)."""
        if self.stage3:
            return self.param._z3_optimizer.get_local_fp32_grad_for_param(self.param)
        mapping = self.param._hp_mapping
        if mapping is None:  # no part of this parameter is in this rank's partition
            return None
        return mapping.get_lp_grad_fragment(self.param._index_in_param_group)

    @property
    def device(self) -> torch.device:
        return self.param.device

    def detach(self) -> torch.Tensor:
        """This rank's part of the fp32 master weights (empty when none of them is here)."""
        if self.stage3:
            return self.param._z3_optimizer.get_local_fp32_param(self.param).detach()
        mapping = self.param._hp_mapping
        if mapping is None:
            return torch.empty(0, dtype=torch.float32, device=self.param.device)
        return mapping.get_hp_fragment().detach()

    def optimizer_state(self, key: str) -> torch.Tensor | None:
        """This rank's part of the optimiser's ``key`` state (``exp_avg_sq``...); None before the first step."""
        if self.stage3:
            return self.param._z3_optimizer.get_local_fp32_param(self.param, key)
        mapping = self.param._hp_mapping
        if mapping is None or not mapping.optim_fragment or key not in mapping.optim_fragment:
            return None
        return mapping.get_optim_state_fragment(key)


def zero_optimizer(optimizer: Any) -> Any:
    """The ZeRO optimiser in ``optimizer`` or in one of its wrappers (Accelerate's, the Trainer's), else None."""
    for _ in range(4):
        if type(optimizer).__name__ in ZERO_OPTIMIZERS:
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
    return None


def from_deepspeed(thing: Any) -> bool:
    """Whether ``thing`` is an object of one of DeepSpeed's classes (its engine, its optimisers)."""
    return type(thing).__module__.split(".")[0] == "deepspeed"


def refuse_unsupported(model: nn.Module, optimizer: Any) -> None:
    """Raise a one-line ``ValueError`` for a DeepSpeed setting whose norms probes do not give exactly."""
    zero = zero_optimizer(optimizer)
    wrappers = [model, optimizer, getattr(optimizer, "optimizer", None)]
    if zero is None:
        if any(hasattr(param, "ds_id") for param in model.parameters()):
            raise ValueError("probes need the ZeRO optimiser of ZeRO-3 parameters: pass the DeepSpeed engine's "
                             "optimizer (engine.optimizer)")
        found = next((thing for thing in wrappers if from_deepspeed(thing)), None)
        if found is not None:
            raise ValueError(f"probes do not support DeepSpeed without ZeRO ({type(found).__name__}: stage 0 "
                             f"reduces gradients after the backward, with no ZeRO step to read them at); "
                             f"use {SUPPORTED}")


def named_parameters(model: nn.Module) -> list[tuple[str, ZeroPart]] | None:
    """``(name, part)`` of every trainable parameter under ZeRO, in the model's order; None without ZeRO."""
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if not any(hasattr(param, "ds_id") or hasattr(param, "_hp_mapping") for _, param in named):
        return None
    return [(name, ZeroPart(param)) for name, param in named]


class LossScale:
    """ZeRO's loss scale (fp16; 1 otherwise), read as the session reads a GradScaler's."""

    def __init__(self, zero: Any) -> None:
        self.zero = zero

    def _get_scale_async(self) -> torch.Tensor:
        return torch.tensor(float(self.zero.loss_scale))


def loss_scale(zero: Any) -> LossScale | None:
    """The loss scale to divide ZeRO's gradients by: fp16 only, else None."""
    return LossScale(zero) if zero is not None and zero.dtype == torch.float16 else None


class _Unwrap:
    """The handle of :func:`wrap_step`: ``remove()`` gives the optimiser back the ``step`` it had before."""

    def __init__(self, zero: Any) -> None:
        self.zero, self.previous = zero, zero.__dict__.get("step")  # another session's wrapper, or None

    def remove(self) -> None:
        if self.previous is None:
            self.zero.__dict__.pop("step", None)
        else:
            self.zero.step = self.previous


def wrap_step(zero: Any, before: Callable[[], None], after: Callable[[bool], None]) -> _Unwrap:
    """Call ``before()`` at the start of every ``zero.step()`` and ``after(applied)`` at its end; returns the handle
    that removes the wrapper (the step's own exceptions pass through, and then ``after`` is not called)."""
    handle, original = _Unwrap(zero), zero.step

    def step(*args, **kwargs):
        before()
        result = original(*args, **kwargs)
        after(not getattr(zero, "overflow", False))
        return result

    zero.step = step
    return handle


def is_part(param: Any) -> bool:
    """Whether ``param`` is a :class:`ZeroPart` (a partitioned gradient: squares are summed across ranks)."""
    return isinstance(param, ZeroPart)

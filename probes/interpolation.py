"""Interpolation during training: loss and accuracy on a held sample along the line from the start to now.

    sample = [{**tokenizer(texts, padding=True, return_tensors="pt"), "labels": labels}, ...]  # a few batches
    probe = Interpolation(sample, total_steps=1000)       # 10 times per run, a = -0.25, 0, 0.25, ..., 1.25
    with probes.attach(model, optimizer, "run.h5", probes=[probe]): ...

At a handful of steps the model is moved in place to theta_0 + a (theta_t - theta_0) for each a, where theta_0 are
the trainable weights when the probe was attached (for fine-tuning: the pre-trained encoder with the fresh head)
and theta_t the weights after the step's update, and the mean cross-entropy and the accuracy of the held sample
are measured there (Goodfellow et al. 2015; Mosbach et al. 2020, Fig. 7 after the fact): a descent, a plateau at
ln 2 (a failed run) or a barrier, step by step. ``last_update=True`` also measures the line
theta_{t-1} + a (theta_t - theta_{t-1}) through the step's update (a minimum below a = 1 means it overshot).

When: ``times`` evaluations spread evenly over ``total_steps`` (the last after the final update), else one every
``every`` steps; each is taken at the last step at or before its target that the session records. Records: series
``interpolation/start`` (and ``interpolation/last_update``), columns ``loss@a`` then ``accuracy@a``, axes ``a``
and ``field`` (docs/records.md); only the evaluated steps are appended.

The run does not notice: every module in eval mode (its own flag restored after), ``torch.no_grad``, the RNG state
forked and restored, the weights written back bit for bit (:class:`probes.model.interpolation.Subspace` moves them).
Memory: theta_0 is one copy of the trainable parameters, on their device or, with ``offload=True``, on the host;
an evaluation adds a transient copy of theta_t (and of theta_0 when offloaded, and of theta_{t-1} for the update
line). Distributed: every rank takes its slice of every batch and the sums are all-reduced at the flush; under
FSDP2 each rank moves its own shard. FSDP1 (flat parameters) is refused.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from probes import catalogue, zero
from probes.base import Declared, Probe
from probes.model.interpolation import Subspace

COEFFICIENTS = tuple(np.linspace(-0.25, 1.25, 7).tolist())
LINES = {"start": "theta_0 + a (theta_t - theta_0), theta_0 the weights at attach time",
         "last_update": "theta_{t-1} + a (theta_t - theta_{t-1}), through the step's update"}
SPECS = {"start": catalogue.INTERPOLATION_START, "last_update": catalogue.INTERPOLATION_LAST_UPDATE}


def evaluation_targets(total_steps: int, times: int) -> set[int]:
    """The 0-based steps after whose update to evaluate: ``times`` spread evenly, the last step included."""
    return {max(0, round(total_steps * k / times) - 1) for k in range(1, times + 1)}


class Interpolation(Probe):
    """Loss and accuracy of ``sample`` (batches of model inputs with ``labels``) on lines through the weights."""

    measured_only = True  # only the steps the probe evaluated

    def __init__(self, sample: Sequence[Mapping[str, torch.Tensor]], *, coefficients: Sequence[float] = COEFFICIENTS,
                 total_steps: int | None = None, times: int = 10, every: int = 100, last_update: bool = False,
                 offload: bool = False, autocast: torch.dtype | None = None) -> None:
        if not sample or any("labels" not in batch for batch in sample):
            raise ValueError("Interpolation needs a held sample: a non-empty list of batches, each with 'labels'")
        if not coefficients or min(times, every) < 1 or (total_steps is not None and total_steps < 1):
            raise ValueError("Interpolation needs coefficients, times >= 1, every >= 1 and total_steps >= 1")
        self.sample, self.coefficients = list(sample), [float(a) for a in coefficients]
        self.targets = evaluation_targets(total_steps, times) if total_steps else None
        self.every, self.offload, self.autocast = every, offload, autocast
        self.lines = ["start", "last_update"] if last_update else ["start"]
        self.width = 2 * len(self.coefficients) * len(self.lines)
        self._at_zero: torch.Tensor | None = None  # theta_0 itself: measured once
        self._before: list[torch.Tensor] | None = None

    def bind(self, session) -> None:
        if any(getattr(param, "_is_flat_param", False) for param in session.model.parameters()):
            raise ValueError("Interpolation does not support FSDP1 (flat parameters); use FSDP2 (fully_shard) or DDP")
        if any(zero.is_part(param) for param in session.table.params):
            raise ValueError("Interpolation does not support DeepSpeed ZeRO yet; use DDP or FSDP2 (fully_shard)")
        self.device, self.rank, self.world = session.device, session.rank, session.world
        self.count = sum(int(batch["labels"].numel()) for batch in self.sample)
        if any(len(batch["labels"]) < self.world for batch in self.sample):
            raise ValueError(f"every batch of the held sample needs at least {self.world} examples, one per rank")
        self.batches = [{key: value.tensor_split(self.world)[self.rank].to(self.device) for key, value in batch.items()}
                        for batch in self.sample]
        trainable = [(name, param) for name, param in zip(session.table.names, session.table.params)
                     if param.is_floating_point()]
        self.names, self.params = [name for name, _ in trainable], [_local(param) for _, param in trainable]
        self.theta_0 = [param.to("cpu", copy=True) if self.offload else param.clone() for param in self.params]
        self._sharded = [module for module in session.model.modules()  # FSDP2 modules: they gather and reshard
                         if callable(getattr(module, "reshard", None))] if session.sharded else []

    def series(self) -> list[Declared]:
        fields = ["loss"] * len(self.coefficients) + ["accuracy"] * len(self.coefficients)
        columns = [f"{field}@{a:g}" for field, a in zip(fields, self.coefficients * 2)]
        return [Declared(SPECS[line], columns, {"a": np.array(self.coefficients * 2), "field": np.array(fields)},
                         {"line": LINES[line], "examples": self.count,
                          "measured": "mean cross-entropy and accuracy of the held sample after the update of the "
                                      "step; eval mode, no_grad"}) for line in self.lines]

    def on_step(self, session, row: torch.Tensor) -> None:
        if "last_update" in self.lines and self._due(session):
            self._before = [param.clone() for param in self.params]

    def after_step(self, session, row: torch.Tensor) -> None:
        if not self._due(session):
            return
        start = [t.to(self.device) for t in self.theta_0] if self.offload else self.theta_0
        sums = [self._line(session.model, start, cache_zero=True)]
        if self._before is not None:
            sums.append(self._line(session.model, self._before, cache_zero=False))
            self._before = None
        row.copy_(torch.cat([s.flatten() for s in sums]).to(row))

    def reduce(self, session, block: torch.Tensor) -> None:
        if self.world > 1:
            dist.all_reduce(block)
        block.div_(self.count)

    def _due(self, session) -> bool:
        """Whether a target step lies between this recorded step and the next one the session records."""
        step = session.step
        while True:
            if (step in self.targets) if self.targets is not None else (step + 1) % self.every == 0:
                return True
            step += 1
            if session.schedule(step):
                return False

    def _line(self, model: nn.Module, start: list[torch.Tensor], cache_zero: bool) -> torch.Tensor:
        """Summed loss and correct count ``(2, n)`` of this rank's slice at start + a (theta_t - start)."""
        end = [param.clone() for param in self.params]
        space = Subspace(self.names, [start, end])
        sums = torch.zeros(2, len(self.coefficients), dtype=torch.float64, device=self.device)
        modes = [(module, module.training) for module in model.modules()]
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            model.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                for i, a in enumerate(self.coefficients):
                    if a == 0.0 and cache_zero and self._at_zero is not None:
                        sums[:, i] = self._at_zero
                        continue
                    space.move(self.params, (a,))
                    sums[:, i] = self._sums(model)
                    if a == 0.0 and cache_zero:
                        self._at_zero = sums[:, i].clone()
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, end)
            for module, training in modes:
                module.training = training
        return sums

    def _sums(self, model: nn.Module) -> torch.Tensor:
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch in self.batches:
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=bool(self.autocast)):
                logits = model(**inputs).logits.float()
            loss += F.cross_entropy(logits, batch["labels"], reduction="sum").double()
            correct += (logits.argmax(dim=-1) == batch["labels"]).sum()
        for module in self._sharded:  # FSDP2 keeps the root unsharded after a forward: gather the next point anew
            module.reshard()
        return torch.stack([loss, correct])


def _local(param: nn.Parameter) -> torch.Tensor:
    """The tensor this rank holds of ``param`` (its shard under FSDP2), sharing its storage."""
    return (param.to_local() if hasattr(param, "to_local") else param).detach()

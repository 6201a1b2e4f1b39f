"""Count the ATen operations dispatched in a scope: what a probe costs, as a number that does not depend on the load.

On a GPU every operation that computes is a kernel launch, and a small training step is bound by launches, so the
number of operations the probes add to a step is what they cost there. ``with OpCount() as count: step()`` counts
every operation torch dispatches inside the block (views and detaches included, though they launch nothing), on any
device; ``count.total`` is their number and ``count.ops`` the number per operation name. The probes' share of a
step is the count of the step with probes minus the count of the same step without them (:func:`added_ops`), and
:func:`probe_step_ops` counts it for a model on recorded and unrecorded steps (the test that pins the counts and
``bench/probe_overhead.py`` use it).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from probes.attaching import attach
from probes.schedule import Schedule


class OpCount(TorchDispatchMode):
    """A dispatch mode that counts each ATen operation it sees, by name, and runs it unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def added_ops(probed: Counter[str], plain: Counter[str]) -> Counter[str]:
    """The operations a step with probes dispatched beyond the same step without them (names absent from
    ``plain`` included); raises when the probed step dispatched fewer of some operation, which would mean the two
    steps were not the same."""
    fewer = plain - probed
    if fewer:
        raise ValueError(f"the step with probes dispatched fewer of {dict(fewer)}: not the same step")
    return probed - plain


@dataclass(frozen=True)
class StepOps:
    """The operations the probes added to one training step, and whether the step was recorded."""

    step: int
    recorded: bool
    ops: Counter[str]

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def probe_step_ops(build: Callable[[], nn.Module], batch: Mapping[str, torch.Tensor], steps: int = 3,
                   schedule: Schedule = Schedule(every=2, dense=0), probes: Sequence | None = None,
                   attach_with: Callable = attach) -> list[StepOps]:
    """Train two copies of ``build()`` for ``steps`` steps on ``batch`` (forward, backward, clipping at 1.0, AdamW),
    one with probes attached (``schedule``, ``probes``; nothing written), each step counted, and return what the
    probes added to each step. The default schedule records steps 0 and 2 and not step 1: the first recorded step,
    an unrecorded one and a recorded one after it. Clipping goes tensor by tensor here: under a dispatch mode
    torch's fused in-place operations (``_foreach_mul_``) leave the tensors' version counters alone, which would
    hide the clipping from the probes and count a cheaper path than a real run takes. ``attach_with`` is the
    ``attach`` of the probes to count (another version's, to compare)."""
    counts = []
    for probed in (False, True):
        model = build().train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        session = attach_with(model, optimizer, None, schedule=schedule, probes=probes) if probed else None
        try:
            per_step = []
            for _ in range(steps):
                with OpCount() as count:
                    model(**batch).loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=False)
                    optimizer.step()
                    optimizer.zero_grad()
                per_step.append(count.ops)
            counts.append(per_step)
        finally:
            if session is not None:
                session.close()
    return [StepOps(step, schedule(step), added_ops(probed, plain))
            for step, (plain, probed) in enumerate(zip(*counts))]

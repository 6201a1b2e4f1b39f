"""Probes for a Hugging Face ``Trainer``: ``trainer = Trainer(..., callbacks=[ProbeCallback("run.h5")])``.

``on_train_begin`` attaches a probe session to the Trainer's model and optimiser (steps counted from
``state.global_step``, so a resumed run continues its numbering); ``on_train_end`` flushes, removes every hook and
closes the records. The Trainer clips gradients before ``on_pre_optimizer_step``; the pre-clip norms here are read
at the end of the backward, so they are the unclipped ones the papers plotted, and post-clip totals are recorded
too. Under ``torchrun`` every rank computes and rank 0 writes. A probe that sets ``session.stop_requested`` stops
training at the end of that step (``control.should_training_stop``).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from transformers import TrainerCallback

from probes.records import RunMeta, RunWriter
from probes.base import Probe
from probes.schedule import Schedule
from probes.attaching import attach
from probes.session import ProbeSession


class ProbeCallback(TrainerCallback):
    """Attach probes for the length of ``trainer.train()``; records go to ``output`` (a path or an unstarted
    :class:`RunWriter`). Keyword options are those of :func:`probes.attach`."""

    def __init__(self, output: RunWriter | str | os.PathLike, *, schedule: Schedule | None = None,
                 probes: Sequence[Probe] | None = None, blocks: str | None = None, flush_every: int = 50,
                 strict: bool = False, post_clip: bool = True, meta: RunMeta | None = None) -> None:
        self.output = output
        self.options: dict[str, Any] = dict(schedule=schedule, probes=probes, blocks=blocks, flush_every=flush_every,
                                            strict=strict, post_clip=post_clip, meta=meta)
        self.session: ProbeSession | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.session is not None:
            self.session.close()
        warmup = args.get_warmup_steps(state.max_steps) if state.max_steps > 0 else None
        self.session = attach(model, optimizer, self.output, start_step=state.global_step, warmup_steps=warmup,
                              total_steps=state.max_steps or None, **self.options)

    def on_step_end(self, args, state, control, **kwargs):
        if self.session is not None and self.session.stop_requested:
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.session is not None:
            self.session.close()
            self.session = None

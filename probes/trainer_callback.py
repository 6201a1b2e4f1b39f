"""Probes for a Hugging Face ``Trainer``: ``trainer = Trainer(..., callbacks=[ProbeCallback("run.h5")])``.

``on_train_begin`` attaches a probe session to the Trainer's model and optimiser (steps counted from
``state.global_step``, so a resumed run continues its numbering); ``on_train_end`` flushes, removes every hook and
closes the records. The Trainer clips gradients before ``on_pre_optimizer_step``; the pre-clip norms here are read
at the end of the backward, so they are the unclipped ones the papers plotted, and post-clip totals are recorded
too. Under ``torchrun`` every rank computes and rank 0 writes. A probe that sets ``session.stop_requested`` stops
training at the end of that step (``control.should_training_stop``).

With ``report=True`` (the default) each training log of the Trainer also carries a compact summary of the records
(:mod:`probes.log_summary`: ``probes/grad_norm/encoder.3``, ``probes/early_warning/score``), so whatever
``report_to`` names shows them beside the loss. The Trainer calls callbacks in list order and puts its loggers
before the ``callbacks=`` it is given, too late for a value added to the logs; :meth:`ProbeCallback.add_to` puts
the callback ahead of them: ``ProbeCallback("run.h5").add_to(trainer)``.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

from transformers import DefaultFlowCallback, TrainerCallback

from probes.records import RunMeta, RunWriter
from probes.base import Probe
from probes.schedule import Schedule
from probes.attaching import attach
from probes.log_summary import LogSummary
from probes.session import ProbeSession


class ProbeCallback(TrainerCallback):
    """Attach probes for the length of ``trainer.train()``; records go to ``output`` (a path or an unstarted
    :class:`RunWriter`). ``report``: add the records' summary to the Trainer's training logs. Other keyword
    options are those of :func:`probes.attach`."""

    def __init__(self, output: RunWriter | str | os.PathLike, *, schedule: Schedule | None = None,
                 probes: Sequence[Probe] | None = None, blocks: str | None = None, flush_every: int = 50,
                 strict: bool = False, post_clip: bool = True, meta: RunMeta | None = None,
                 report: bool = True) -> None:
        self.output = output
        self.summary = LogSummary() if report else None
        self.ahead_of_loggers = False
        self.options: dict[str, Any] = dict(schedule=schedule, probes=probes, blocks=blocks, flush_every=flush_every,
                                            strict=strict, post_clip=post_clip, meta=meta)
        self.session: ProbeSession | None = None

    def add_to(self, trainer) -> "ProbeCallback":
        """Add this callback to ``trainer`` ahead of its loggers (right after its flow callback), so that they
        log the probes' summary with the Trainer's own numbers; returns the callback."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(1 if callbacks and isinstance(callbacks[0], DefaultFlowCallback) else 0, self)
        self.ahead_of_loggers = True
        return self

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.session is not None:
            self.session.close()
        if (self.summary is not None and getattr(args, "report_to", None) and not self.ahead_of_loggers
                and state.is_world_process_zero):
            warnings.warn(f"ProbeCallback runs after the Trainer's loggers ({', '.join(args.report_to)}), which will "
                          "not show the probes' summary; add it with ProbeCallback(...).add_to(trainer) instead of "
                          "callbacks=[...]", RuntimeWarning, stacklevel=2)
        warmup = args.get_warmup_steps(state.max_steps) if args is not None and state.max_steps > 0 else None
        self.session = attach(model, optimizer, self.output, start_step=state.global_step, warmup_steps=warmup,
                              total_steps=state.max_steps or None, **self.options)

    def on_step_end(self, args, state, control, **kwargs):
        if self.session is not None and self.session.stop_requested:
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        # every rank logs at the same steps, so the flush's collectives line up; only training logs carry "loss"
        if self.summary is None or self.session is None or not self.session.active or "loss" not in (logs or {}):
            return
        self.session.flush()
        if self.session.writer is None:
            return
        values = self.summary.new_values(self.session.writer)
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)  # the Trainer copied these logs into its history just before

    def on_train_end(self, args, state, control, **kwargs):
        if self.session is not None:
            self.session.close()
            self.session = None

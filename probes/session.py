"""The probe session: runs probes on a model and its optimiser, step by step, and owns their records.

:func:`probes.attach` makes one; ``with probes.attach(model, optimizer, "run.h5") as session:`` around a
training loop is all a run needs (docs/attaching.md). :class:`StepEvents` says when a
step's gradients are final, when it steps and when it was skipped; on recorded steps (``schedule``) the session
computes the per-tensor gradient norms in one fused pass (unscaled from a GradScaler), hands each probe its slice
of a device buffer row, and commits the row when the step ends; on the other steps the hooks return at once and
dispatch no operation (docs/probe-overhead.md). Steps are counted from ``start_step``, one per
``optimizer.step()`` or skipped step. Values stay on the device until a flush (when the next step needs a row and
``flush_every`` recorded steps wait, or a probe asked for one, and at close): one host copy, collectives across
ranks where a probe needs them, then rank 0 writes. :class:`RunScalars` always runs first. Every hook
handle is kept in ``hooks`` and removed in ``finally``. A failing probe warns once and the probes turn off; a
failing write warns once and recording stops; training goes on either way (``strict=True`` raises instead).
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import nn

from probes.records import RunWriter
from probes import distributed
from probes.base import HookRecord, Probe
from probes.model.layers import LayerMap
from probes.norms import tensor_norms, total_norm
from probes.rows import DeviceRows
from probes.run_scalars import LOSS, RunScalars
from probes.schedule import Schedule
from probes.step_events import StepEvents
from probes.table import ParameterTable, parameter_table


class ProbeSession:
    """Probes running on one model and optimiser; use :func:`attach` to make one (it is a context manager)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, writer: RunWriter | None,
                 probes: Sequence[Probe], schedule: Schedule, layers: LayerMap, *, scaler: Any = None,
                 start_step: int = 0, flush_every: int = 50, strict: bool = False, post_clip: bool = True,
                 owns_writer: bool = False, zero: Any = None):
        self.model, self.optimizer, self.layers = model, optimizer, layers
        self.table: ParameterTable = parameter_table(model, layers, distributed.named_parameters(model))
        self.scaler, self.writer, self.owns_writer = scaler, writer, owns_writer
        self.schedule, self.step, self.strict = schedule, start_step, strict
        self.rank, self.world = distributed.rank_and_world()
        self.sharded = distributed.is_sharded(self.table.params)
        self.device = self.table.params[0].device if self.table.params else torch.device("cpu")
        self.scalars = RunScalars(post_clip)
        self.probes = [self.scalars, *probes]
        self.hooks = HookRecord()
        self.recording = schedule(start_step)
        self.stop_requested = self.flush_requested = False
        self.grad_norms = self.grad_total = self.loss_scale = None
        self._flush_every = flush_every
        self.events = StepEvents(model, optimizer, self.table.params, self, zero)
        self._broken = self._closed = False
        self._warned: set[str] = set()

    @property
    def active(self) -> bool:
        return not (self._broken or self._closed)

    # ------------------------------------------------------------------------------------------ lifecycle

    def open(self) -> "ProbeSession":
        try:
            width = 0
            for probe in self.probes:
                probe.bind(self)
                probe.columns = slice(width, width + probe.width)
                width += probe.width
            self.rows = DeviceRows(width, self._flush_every, self.device, [probe.columns for probe in self.probes])
            if self.writer is not None:
                for probe in self.probes:
                    probe.declare(self.writer)
                if not self.writer.started:
                    self.writer.start()
            self.events.register(self.hooks)
            for probe in self.probes:
                probe.attach(self)
        except BaseException:
            self.hooks.remove_all()
            self._discard_writer()
            raise
        return self

    def close(self, collective: bool = True) -> None:
        """Flush what is recorded, remove every hook, close the writer if the session made it."""
        if self._closed:
            return
        try:
            if self.active and self.recording and self.rows.is_open:
                self._guarded(self._end_step, False)
            if not self._broken:
                self._guarded(self.flush, collective)
            self._closed = True
            for probe in self.probes:
                self._guarded(probe.detach, self)
        finally:
            self._closed = True
            self.hooks.remove_all()
            if self.owns_writer and self.writer is not None:
                self.writer.close()

    def __enter__(self) -> "ProbeSession":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        # After an exception other ranks may not reach the flush: skip its collectives then.
        self.close(collective=kind is None or self.world == 1)

    # ------------------------------------------------------------------------------------------ for the loop

    def log_scalars(self, loss: Any = None, lr: Any = None) -> None:
        """Loss / learning rate of the step in progress (once its forward ran), else of the step just taken."""
        if self.active:
            self.scalars.log(self, loss=loss, lr=lr)

    def step_loss(self) -> torch.Tensor:
        """The loss :class:`RunScalars` recorded for the step in progress (it runs first: from ``on_step`` or
        ``on_skip`` on, a 0-d tensor on the device, NaN when none was seen)."""
        return self.rows.open_parts()[0][LOSS]  # RunScalars' part comes first

    def flush(self, collective: bool = True) -> None:
        """Copy the recorded rows to the host (one synchronisation) and append them to the records."""
        self.flush_requested = False
        steps, block = self.rows.take()
        if not steps or (not collective and self.world > 1):
            return
        for probe in self.probes:
            part = block[:, probe.columns].contiguous()
            probe.reduce(self, part)
            block[:, probe.columns] = part
        host = block.cpu().numpy()
        self.flushed = (steps, host)  # every probe's combined columns, for probes that decide from others' signals
        for probe in self.probes:
            probe.on_flush(self, steps, host[:, probe.columns])
        if self.writer is None:
            return
        try:
            for probe in self.probes:
                probe.write(self.writer, steps, host[:, probe.columns])
            self.writer.flush()
        except Exception as error:  # a failing disk must not stop training
            self._give_up_writer()
            if self.strict:
                raise
            self._warn_once("write", f"probes could not write to the records ({error}); training goes on without them")

    # ------------------------------------------------------------------------------------------ step events

    def loss_seen(self, loss: torch.Tensor) -> None:
        if self.active and self.recording:  # nothing is dispatched for the loss of a step not recorded
            self.scalars.loss_seen(loss.detach())

    def backward_ended(self) -> None:
        if self.active and self.recording:
            self._guarded(self._read_gradients)

    def step_begins(self) -> None:
        if self.active and self.recording:
            parts = self._parts()
            for probe, part in zip(self.probes, parts):
                if probe.live(self):
                    self._guarded(probe.on_step, self, part)

    def step_ended(self, stepped: bool) -> None:
        if self.active and self.recording and stepped:
            parts = self._parts()
            for probe, part in zip(self.probes, parts):
                if probe.live(self):
                    self._guarded(probe.after_step, self, part)
        if self.active:
            self._guarded(self._end_step, stepped)

    def _read_gradients(self) -> None:
        scale = self.scaler._get_scale_async() if self.scaler is not None else None
        norms = tensor_norms([param.grad for param in self.table.params], self.device)
        self.loss_scale = scale
        self.grad_norms = norms if scale is None else norms / scale
        self.grad_total = total_norm(self.grad_norms)
        first = not self.rows.is_open
        for probe, part in zip(self.probes, self._parts()):
            if probe.live(self):
                probe.on_backward(self, part, first)

    def _parts(self) -> list[torch.Tensor]:
        """Each probe's part of the row of the step in progress; a flush that is due happens first (so the last
        step's row stays on the device until then, where ``log_scalars`` after ``optimizer.step()`` can still reach
        it)."""
        if not self.rows.is_open and (self.rows.full or (self.flush_requested and self.rows.steps)):
            self.flush()
        return self.rows.open_parts()

    def _end_step(self, stepped: bool) -> None:
        if self.recording:
            parts = self._parts()
            if not stepped:
                for probe, part in zip(self.probes, parts):
                    if probe.live(self):
                        probe.on_skip(self, part)
            self.rows.commit(self.step)
        self.step += 1
        self.recording = self.schedule(self.step)

    # ------------------------------------------------------------------------------------------ failures

    def _guarded(self, function, *args) -> None:
        """Run a probe callback; a failure warns once and turns the probes off (``strict`` raises instead)."""
        try:
            function(*args)
        except Exception as error:
            if self.strict:
                raise
            self._broken = True
            self._warn_once("probe", f"a probe failed in {getattr(function, '__qualname__', function)} "
                                     f"({type(error).__name__}: {error}); probes are off, training goes on")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _give_up_writer(self) -> None:
        """Stop writing after a failed write; a writer the session made is closed (what was flushed stays)."""
        writer, self.writer = self.writer, None
        if self.owns_writer:
            try:
                writer.close()
            except Exception:  # closing flushes HDF5's metadata, which a full disk can refuse too
                pass

    def _discard_writer(self) -> None:
        if self.owns_writer and self.writer is not None:
            path = self.writer.path
            self.writer.close()
            path.unlink(missing_ok=True)

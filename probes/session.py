"""The probe session: attaches probes to a model and its optimiser, drives them step by step, owns the records.

``with probes.attach(model, optimizer, "run.h5") as session:`` around a training loop is all a run needs (see
README, "Attaching probes to your own run"). The session registers native hooks only, each kept in ``hooks`` and
removed in ``finally``:

* a forward hook on the model puts a tensor hook on its outputs; when the backward reaches them it queues an
  autograd-engine callback, which queues a second one: that runs after every callback queued during the backward
  (DDP's all-reduce finaliser among them), when the gradients are final, and computes the per-tensor gradient norms
  in one fused pass, on recorded steps only;
* an optimiser step pre-hook and post-hook commit the step (so with accumulation the last backward wins);
* a forward pre-hook notices a step that ended without ``optimizer.step()`` (gradients cleared with
  ``zero_grad()``, as after a GradScaler skip) and records it as skipped; a loop that zeroes gradients in place
  (``set_to_none=False``) hides such steps, which then merge into the next one.
Steps are counted from ``start_step``, one per ``optimizer.step()`` or skipped step. Values stay on the device until
a flush (every ``flush_every`` recorded steps and at close). Only rank 0 writes; every rank computes.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from diagnostics.records import RunMeta, RunWriter
from probes import distributed
from probes.base import HookRecord, Probe
from probes.layers import LayerMap, find_layers
from probes.norms import tensor_norms, total_norm
from probes.rows import DeviceRows
from probes.run_scalars import RunScalars
from probes.schedule import Schedule
from probes.table import ParameterTable, parameter_table

_engine = torch.autograd.Variable._execution_engine


class ProbeSession:
    """Probes running on one model and optimiser; use :func:`attach` to make one (it is a context manager)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, writer: RunWriter | None,
                 probes: Sequence[Probe], schedule: Schedule, layers: LayerMap, *, scaler: Any = None,
                 start_step: int = 0, flush_every: int = 50, strict: bool = False, post_clip: bool = True,
                 owns_writer: bool = False):
        self.model, self.optimizer, self.layers = model, optimizer, layers
        self.table: ParameterTable = parameter_table(model, layers)
        self.scaler, self.writer, self.owns_writer = scaler, writer, owns_writer
        self.schedule, self.step, self.strict = schedule, start_step, strict
        self.rank, self.world = distributed.rank_and_world()
        self.sharded = distributed.is_sharded(self.table.params)
        self.device = self.table.params[0].device if self.table.params else torch.device("cpu")
        self.scalars = RunScalars(post_clip)
        self.probes = [self.scalars, *probes]
        self.hooks = HookRecord()
        self.recording = schedule(start_step)
        self.stop_requested = False
        self.grad_norms = self.grad_total = self.loss_scale = None
        self._flush_every = flush_every
        self._broken = self._closed = self._queued = self._stepping = False
        self._forward_seen = self._backward_seen = False
        self._warned: set[str] = set()
        self._loss_sum, self._loss_count, self._given = None, 0, {}

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
            self.rows = DeviceRows(width, self._flush_every, self.device)
            if self.writer is not None:
                for probe in self.probes:
                    probe.declare(self.writer)
                if not getattr(self.writer, "_started", False):
                    self.writer.start()
            self._register()
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
        if self._forward_seen or self._backward_seen or self._stepping:
            self._given.update({k: v for k, v in (("loss", loss), ("lr", lr)) if v is not None})
        elif self.rows.steps and self.rows.steps[-1] == self.step - 1:
            self.scalars.set(self.rows.last_row()[self.scalars.columns], loss=loss, lr=lr)

    def step_loss(self) -> Any:
        if "loss" in self._given:
            return self._given["loss"]
        return None if not self._loss_count else self._loss_sum / self._loss_count

    def step_lr(self) -> Any:
        return self._given.get("lr", self.optimizer.param_groups[0]["lr"])

    def flush(self, collective: bool = True) -> None:
        """Copy the recorded rows to the host (one synchronisation) and append them to the records."""
        steps, block = self.rows.take()
        if not steps or (not collective and self.world > 1):
            return
        for probe in self.probes:
            part = block[:, probe.columns].contiguous()
            probe.reduce(self, part)
            block[:, probe.columns] = part
        host = block.cpu().numpy()
        for probe in self.probes:
            probe.on_flush(self, steps, host[:, probe.columns])
        if self.writer is None:
            return
        try:
            for probe in self.probes:
                probe.write(self.writer, steps, host[:, probe.columns])
            self.writer.flush()
        except Exception as error:  # a failing disk must not stop training
            if self.strict:
                raise
            self._warn_once("write", f"probes could not write to the records ({error}); training goes on without them")
            self.writer = None

    # ------------------------------------------------------------------------------------------ hooks

    def _register(self) -> None:
        model, add = self.model, self.hooks.add
        add(model.register_forward_pre_hook(self._on_forward_start), "notice a step skipped since the last backward")
        add(model.register_forward_hook(self._on_forward_end), "capture the loss; find the end of the backward")
        add(self.optimizer.register_step_pre_hook(self._on_step), "commit the step, read post-clip norms")
        add(self.optimizer.register_step_post_hook(self._after_step), "end the step after the update")
        for probe in self.probes:
            probe.attach(self)

    def _on_forward_start(self, module, args) -> None:
        self._queued = False  # a new graph: a backward that raised earlier must not block this one's callback
        if self.active and self._backward_seen and not self._stepping and torch.is_grad_enabled():
            if all(param.grad is None for param in self.table.params):
                self._guarded(self._end_step, False)

    def _on_forward_end(self, module, args, output) -> None:
        if not (self.active and torch.is_grad_enabled()):
            return
        tensors = [t for t in _top_level_tensors(output) if t.requires_grad]
        for tensor in tensors:
            tensor.register_hook(self._on_output_grad)
        self._forward_seen = self._forward_seen or bool(tensors)
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if tensors and self.recording and torch.is_tensor(loss) and loss.numel() == 1:
            loss = loss.detach().float().reshape(())
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1

    def _on_output_grad(self, grad: torch.Tensor) -> None:
        if not self._queued:
            self._queued = True
            _engine.queue_callback(lambda: _engine.queue_callback(self._on_backward_end))

    def _on_backward_end(self) -> None:
        self._queued = False
        self._backward_seen = True
        if self.active and self.recording:
            self._guarded(self._read_gradients)

    def _read_gradients(self) -> None:
        scale = self.scaler._get_scale_async() if self.scaler is not None else None
        norms = tensor_norms([param.grad for param in self.table.params], self.device)
        self.loss_scale = scale
        self.grad_norms = norms if scale is None else norms / scale
        self.grad_total = total_norm(self.grad_norms)
        first = not self.rows.is_open
        row = self.rows.open_row()
        for probe in self.probes:
            probe.on_backward(self, row[probe.columns], first)

    def _on_step(self, optimizer, args, kwargs) -> None:
        self._stepping = True
        if self.active and self.recording:
            row = self.rows.open_row()
            for probe in self.probes:
                self._guarded(probe.on_step, self, row[probe.columns])

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self.active and self.recording:
            row = self.rows.open_row()
            for probe in self.probes:
                self._guarded(probe.after_step, self, row[probe.columns])
        if self.active:
            self._guarded(self._end_step, True)
        self._stepping = False

    def _end_step(self, stepped: bool) -> None:
        if self.recording:
            row = self.rows.open_row()
            if not stepped:
                for probe in self.probes:
                    probe.on_skip(self, row[probe.columns])
            self.rows.commit(self.step)
            if self.rows.full:
                self.flush()
        self.step += 1
        self.recording = self.schedule(self.step)
        self._forward_seen = self._backward_seen = False
        self._loss_sum, self._loss_count, self._given = None, 0, {}

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

    def _discard_writer(self) -> None:
        if self.owns_writer and self.writer is not None:
            path = self.writer.path
            self.writer.close()
            path.unlink(missing_ok=True)


def attach(model: nn.Module, optimizer: torch.optim.Optimizer, writer: RunWriter | str | os.PathLike | None, *,
           schedule: Schedule | None = None, probes: Sequence[Probe] | None = None, blocks: str | None = None,
           scaler: Any = None, start_step: int = 0, flush_every: int = 50, strict: bool = False,
           post_clip: bool = True, meta: RunMeta | None = None) -> ProbeSession:
    """Attach probes (default: gradient norms and activation gradients) to a run; returns the open session.

    ``writer``: a :class:`RunWriter` not yet started (the probes declare their series, then the session starts it
    and leaves it open), a path for a new records file (closed with the session), or None to record nothing. On
    ranks other than 0 it is ignored. ``blocks`` names the encoder ModuleList of a model not found automatically;
    ``scaler`` is the GradScaler of an AMP loop (found by itself on an Accelerate optimiser). ``post_clip=False``
    skips the post-clipping total (a second pass over the gradients, ~2% of a BERT-base step on a CPU).
    """
    from probes.activation_gradients import ActivationGradients
    from probes.gradient_norms import GradientNorms

    inner = distributed.unwrap_model(model)
    chosen = list(probes) if probes is not None else [GradientNorms(), ActivationGradients()]
    session = ProbeSession(inner, distributed.unwrap_optimizer(optimizer), None, chosen, schedule or Schedule(),
                           find_layers(inner, blocks), scaler=distributed.scaler_of(optimizer, scaler),
                           start_step=start_step, flush_every=flush_every, strict=strict, post_clip=post_clip)
    if session.rank == 0 and isinstance(writer, RunWriter):
        session.writer = writer
    elif session.rank == 0 and writer is not None:
        session.writer = RunWriter.create(writer, meta or RunMeta(model=type(inner).__name__))
        session.owns_writer = True
    return session.open()


def _top_level_tensors(output: Any) -> Iterator[torch.Tensor]:
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else [output]
    return (value for value in values if torch.is_tensor(value))

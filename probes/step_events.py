"""Native hooks that tell when a training step's gradients are final, when it steps, and when it was skipped.

:class:`StepEvents` registers, on a model and its optimiser, hooks that call a listener (the probe session):

* ``backward_ended()``: a forward hook on the model puts a tensor hook on its outputs; when the backward reaches
  them it queues an autograd-engine callback, which queues a second one. That second callback runs after every
  callback queued during the backward (DDP's all-reduce finaliser, FSDP's post-backward among them), so the
  gradients are final: accumulated, all-reduced, still scaled by a GradScaler;
* ``step_begins()`` and ``step_ended(True)``: an optimiser step pre-hook and post-hook (with accumulation the
  last backward before the step is the one that counts);
* ``step_ended(False)``: a forward pre-hook notices that a step ended without ``optimizer.step()`` (all gradients
  cleared with ``zero_grad()``, as after a GradScaler skip). A loop that zeroes gradients in place
  (``set_to_none=False``) hides such steps, which then merge into the next one;
* ``loss_seen(loss)``: the model's ``output.loss`` of each training forward (one element, not detached: the
  listener detaches it only on a step it records, so that the others dispatch no operation).

Under DeepSpeed ZeRO (``zero``: its optimiser; ``optimizer``: the torch one inside it) gradients are reduced after
the autograd backward, so ``backward_ended()`` and ``step_begins()`` come together at the start of ZeRO's step, and
``step_ended(applied)`` at its end (:func:`probes.zero.wrap_step`). ZeRO clips inside its step: the torch
optimiser's step pre-hook (once per parameter group) measures the clipped gradients it is given, this rank's part,
into ``post_clip_norm``, on the steps the listener is ``recording``.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

from probes import zero as zero_steps
from probes.base import HookRecord
from probes.norms import combine, tensor_norms, total_norm

_engine = torch.autograd.Variable._execution_engine


class StepEvents:
    """Step boundaries of a run, from hooks on ``model`` and ``optimizer``; ``params`` are the trainable ones."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                 listener: Any, zero: Any = None) -> None:
        self.model, self.optimizer, self.params, self.listener, self.zero = model, optimizer, params, listener, zero
        self.queued = self.stepping = self.forward_seen = self.backward_seen = False
        self.post_clip_norm: torch.Tensor | None = None

    @property
    def in_step(self) -> bool:
        """Whether the current step has begun (a training forward ran since the last step ended)."""
        return self.forward_seen or self.backward_seen or self.stepping

    def register(self, hooks: HookRecord) -> None:
        add = hooks.add
        add(self.model.register_forward_pre_hook(self._forward_starts), "notice a step skipped since the last one")
        add(self.model.register_forward_hook(self._forward_ends), "capture the loss; find the end of the backward")
        if self.zero is not None:
            add(zero_steps.wrap_step(self.zero, self._zero_step_begins, self._end),
                "read ZeRO's reduced gradients before its step; end the step after it")
            add(self.optimizer.register_step_pre_hook(self._clipped), "measure the clipped gradients ZeRO steps with")
            return
        add(self.optimizer.register_step_pre_hook(self._step_begins), "read the step before the update")
        add(self.optimizer.register_step_post_hook(self._step_ends), "end the step after the update")

    def _forward_starts(self, module, args) -> None:
        self.queued = False  # a new graph: a backward that raised earlier must not block this one's callback
        if self.backward_seen and not self.stepping and torch.is_grad_enabled():
            if all(param.grad is None for param in self.params):
                self._end(stepped=False)

    def _forward_ends(self, module, args, output) -> None:
        if not torch.is_grad_enabled():
            return
        tensors = [tensor for tensor in _top_level_tensors(output) if tensor.requires_grad]
        for tensor in tensors if self.zero is None else ():
            tensor.register_hook(self._output_grad)
        if not tensors:
            return
        self.forward_seen = True
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if torch.is_tensor(loss) and loss.numel() == 1:
            self.listener.loss_seen(loss)

    def _output_grad(self, grad: torch.Tensor) -> None:
        if not self.queued:
            self.queued = True
            _engine.queue_callback(lambda: _engine.queue_callback(self._backward_ends))

    def _backward_ends(self) -> None:
        self.queued = False
        self.backward_seen = True
        self.listener.backward_ended()

    def _step_begins(self, optimizer, args, kwargs) -> None:
        self.stepping = True
        self.listener.step_begins()

    def _step_ends(self, optimizer, args, kwargs) -> None:
        self._end(stepped=True)

    def _zero_step_begins(self) -> None:
        self.backward_seen = self.stepping = True
        self.post_clip_norm = None
        self.listener.backward_ended()
        self.listener.step_begins()

    def _clipped(self, optimizer, args, kwargs) -> None:
        grads = [param.grad for group in optimizer.param_groups for param in group["params"]]
        if self.stepping and self.listener.recording and any(grad is not None for grad in grads):
            device = next(grad for grad in grads if grad is not None).device
            norm = total_norm(tensor_norms(grads, device))
            self.post_clip_norm = combine(self.post_clip_norm, norm, self.post_clip_norm is None)

    def _end(self, stepped: bool) -> None:
        self.forward_seen = self.backward_seen = self.stepping = False
        self.listener.step_ended(stepped)


def _top_level_tensors(output: Any) -> Iterator[torch.Tensor]:
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else [output]
    return (value for value in values if torch.is_tensor(value))

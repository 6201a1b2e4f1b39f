"""The probe every session runs: per recorded step, the loss, the learning rate, the total gradient norm before
and after clipping, a non-finite flag, whether the step was skipped and the loss scale (series ``scalars/train``).

``grad_norm_pre_clip`` is read at the end of the step's last backward: after gradient accumulation, after DDP's
all-reduce, divided by the GradScaler's scale (as the papers logged it). ``grad_norm_post_clip`` is the norm inside
``optimizer.step()``, after whatever clipping the loop or the Trainer did (NaN with ``post_clip=False``). On a CPU
it is usually known without a second pass over the gradients: when clipping multiplied every gradient by one
number, it is the pre-clip total times that number, read off two small tensors (:func:`probes.norms.scale_factor`);
any other change to the gradients, and any other device, takes one fused pass. ``nonfinite`` is 1 when the
pre-clip norm is NaN or infinite (a step marks it measured, the flush tells which from the pre-clip norm);
``skipped`` is 1 when no ``optimizer.step()`` followed (a GradScaler skips on inf/NaN). The loss is the mean over
micro-batches of the model's ``output.loss``, or what ``session.log_scalars`` was given; the learning rate is
``param_groups[0]["lr"]`` at the step unless given. NaN means not measured.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from probes import catalogue, distributed
from probes.base import Declared, Probe
from probes.norms import scale_factor, tensor_norms, total_norm, versions

COLUMNS = catalogue.TRAIN.columns
LOSS, LR, PRE, POST, NONFINITE, SKIPPED, SCALE = range(len(COLUMNS))
ATTRS = {"grad_norm_pre_clip": "L2 norm of all gradients at the end of the step's last backward: after "
                               "accumulation and all-reduce, unscaled, before clipping",
         "grad_norm_post_clip": "L2 norm of all gradients inside optimizer.step(), after clipping",
         "loss": "mean over micro-batches of the model's output.loss, or the value given to log_scalars"}


class RunScalars(Probe):
    """Loss, learning rate, total gradient norm before and after clipping, non-finite and skipped flags."""

    width = len(COLUMNS)

    def __init__(self, post_clip: bool = True) -> None:
        self.post_clip = post_clip
        self._witnesses: list[int] = []
        self._before: tuple[list[int], list[float], torch.Tensor] | None = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._given: dict[str, Any] = {}

    def bind(self, session) -> None:
        if session.device.type == "cpu" and not session.sharded:  # elsewhere the full pass is cheap and sync-free
            sizes = [param.numel() for param in session.table.params]
            self._witnesses = sorted(range(len(sizes)), key=sizes.__getitem__)[:2]

    def series(self) -> list[Declared]:
        return [Declared(catalogue.TRAIN, COLUMNS, attrs=ATTRS)]

    def loss_seen(self, loss: torch.Tensor) -> None:
        """The detached ``output.loss`` of a training forward of a recorded step (stays on the device)."""
        loss = loss.float()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_count += 1

    def log(self, session, loss: Any = None, lr: Any = None) -> None:
        """Values the loop gives: for the recorded step in progress, else for the step just taken (while its row is
        still on the device: the session flushes only when the next step needs a row)."""
        given = {key: value.detach() if torch.is_tensor(value) else value
                 for key, value in (("loss", loss), ("lr", lr)) if value is not None}
        if session.events.in_step:
            if session.recording:
                self._given.update(given)
        elif session.rows.steps and session.rows.steps[-1] == session.step - 1:
            self._set(session.rows.last_row()[self.columns].unbind(), **given)

    def on_backward(self, session, row: torch.Tensor, first: bool) -> None:
        cells = row.unbind()
        cells[PRE].copy_(session.grad_total)
        cells[NONFINITE].fill_(0.0)  # measured: the flush sets it from the pre-clip norm
        scale = session.loss_scale
        if scale is not None:
            cells[SCALE].copy_(scale.reshape(()))
        if self.post_clip and self._witnesses:
            raw = session.grad_norms if scale is None else session.grad_norms * scale
            total = session.grad_total if scale is None else total_norm(raw)
            norms = raw.tolist()  # a CPU tensor: no device to wait for, no operation dispatched
            witness_norms = [norms[index] for index in self._witnesses]
            self._before = (versions([param.grad for param in session.table.params]), witness_norms, total)

    def on_step(self, session, row: torch.Tensor) -> None:
        cells = row.unbind()
        if self.post_clip and session.events.zero is None:
            grads = [param.grad for param in session.table.params]
            factor = scale_factor(grads, *self._before[:2], self._witnesses) if self._before else None
            if factor is None:
                cells[POST].copy_(total_norm(tensor_norms(grads, session.device)))
            else:
                torch.mul(self._before[2], factor, out=cells[POST])
            self._before = None
        self._finish(session, cells, skipped=False)

    def after_step(self, session, row: torch.Tensor) -> None:
        if self.post_clip and session.events.post_clip_norm is not None:  # ZeRO: measured inside its step
            row[POST] = session.events.post_clip_norm

    def on_skip(self, session, row: torch.Tensor) -> None:
        self._finish(session, row.unbind(), skipped=True)

    def reduce(self, session, block: torch.Tensor) -> None:
        loss = block[:, LOSS].contiguous()
        distributed.mean_(loss, session.world)
        block[:, LOSS] = loss
        if session.sharded:
            norms = block[:, PRE:POST + 1].contiguous()
            distributed.sum_norms_(norms, session.world)
            block[:, PRE:POST + 1] = norms
        flags = (~torch.isfinite(block[:, PRE])).float()
        block[:, NONFINITE] = torch.where(block[:, NONFINITE].isnan(), block[:, NONFINITE], flags)

    def _finish(self, session, cells: Sequence[torch.Tensor], skipped: bool) -> None:
        cells[SKIPPED].fill_(float(skipped))
        mean = None
        if self._loss_count:
            mean = self._loss_sum if self._loss_count == 1 else self._loss_sum / self._loss_count
        self._set(cells, loss=self._given.get("loss", mean),
                  lr=self._given.get("lr", session.optimizer.param_groups[0]["lr"]))
        self._loss_sum, self._loss_count, self._given = None, 0, {}

    @staticmethod
    def _set(cells: Sequence[torch.Tensor], loss: Any = None, lr: Any = None) -> None:
        """Write a loss and a learning rate (detached tensors or numbers) into a row's cells, on the device."""
        for column, value in ((LOSS, loss), (LR, lr)):
            if torch.is_tensor(value):
                cells[column].copy_(value.reshape(()) if value.dim() else value)
            elif value is not None:
                cells[column].fill_(float(value))

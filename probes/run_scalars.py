"""The probe every session runs: per recorded step, the loss, the learning rate, the total gradient norm before
and after clipping, a non-finite flag, whether the step was skipped and the loss scale (series ``scalars/train``).

``grad_norm_pre_clip`` is read at the end of the step's last backward: after gradient accumulation, after DDP's
all-reduce, divided by the GradScaler's scale (as the papers logged it). ``grad_norm_post_clip`` is the norm inside
``optimizer.step()``, after whatever clipping the loop or the Trainer did (NaN with ``post_clip=False``). On a CPU
it is usually known without a second pass over the gradients: when clipping multiplied every gradient by one
number, it is the pre-clip total times that number, read off two small tensors
(:func:`probes.norms.rescaled_total`); any other change to the gradients takes the full pass. ``nonfinite`` is 1 when the pre-clip norm is NaN or infinite; ``skipped`` is
1 when no ``optimizer.step()`` followed (a GradScaler skips on inf/NaN). The loss is the mean over micro-batches of
the model's ``output.loss``, or what ``session.log_scalars`` was given; the learning rate is
``param_groups[0]["lr"]`` at the step unless given. NaN means not measured.
"""
from __future__ import annotations

from typing import Any

import torch

from probes import catalogue, distributed
from probes.base import Declared, Probe
from probes.norms import rescaled_total, tensor_norms, total_norm, versions

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
        self._before: tuple[list[int], torch.Tensor, torch.Tensor] | None = None
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
        """The ``output.loss`` of a training forward of a recorded step (stays on the device)."""
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_count += 1

    def log(self, session, loss: Any = None, lr: Any = None) -> None:
        """Values the loop gives: for the recorded step in progress, else for the step just taken (while its row is
        still on the device: the session flushes only when the next step needs a row)."""
        given = {key: value for key, value in (("loss", loss), ("lr", lr)) if value is not None}
        if session.events.in_step:
            if session.recording:
                self._given.update(given)
        elif session.rows.steps and session.rows.steps[-1] == session.step - 1:
            self._set(session.rows.last_row()[self.columns], **given)

    def on_backward(self, session, row: torch.Tensor, first: bool) -> None:
        row[PRE] = session.grad_total
        row[NONFINITE] = (~torch.isfinite(session.grad_total)).float()
        if session.loss_scale is not None:
            row[SCALE] = session.loss_scale.reshape(())
        if self.post_clip and self._witnesses:
            raw = session.grad_norms if session.loss_scale is None else session.grad_norms * session.loss_scale
            self._before = (versions([param.grad for param in session.table.params]), raw, total_norm(raw))

    def on_step(self, session, row: torch.Tensor) -> None:
        if self.post_clip and session.events.zero is None:
            grads = [param.grad for param in session.table.params]
            known = rescaled_total(grads, *self._before, self._witnesses) if self._before else None
            row[POST] = known if known is not None else total_norm(tensor_norms(grads, session.device))
            self._before = None
        self._finish(session, row, skipped=False)

    def after_step(self, session, row: torch.Tensor) -> None:
        if self.post_clip and session.events.post_clip_norm is not None:  # ZeRO: measured inside its step
            row[POST] = session.events.post_clip_norm

    def on_skip(self, session, row: torch.Tensor) -> None:
        self._finish(session, row, skipped=True)

    def reduce(self, session, block: torch.Tensor) -> None:
        loss = block[:, LOSS].contiguous()
        distributed.mean_(loss, session.world)
        block[:, LOSS] = loss
        if session.sharded:
            norms = block[:, PRE:POST + 1].contiguous()
            distributed.sum_norms_(norms, session.world)
            block[:, PRE:POST + 1] = norms
            block[:, NONFINITE] = (~torch.isfinite(block[:, PRE])).float()

    def _finish(self, session, row: torch.Tensor, skipped: bool) -> None:
        row[SKIPPED] = float(skipped)
        mean = None if not self._loss_count else self._loss_sum / self._loss_count
        self._set(row, loss=self._given.get("loss", mean),
                  lr=self._given.get("lr", session.optimizer.param_groups[0]["lr"]))
        self._loss_sum, self._loss_count, self._given = None, 0, {}

    @staticmethod
    def _set(row: torch.Tensor, loss: Any = None, lr: Any = None) -> None:
        """Write a loss and a learning rate into a row (tensors stay on the device)."""
        if loss is not None:
            row[LOSS] = loss.detach().float().reshape(()) if torch.is_tensor(loss) else float(loss)
        if lr is not None:
            row[LR] = lr.detach().float().reshape(()) if torch.is_tensor(lr) else float(lr)

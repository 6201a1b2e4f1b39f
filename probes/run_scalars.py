"""The probe every session runs: per recorded step, the total gradient norm before and after clipping, the loss,
the learning rate, a non-finite flag, whether the step was skipped and the loss scale (kind ``scalars``, series
``probe``).

``grad_norm_pre_clip`` is read at the end of the step's last backward: after gradient accumulation, after DDP's
all-reduce, divided by the GradScaler's scale (as the papers logged it). ``grad_norm_post_clip`` is read inside
``optimizer.step()``, after whatever clipping the loop or the Trainer did (NaN with ``post_clip=False``, which saves
that second pass over the gradients). ``nonfinite`` is 1 when the pre-clip norm
is NaN or infinite; ``skipped`` is 1 when no ``optimizer.step()`` followed (a GradScaler skips on inf/NaN). The loss
is the mean over micro-batches of the model's ``output.loss``, or what ``session.log_scalars`` was given; the
learning rate is ``param_groups[0]["lr"]`` at the step. NaN means not measured.
"""
from __future__ import annotations

import numpy as np
import torch

from probes import distributed
from probes.base import Probe
from probes.norms import tensor_norms, total_norm

COLUMNS = ("loss", "lr", "grad_norm_pre_clip", "grad_norm_post_clip", "nonfinite", "skipped", "loss_scale")
LOSS, LR, PRE, POST, NONFINITE, SKIPPED, SCALE = range(len(COLUMNS))
SERIES = "probe"


class RunScalars(Probe):
    """Loss, learning rate, total gradient norm before and after clipping, non-finite and skipped flags."""

    width = len(COLUMNS)

    def __init__(self, post_clip: bool = True) -> None:
        self.post_clip = post_clip

    def declare(self, writer) -> None:
        writer.add_series(SERIES, COLUMNS, kind="scalars", attrs={
            "grad_norm_pre_clip": "L2 norm of all gradients at the end of the step's last backward: after "
                                  "accumulation and all-reduce, unscaled, before clipping",
            "grad_norm_post_clip": "L2 norm of all gradients inside optimizer.step(), after clipping",
            "loss": "mean over micro-batches of the model's output.loss, or the value given to log_scalars"})

    def on_backward(self, session, row: torch.Tensor, first: bool) -> None:
        row[PRE] = session.grad_total
        row[NONFINITE] = (~torch.isfinite(session.grad_total)).float()
        if session.loss_scale is not None:
            row[SCALE] = session.loss_scale.reshape(())

    def on_step(self, session, row: torch.Tensor) -> None:
        if self.post_clip:  # a second pass over every gradient: the dearest part of a recorded step on a CPU
            row[POST] = total_norm(tensor_norms([param.grad for param in session.table.params], session.device))
        self._finish(session, row, skipped=False)

    def on_skip(self, session, row: torch.Tensor) -> None:
        self._finish(session, row, skipped=True)

    def set(self, row: torch.Tensor, loss=None, lr=None) -> None:
        """Write a loss and learning rate given by the training loop (tensors stay on the device)."""
        if loss is not None:
            row[LOSS] = loss.detach().float().reshape(()) if torch.is_tensor(loss) else float(loss)
        if lr is not None:
            row[LR] = lr.detach().float().reshape(()) if torch.is_tensor(lr) else float(lr)

    def reduce(self, session, block: torch.Tensor) -> None:
        loss = block[:, LOSS].contiguous()
        distributed.mean_(loss, session.world)
        block[:, LOSS] = loss
        if session.sharded:
            norms = block[:, PRE:POST + 1].contiguous()
            distributed.sum_norms_(norms, session.world)
            block[:, PRE:POST + 1] = norms
            block[:, NONFINITE] = (~torch.isfinite(block[:, PRE])).float()

    def write(self, writer, steps: list[int], block: np.ndarray) -> None:
        for step, values in zip(steps, block):
            writer.append(SERIES, step, values)

    def _finish(self, session, row: torch.Tensor, skipped: bool) -> None:
        row[SKIPPED] = float(skipped)
        self.set(row, loss=session.step_loss(), lr=session.step_lr())

"""Head-to-encoder gradient ratio per depth (kind ``gradient_norms``, series ``head_ratio``).

In a failing run the encoder's gradients vanish while the classifier's stay large (Mosbach et al. 2020, Fig. 4a):
the ratio ||grad head|| / ||grad encoder.d|| grows by orders of magnitude. One column per encoder block
(``encoder.1`` ... ``encoder.L``, or ``encoder.shared`` for ALBERT), from the same pre-clipping per-tensor norms as
``gradient_norms/layers`` (read at the end of the step's last backward), combined on the device.
"""
from __future__ import annotations

import torch

from probes import catalogue
from probes.base import Declared, Probe


class HeadEncoderRatio(Probe):
    """||grad of the head|| / ||grad of encoder block d|| for every block d, before clipping."""

    def bind(self, session) -> None:
        table = session.table
        if "head" not in table.layers:
            raise ValueError("HeadEncoderRatio needs a head (parameters outside the base model); this model has none")
        self.blocks = [name for name in table.layers if name.startswith("encoder.")]
        self.width = len(self.blocks)
        index = torch.as_tensor(table.layer_index, device=session.device)
        self._in_block = torch.stack([index == table.layers.index(name) for name in self.blocks]).double()
        self._in_head = (index == table.layers.index("head")).double()

    def series(self) -> list[Declared]:
        return [Declared(catalogue.HEAD_RATIO, self.blocks, attrs={
            "ratio": "||grad head|| / ||grad encoder block||, L2, before clipping",
            "read_at": "end of the step's last backward"})]

    def on_backward(self, session, row: torch.Tensor, first: bool) -> None:
        squares = session.grad_norms.double().square()  # float32 squares of norms below 1e-19 would underflow
        row.copy_((self._in_head @ squares).sqrt() / (self._in_block @ squares).sqrt())

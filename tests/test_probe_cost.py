"""What the probes cost a training step, counted: the ATen operations they add (each a kernel launch on a GPU) on
an unrecorded step (none) and on a recorded one (a few, plus at most two per added layer), on tiny BERTs of 2 and
4 layers (``probes.op_count``; docs/probe-overhead.md). Run: ``python3 -m pytest tests/test_probe_cost.py``."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

import probes
import tiny
from probes.op_count import OpCount, added_ops, probe_step_ops

RECORDED_AT_MOST = 20  # with 2 layers: 18 when pinned, 78 with the probes of 8f25557


@pytest.fixture(scope="module")
def counted() -> dict[int, list]:
    """The operations the default probes add to steps 0 (recorded), 1 (not) and 2 (recorded) per depth."""
    return {layers: probe_step_ops(lambda: tiny.classifier("bert", seed=0, layers=layers), tiny.batch(4, 16))
            for layers in (2, 4)}


def test_unrecorded_steps_dispatch_no_operation(counted):
    for layers, steps in counted.items():
        unrecorded = [step for step in steps if not step.recorded]
        assert unrecorded and all(step.ops == Counter() for step in unrecorded), (layers, unrecorded)


def test_recorded_steps_dispatch_a_few_operations_and_at_most_two_more_per_layer(counted):
    recorded = {layers: [step.total for step in steps if step.recorded] for layers, steps in counted.items()}
    assert all(len(set(totals)) == 1 for totals in recorded.values()), recorded  # the first step is no different
    assert 0 < recorded[2][0] <= RECORDED_AT_MOST, recorded
    assert recorded[4][0] - recorded[2][0] <= 2 * 2, recorded
    for steps in counted.values():  # one fused pass for the gradients, one for the two clipping witnesses
        assert all(step.ops["aten._foreach_norm"] == 2 for step in steps if step.recorded)


def test_counter_counts_each_operation_and_refuses_different_steps():
    with OpCount() as count:
        torch.ones(3).add_(1).sum()
    assert count.ops == Counter({"aten.ones": 1, "aten.add_": 1, "aten.sum": 1}) and count.total == 3
    assert added_ops(Counter(a=3, b=1), Counter(a=1)) == Counter(a=2, b=1)
    with pytest.raises(ValueError, match="not the same step"):
        added_ops(Counter(a=1), Counter(a=2))


def test_counting_leaves_no_hooks_and_records_nothing():
    model = tiny.classifier("bert", seed=0, layers=2)
    hooks = sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules())
    probe_step_ops(lambda: model, tiny.batch(2, 8), steps=1, probes=[probes.GradientNorms()])
    assert sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules()) == hooks

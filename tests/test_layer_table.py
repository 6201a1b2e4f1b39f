"""The layer of every parameter, per architecture, pinned against the hand-written table."""
from __future__ import annotations

import pytest

import tiny
from layer_table import layer_of
from probes.model.layers import find_layers


@pytest.mark.parametrize("arch", tiny.ARCHITECTURES)
def test_every_parameter_lands_in_the_layer_of_the_table(arch):
    model = tiny.classifier(arch)
    layers = find_layers(model)
    found = {name: layers.group_of(name) for name, _ in model.named_parameters()}
    expected = {name: layer_of(arch, name) for name in found}
    assert found == expected
    assert {"embeddings", "head"} <= set(found.values())

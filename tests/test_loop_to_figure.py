"""One path from a real probed training loop to a drawn figure, without hand-made records.

Two plain loops of the tiny BERT record per-layer gradient norms through ``probes.attach``; the gradients figure
drawn from their files must plot, for each layer, exactly the norms an independent oracle computed in the loop.
"""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from plots import plot_gradients
from probe_harness import LoopConfig, run_loop

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loops")
    runs = {}
    for name, lr in (("slow", 1e-5), ("fast", 1e-2)):
        runs[name] = run_loop(LoopConfig(steps=6, lr=lr), folder / f"{name}.h5"), folder / f"{name}.h5"
    return runs


def test_gradients_figure_draws_what_the_loop_computed(two_runs, tmp_path):
    (slow, slow_path), (fast, fast_path) = two_runs["slow"], two_runs["fast"]
    figure = plot_gradients([slow_path, fast_path], layers="all", failed=[slow_path], successful=[fast_path])
    figure.savefig(tmp_path / "gradients.png")
    assert (tmp_path / "gradients.png").stat().st_size > 10_000
    for axis, result in zip(figure.axes, (slow, fast)):
        drawn = {line.get_label(): line for line in axis.get_lines()}
        for layer, label in (("encoder.1", "layer 1"), ("encoder.4", "layer 4"), ("head", "head (classifier)")):
            line = drawn[label]
            np.testing.assert_array_equal(line.get_xdata(), np.arange(6))
            np.testing.assert_allclose(line.get_ydata(), [step[layer] for step in result.oracle], rtol=1e-4)

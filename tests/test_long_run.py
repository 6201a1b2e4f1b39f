"""A probed loop of 1,500 steps with a reader polling its file: flat memory, linear file growth, steady flushes,
and a consistent prefix at every poll. ``bench/long_run.py`` runs the same for 10,000 steps
(docs/reliability.md, "Long runs").

    python3 -m pytest tests/test_long_run.py       # ~1 minute on a busy core
"""
from __future__ import annotations

import numpy as np
import pytest

import long_run


@pytest.mark.slow
def test_long_probed_run_keeps_memory_flat_file_linear_and_readers_consistent(tmp_path):
    result = long_run.train(tmp_path / "run.h5", steps=1500, sample_every=250, poll_seconds=0.2)
    samples = result["samples"][1:]  # after warming up: allocator pools and HDF5's caches filled
    traced = [s["traced_mb"] for s in samples]
    assert max(traced) - min(traced) < 0.5, traced  # MB: Python allocations do not grow with the steps
    rss = [s["rss_mb"] for s in samples]
    assert max(rss) - min(rss) < 20, rss
    steps = np.array([s["step"] for s in result["samples"]])
    sizes = np.array([s["file_mb"] for s in result["samples"]]) * 2 ** 20
    rate = long_run.slope(steps, sizes)
    assert 200 < rate < 4000, rate  # bytes per recorded step (docs/reliability.md: 256 bytes a step for the tiny model)
    assert np.abs(sizes - (sizes[0] + rate * (steps - steps[0]))).max() < 200 * 2 ** 10
    flushes = result["flush_ms"]
    assert np.median(flushes[-5:]) < 5 * np.median(flushes[:5]) + 20, flushes
    reader = result["reader"]
    assert reader["problems"] == [] and reader["polls"] >= 3 and reader["steps_seen"] > 0, reader

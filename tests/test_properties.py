"""Property tests (hypothesis) of the pure pieces everything else leans on: the probes' recording schedule and the
interpolation maths of the loss surfaces. Random append patterns of the records writer are in tests/test_records.py.

    python3 -m pytest tests/test_properties.py           # a few seconds
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.model.interpolation import Subspace, anchor_weights, lerp_order, line_point, plane_point
from probes.schedule import PER_OCTAVE, Schedule, records_step

SETTINGS = settings(max_examples=60, deadline=None)
every_values = st.integers(min_value=1, max_value=60)
dense_values = st.integers(min_value=0, max_value=80)


# ----------------------------------------------------------------------------------------------- schedule


@SETTINGS
@given(every=every_values, dense=dense_values, log_spaced=st.booleans(), horizon=st.integers(1, 400))
def test_dense_steps_and_every_multiple_are_recorded(every, dense, log_spaced, horizon):
    recorded = [s for s in range(horizon) if records_step(s, every, dense, log_spaced)]
    assert set(range(min(dense, horizon))) <= set(recorded)
    assert set(range(0, horizon, every)) <= set(recorded)
    assert recorded == [s for s in range(horizon) if Schedule(every, dense, log_spaced)(s)]


@SETTINGS
@given(every=every_values, dense=dense_values, horizon=st.integers(1, 400))
def test_without_log_spacing_nothing_else_is_recorded(every, dense, horizon):
    recorded = {s for s in range(horizon) if records_step(s, every, dense)}
    assert recorded == {s for s in range(horizon) if s < dense or s % every == 0}


@SETTINGS
@given(every=every_values, factor=st.integers(1, 5), dense=dense_values, more=st.integers(0, 40),
       horizon=st.integers(1, 400))
def test_more_frequent_schedules_record_supersets(every, factor, dense, more, horizon):
    """Recording every k steps keeps every (k * factor)-th; a longer dense phase and log spacing only add steps."""
    def recorded(*args):
        return {s for s in range(horizon) if records_step(s, *args)}

    assert recorded(every * factor, dense) <= recorded(every, dense)
    assert recorded(every, dense) <= recorded(every, dense + more)
    assert recorded(every, dense) <= recorded(every, dense, True)


@SETTINGS
@given(every=every_values, dense=dense_values, log_spaced=st.booleans(), horizon=st.integers(1, 400))
def test_recorded_count_grows_with_the_run_and_has_its_floor(every, dense, log_spaced, horizon):
    counts, total = [], 0
    for step in range(horizon):
        total += records_step(step, every, dense, log_spaced)
        counts.append(total)
    assert all(a <= b for a, b in zip(counts, counts[1:]))
    assert counts[-1] >= max(min(dense, horizon), math.ceil(horizon / every))


@SETTINGS
@given(octave=st.integers(1, 16))
def test_log_spacing_records_powers_of_two_and_about_four_steps_per_doubling(octave):
    assert records_step(2 ** octave, every=10 ** 9, log_spaced=True)
    in_octave = [s for s in range(2 ** (octave - 1) + 1, 2 ** octave + 1) if records_step(s, 10 ** 9, 0, True)]
    assert 1 <= len(in_octave) <= PER_OCTAVE


@pytest.mark.parametrize("every, dense", [(0, 0), (-1, 5), (3, -1)])
def test_a_schedule_that_records_nothing_sensible_is_refused(every, dense):
    with pytest.raises(ValueError, match="every must be >= 1"):
        Schedule(every=every, dense=dense)


# ----------------------------------------------------------------------------------------------- interpolation

shapes = st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3), min_size=1, max_size=3)
coordinates = st.floats(min_value=-2.0, max_value=2.0, allow_nan=False, allow_infinity=False)


def _anchors(seed: int, shapes: list[list[int]], count: int, dtype: torch.dtype) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) for shape in shapes]
            for _ in range(count)]


def _point(space: Subspace, coords: tuple[float, ...]) -> list[torch.Tensor]:
    params = [torch.empty_like(t) for t in space.anchors[0]]
    space.move(params, coords)
    return params


@SETTINGS
@given(seed=st.integers(0, 2 ** 16), shapes=shapes,
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_corners_are_the_anchors_bit_for_bit(seed, shapes, dtype):
    plane = Subspace(["p"] * len(shapes), _anchors(seed, shapes, 3, dtype))
    for coords, anchor in (((0.0, 0.0), 0), ((1.0, 0.0), 1), ((0.0, 1.0), 2)):
        assert all(torch.equal(x, y) for x, y in zip(_point(plane, coords), plane.anchors[anchor])), coords
    line = Subspace(["p"] * len(shapes), plane.anchors[:2])
    for coords, anchor in (((0.0,), 0), ((1.0,), 1)):
        assert all(torch.equal(x, y) for x, y in zip(_point(line, coords), line.anchors[anchor])), coords


@SETTINGS
@given(seed=st.integers(0, 2 ** 16), shapes=shapes, a=coordinates, b=coordinates)
def test_a_plane_point_is_theta_p_plus_a_d1_plus_b_d2(seed, shapes, a, b):
    p, f, s = _anchors(seed, shapes, 3, torch.float64)
    moved = _point(Subspace(["p"] * len(shapes), [p, f, s]), (a, b))
    for x, tp, tf, ts in zip(moved, p, f, s):
        torch.testing.assert_close(x, plane_point(tp, tf - tp, ts - tp, a, b), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2 ** 16), shapes=shapes, a=coordinates, other=coordinates, b=coordinates)
def test_points_are_affine_in_a_and_in_b(seed, shapes, a, other, b):
    """The midpoint of two points is the point at the mid coordinates, along a and along b; a line likewise."""
    plane = Subspace(["p"] * len(shapes), _anchors(seed, shapes, 3, torch.float64))
    line = Subspace(["p"] * len(shapes), plane.anchors[:2])
    pairs = [((a, b), (other, b)), ((b, a), (b, other))]
    for first, second in pairs:
        middle = tuple((x + y) / 2 for x, y in zip(first, second))
        for x, y, m in zip(_point(plane, first), _point(plane, second), _point(plane, middle)):
            torch.testing.assert_close((x + y) / 2, m, rtol=1e-12, atol=1e-12)
    for x, y, m, start, end in zip(_point(line, (a,)), _point(line, (other,)), _point(line, ((a + other) / 2,)),
                                   *line.anchors):
        torch.testing.assert_close((x + y) / 2, m, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x, line_point(start, end - start, a), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(coords=st.lists(coordinates, min_size=1, max_size=2))
def test_lerp_order_rebuilds_the_weighted_sum(coords):
    """Pure maths on scalars: the lerps of ``lerp_order`` reach sum_k w_k x_k for any anchors x_k."""
    weights = anchor_weights(coords)
    assert math.isclose(sum(weights), 1.0, abs_tol=1e-12)
    values = [3.0, -7.0, 11.0][: len(weights)]
    first, steps = lerp_order(weights)
    x = values[first]
    for anchor, weight in steps:
        x = x + weight * (values[anchor] - x)
    assert math.isclose(x, sum(w * v for w, v in zip(weights, values)), rel_tol=1e-9, abs_tol=1e-9)

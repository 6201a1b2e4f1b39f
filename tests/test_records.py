"""The HDF5 records format: round trips, crash safety, concurrent reading, refusals and clear errors."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probes import records
from probes.records import RecordsError, RunMeta, RunWriter, open_run

REPO = Path(__file__).resolve().parents[1]


def make_run(path: Path, steps: int = 10, **schedule) -> Path:
    with RunWriter.create(path, RunMeta(model="tiny", seed=7, task="t", recipe="r", config={"lr": 0.1}),
                          **schedule) as run:
        run.add_series("train", ["loss", "lr"])
        run.add_series("layers", ["encoder.1", "encoder.2"], kind="gradient_norms", axes={"depth": [1, 2]},
                       attrs={"clipping": "pre"})
        run.start()
        for step in range(steps):
            run.append("train", step, [1.0 / (step + 1), 0.01])
            run.append("layers", step, [step, 2 * step])
    return path


def test_round_trip_series_meta_and_frame(tmp_path):
    run = open_run(make_run(tmp_path / "run.h5"))
    assert run.meta["seed"] == 7 and run.meta["config"] == {"lr": 0.1} and run.meta["task"] == "t"
    assert run.meta["schema_version"] == records.SCHEMA_VERSION
    assert "torch" in run.meta["versions"] and isinstance(run.meta["argv"], list)
    train = run.series("train")
    np.testing.assert_array_equal(train.steps, np.arange(10))
    np.testing.assert_allclose(train.column("loss"), 1.0 / np.arange(1, 11), rtol=1e-6)
    layers = run.series("layers", kind="gradient_norms")
    assert layers.columns == ["encoder.1", "encoder.2"] and layers.attrs == {"clipping": "pre"}
    np.testing.assert_array_equal(layers.axes["depth"], [1, 2])
    frame = run.frame("layers")
    assert list(frame.columns) == ["encoder.1", "encoder.2"] and frame.index.name == "step"
    assert frame.loc[9, "encoder.2"] == 18


def test_grid_starts_nan_fills_and_resumes_same_grid_only(tmp_path):
    path = tmp_path / "grid.h5"
    with RunWriter.create(path, RunMeta()) as run:
        assert run.add_grid("s", {"a": [0.0, 1.0], "b": [0.0, 0.5, 1.0]}, ["loss"], kind="surfaces",
                            attrs={"checkpoints": ["p", "f", "s"]}) is None
        run.start()
        run.write_point("s", (1, 2), {"loss": 3.5})
    grid = open_run(path).grid("s")
    assert grid.fields["loss"].shape == (2, 3) and grid.missing == 5 and grid.fields["loss"][1, 2] == 3.5
    assert grid.attrs["checkpoints"] == ["p", "f", "s"]
    with RunWriter.open(path) as run:
        resumed = run.add_grid("s", {"a": [0.0, 1.0], "b": [0.0, 0.5, 1.0]}, ["loss"], kind="surfaces",
                               attrs={"checkpoints": ["p", "f", "s"]})
        assert resumed is not None and resumed.missing == 5
        with pytest.raises(RecordsError, match="different surfaces record"):
            run.add_grid("s", {"a": [0.0, 2.0], "b": [0.0, 0.5, 1.0]}, ["loss"], kind="surfaces")


def test_write_grid_summary_and_next_name(tmp_path):
    path = make_run(tmp_path / "run.h5")
    assert records.next_name(path, "forgetting", "final") == "final"
    records.write_grid(path, "final", {"k": [0, 1, 2]}, {"perplexity": [9.0, 5.0, 4.0]}, kind="forgetting",
                       attrs={"direction": "top"})
    assert records.next_name(path, "forgetting", "final") == "final-1"
    records.write_summary(path, {"failed": True, "final_dev_metric": 0.5})
    run = open_run(path)
    assert run.summary == {"failed": 1, "final_dev_metric": 0.5}
    np.testing.assert_array_equal(run.grid("final").fields["perplexity"], [9.0, 5.0, 4.0])
    assert run.series("train").steps.size == 10, "adding records keeps the old ones"


def test_existing_file_and_existing_record_are_refused(tmp_path):
    path = make_run(tmp_path / "run.h5")
    before = path.read_bytes()
    with pytest.raises(RecordsError, match="already exists"):
        RunWriter.create(path, RunMeta())
    with RunWriter.open(path) as run, pytest.raises(RecordsError, match="already holds"):
        run.add_series("train", ["loss"])
    assert open_run(path).series("train").steps.size == 10
    assert len(path.read_bytes()) >= len(before)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"not hdf5 at all", "not an HDF5 file"),
])
def test_missing_and_non_hdf5_files(tmp_path, content, message):
    path = tmp_path / "x.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RecordsError, match=message):
        open_run(path)


def test_foreign_truncated_and_newer_files(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as file:
        file["x"] = [1, 2, 3]
    with pytest.raises(RecordsError, match="not an instability-diagnostics records file"):
        open_run(foreign)

    newer = make_run(tmp_path / "newer.h5")
    with h5py.File(newer, "a") as file:
        file.attrs["schema_version"] = records.SCHEMA_VERSION + 1
    with pytest.raises(RecordsError, match="upgrade instability-diagnostics"):
        open_run(newer)

    truncated = tmp_path / "truncated.h5"
    data = make_run(tmp_path / "whole.h5", steps=2000).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordsError, match="truncated or corrupt|not an HDF5"):
        open_run(truncated)


def test_errors_are_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    with pytest.raises(RecordsError) as error:
        RunWriter.create(tmp_path / "notes.txt" / "such" / "run.h5", RunMeta())
    assert "\n" not in str(error.value) and "notes.txt is a file, not a folder" in str(error.value)
    assert (tmp_path / "notes.txt").read_text() == "a file, not a folder"


def test_new_file_creates_its_folders(tmp_path):
    """The README's plain-loop example writes runs/my-run.h5 in a fresh folder."""
    RunWriter.create(tmp_path / "runs" / "deeper" / "my-run.h5", RunMeta()).close()
    assert open_run(tmp_path / "runs" / "deeper" / "my-run.h5").meta["type"] == "instability-diagnostics.run"


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from probes.records import RunMeta, RunWriter
    run = RunWriter.create(sys.argv[1], RunMeta(seed=1))
    run.add_series("train", ["loss"])
    run.start()
    step = 0
    while True:
        run.append("train", step, [float(step)])
        if step % 10 == 9:
            print(step, flush=True)
            time.sleep(0.01)
        step += 1
""")


def start_writer(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO)), str(path)],
                            stdout=subprocess.PIPE, text=True)


def test_sigkill_leaves_a_readable_file_with_every_flushed_step(tmp_path):
    path = tmp_path / "killed.h5"
    writer = start_writer(path)
    flushed = [int(writer.stdout.readline()) for _ in range(30)][-1]
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    steps = open_run(path).series("train").steps
    assert steps.size >= flushed + 1
    np.testing.assert_array_equal(steps, np.arange(steps.size))
    with RunWriter.open(path) as run:  # a killed file can be reopened to add records (recovered)
        run.add_series("after", ["x"])
    assert open_run(path).series("train").steps.size == steps.size


def test_reader_opens_file_while_writer_appends(tmp_path):
    path = tmp_path / "live.h5"
    writer = start_writer(path)
    try:
        writer.stdout.readline()
        first = open_run(path).series("train").steps.size
        for _ in range(20):
            writer.stdout.readline()
        second = open_run(path).series("train").steps.size
        with pytest.raises(RecordsError, match="being written by process"):
            RunWriter.open(path)
    finally:
        writer.kill()
        writer.wait()
    assert 0 < first < second


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=8),
       columns=st.integers(min_value=1, max_value=5))
def test_any_append_pattern_round_trips(tmp_path_factory, chunks, columns):
    path = tmp_path_factory.mktemp("prop") / "run.h5"
    expected = []
    with RunWriter.create(path, RunMeta()) as run:
        run.add_series("s", [f"c{i}" for i in range(columns)])
        run.start()
        step = 0
        for number, chunk in enumerate(chunks):
            rows = np.arange(columns, dtype="f4") + np.arange(step, step + chunk, dtype="f4")[:, None]
            if number % 2:  # a block at once, or row by row
                run.extend("s", list(range(step, step + chunk)), rows)
            else:
                for offset, row in enumerate(rows):
                    run.append("s", step + offset, row)
            expected.extend(rows)
            step += chunk
            run.flush()
    series = open_run(path).series("s")
    assert series.steps.size == len(expected)
    if expected:
        np.testing.assert_array_equal(series.values, np.stack(expected))


def test_h5dump_shows_the_documented_layout(tmp_path):
    if shutil.which("h5dump") is None:
        pytest.skip("h5dump (Debian hdf5-tools) not installed")
    dump = subprocess.run(["h5dump", "-H", str(make_run(tmp_path / "run.h5"))], capture_output=True, text=True)
    for name in ("GROUP \"scalars\"", "GROUP \"train\"", "DATASET \"values\"", "ATTRIBUTE \"schema_version\""):
        assert name in dump.stdout

"""``python -m diagnostics.export``: records as tidy tables and TensorBoard scalars, read back with
pandas, pyarrow and TensorBoard's own reader and compared with the HDF5 datasets read directly with h5py.

    python3 -m pytest tests/test_export.py
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import records_factory as factory
from diagnostics.export import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("records")
    factory.finetune_run(folder / "failed.h5", failed=True, seed=3, steps=60)
    factory.finetune_run(folder / "successful.h5", failed=False, seed=4, steps=60)
    factory.surface_records(folder / "surface.h5")
    return folder


def export(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diagnostics.export", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def h5_series(path: Path, kind: str, name: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    with h5py.File(path, "r") as file:
        group = file[kind][name]
        return group["step"][()], [c.decode() for c in group["columns"][()]], group["values"][()]


def test_csv_is_a_tidy_copy_of_every_series_and_grid(example, tmp_path):
    done = export(example, "--to", "csv", tmp_path / "tables" / "new")
    assert done.returncode == 0, done.stderr
    layers = pd.read_csv(tmp_path / "tables" / "new" / "gradient_norms.layers.csv")
    assert list(layers.columns) == ["run", "step", "column", "value"]
    steps, columns, values = h5_series(example / "failed.h5", "gradient_norms", "layers")
    failed = layers[layers.run == "failed"].pivot(index="step", columns="column", values="value")
    np.testing.assert_array_equal(failed.index, steps)
    np.testing.assert_array_equal(failed[columns].to_numpy(np.float32), values)  # every bit of the float32s
    curve = pd.read_csv(tmp_path / "tables" / "new" / "forgetting.top.csv")
    assert list(curve.columns) == ["run", "k", "field", "value"] and set(curve.run) == {"failed", "successful"}
    with h5py.File(example / "failed.h5", "r") as file:
        np.testing.assert_allclose(curve[curve.run == "failed"].value, file["forgetting/top/perplexity"][()])


def test_rerun_is_identical_and_existing_outputs_need_overwrite(example, tmp_path):
    assert main([str(example / "failed.h5"), "--to", "csv", str(tmp_path)]) == 0
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    done = export(example / "failed.h5", "--to", "csv", tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "--overwrite" in done.stderr
    assert main([str(example / "failed.h5"), "--to", "csv", str(tmp_path), "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first


def test_parquet_holds_the_same_tables(example, tmp_path):
    pytest.importorskip("pyarrow", reason='pip install -e ".[export]" for Parquet')
    assert main([str(example), "--to", "parquet", str(tmp_path / "pq")]) == 0
    assert main([str(example), "--to", "csv", str(tmp_path / "csv")]) == 0
    names = sorted(p.stem for p in (tmp_path / "pq").glob("*.parquet"))
    assert names == sorted(p.stem for p in (tmp_path / "csv").glob("*.csv")) and "scalars.train" in names
    for name in names:
        parquet, csv = pd.read_parquet(tmp_path / "pq" / f"{name}.parquet"), pd.read_csv(tmp_path / "csv" / f"{name}.csv")
        np.testing.assert_allclose(parquet.value.to_numpy(float), csv.value.to_numpy(float), rtol=1e-7, equal_nan=True)


def test_tensorboard_scalars_read_back_and_rerun_identical(example, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                            reason='pip install -e ".[export]" for TensorBoard')
    assert main([str(example / "failed.h5"), str(example / "successful.h5"), "--to", "tensorboard",
                 str(tmp_path / "tb")]) == 0
    files = sorted((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert [f.parent.name for f in files] == ["failed", "successful"]
    accumulator = event_accumulator.EventAccumulator(str(files[0]), size_guidance={"scalars": 0})
    accumulator.Reload()
    steps, columns, values = h5_series(example / "failed.h5", "gradient_norms", "layers")
    for index, column in enumerate(columns):
        events = accumulator.Scalars(f"gradient_norms/layers/{column}")
        np.testing.assert_array_equal([e.step for e in events], steps)
        np.testing.assert_array_equal(np.array([e.value for e in events], dtype=np.float32), values[:, index])
    first = files[0].read_bytes()
    assert main([str(example / "failed.h5"), "--to", "tensorboard", str(tmp_path / "tb"), "--overwrite"]) == 0
    assert files[0].read_bytes() == first


def test_missing_extra_is_one_line_naming_it(example, tmp_path):
    blocked = ("import sys, runpy; sys.modules['pyarrow'] = None; sys.argv[0] = 'export'; "
               "runpy.run_module('diagnostics.export', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", blocked, str(example), "--to", "parquet", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert 'pip install -e ".[export]"' in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["missing-path", "not-hdf5", "output-under-file", "unknown-format"])
def test_bad_input_is_one_line_and_writes_nothing(example, tmp_path, capsys, kind):
    (tmp_path / "notes.txt").write_text("notes")
    argv = {"missing-path": [str(tmp_path / "missing.h5"), "--to", "csv", str(tmp_path / "out")],
            "not-hdf5": [str(tmp_path / "notes.txt"), "--to", "csv", str(tmp_path / "out")],
            "output-under-file": [str(example / "failed.h5"), "--to", "csv", str(tmp_path / "notes.txt" / "out")],
            "unknown-format": [str(example / "failed.h5"), "--to", "xlsx", str(tmp_path / "out")]}[kind]
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse refuses an unknown format: the same one line, no usage block
        status = exit.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and lines[0].startswith("error: "), (status, lines)
    assert {p.name for p in tmp_path.iterdir()} == {"notes.txt"}
    assert (tmp_path / "notes.txt").read_text() == "notes"

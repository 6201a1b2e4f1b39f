"""Faults under a running job: a fine-tuning process killed mid-run, and a disk that fills while the probes write.

    python3 -m pytest tests/test_faults.py          # both are slow (real processes), ~40 s on two busy cores

* SIGKILL of ``python -m diagnostics.finetune`` once its records hold some steps: the file opens afterwards with
  every step seen before the kill, and running the same command again refuses the unfinished folder in one line.
* A full disk, simulated with ``RLIMIT_FSIZE`` in the child (SIGXFSZ ignored, so writes fail with EFBIG instead of
  killing it): the training goes on, bit for bit as without probes, after one warning; in strict mode it stops at
  the flush that failed; the records keep every step flushed before the failure.
* The same when the disk fills after the probes checked for room (``race``): HDF5's own write fails, the failure
  is caught, the file is closed without it, and the process exits cleanly with the records of every earlier flush.
* A loss-surface grid killed mid-way and resumed is tested in ``tests/test_surface.py``
  (``test_a_stopped_run_resumes_and_matches_an_uninterrupted_one``, SIGKILL and Ctrl-C), not again here.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import tiny
from probes import records
from diagnostics.tasks import Example, write_task

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
FILE_LIMIT = 1_000_000  # bytes: the records below grow well past it without a limit
STEPS = 64


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    """48 training and 8 dev sentences of the tiny vocabulary."""
    examples = [Example(" ".join(tiny.WORDS[i % 60:i % 60 + 5]), None, i % 2) for i in range(56)]
    folder = tmp_path_factory.mktemp("task") / "toy"
    write_task(folder, examples[:48], examples[48:], {"name": "toy", "kind": "single", "label_names": ["no", "yes"],
                                                       "metric": "accuracy", "majority_baseline": 0.5})
    return folder


# ----------------------------------------------------------------------------------------------- SIGKILL


def _train_series_once_flushed(path: Path, process: subprocess.Popen, deadline: float) -> records.Series:
    """Poll the live records file until its ``train`` series holds steps (a flush has happened)."""
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists():
            try:
                train = records.open_run(path).series("train")
            except records.RecordsError:
                train = None  # the runner is still declaring its records
            if train is not None and train.steps.size:
                return train
        time.sleep(0.1)
    raise AssertionError(f"no flushed step within the deadline (exit {process.poll()})")


@pytest.mark.slow
def test_killed_finetune_keeps_its_flushed_steps_and_a_rerun_refuses_the_folder(task, tiny_mlm_dir, tmp_path):
    command = [sys.executable, "-m", "diagnostics.finetune", "--task", str(task), "--recipe", "default", "--seed",
               "0", "--out", str(tmp_path / "runs"), "--model", str(tiny_mlm_dir), "--max-length", "16",
               "--batch-size", "1", "--epochs", "40", "--evals", "1", "--threads", "1"]
    path = tmp_path / "runs" / "toy-default-s0" / "run.h5"
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        seen = _train_series_once_flushed(path, process, time.monotonic() + 180)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (tmp_path / "stderr").read_text()[-2000:]

    after = records.open_run(path)
    train = after.series("train")
    assert train.steps.size >= seen.steps.size and train.steps.size < 40 * 48
    np.testing.assert_array_equal(train.steps[: seen.steps.size], seen.steps)
    np.testing.assert_array_equal(train.values[: seen.steps.size], seen.values)
    assert (np.diff(train.steps) == 1).all() and np.isfinite(train.column("loss")).all()
    assert "final_dev_metric" not in after.summary

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    again = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines() == [again.stderr.strip()]
    assert "holds an unfinished run; delete it or pick another --out" in again.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


# ----------------------------------------------------------------------------------------------- full disk

# The training job: a tiny model with probes writing to PATH; in "warn" mode it first trains the same steps without
# probes (the reference). A 4096-column probe makes HDF5 grow the file every 16 recorded steps (narrow series get
# chunks of 1024 rows), so the limit is reached part-way through the run. Prints one JSON line.
JOB = r'''
import contextlib, hashlib, json, sys, warnings
import torch
import probes, tiny

class Wide(probes.Probe):
    """4096 columns holding the step number: a series that needs a new HDF5 chunk every 16 rows."""
    width = 4096
    def declare(self, writer):
        writer.add_series("wide", [f"c{i}" for i in range(self.width)])
    def on_step(self, session, row):
        row.fill_(float(session.step))
    def write(self, writer, steps, block):
        for step, values in zip(steps, block):
            writer.append("wide", step, values)

def train(path, strict):
    """Train STEPS steps (with probes writing to path unless it is None); returns what the parent checks."""
    torch.manual_seed(0)
    model = tiny.classifier("bert", layers=1, seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    done, warned_at, error, losses = 0, None, None, []
    attached = (probes.attach(model, optimizer, path, probes=[probes.GradientNorms(), Wide()], strict=strict,
                              schedule=probes.Schedule(every=1), flush_every=4) if path else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with attached or contextlib.nullcontext():
                for step in range(int(sys.argv[3])):
                    torch.rand(())
                    loss = model(**tiny.batch(4, 8, seed=step)).loss
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    losses.append(float(loss.detach()))
                    done += 1
                    if warned_at is None and caught:
                        warned_at = step
        except Exception as failure:
            error = f"{type(failure).__name__}: {str(failure).splitlines()[0]}"
    weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    return {"done": done, "warned_at": warned_at, "warnings": [str(w.message) for w in caught], "error": error,
            "losses": losses, "weights": weights, "rng": hashlib.sha256(torch.get_rng_state().numpy()).hexdigest()}

torch.set_num_threads(1)
path, mode = sys.argv[1], sys.argv[2]
if mode == "race":  # the disk fills between the room check and the write: HDF5's own write fails
    import probes.records
    probes.records._check_room = lambda path, needed: None
result = {"probed": train(path, mode == "strict")}
if mode == "warn":
    result["plain"] = train(None, False)
print(json.dumps(result), flush=True)
'''


def _limit_file_size() -> None:
    """In the child: writes past FILE_LIMIT bytes fail with EFBIG (SIGXFSZ ignored, as on a full disk)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory) -> dict[str, dict]:
    """Both modes, run side by side: each child's JSON result, exit code, stderr and records path."""
    folder = tmp_path_factory.mktemp("full-disk")
    running = {}
    for mode in ("warn", "strict", "race"):
        running[mode] = subprocess.Popen(
            [sys.executable, "-c", JOB, str(folder / f"{mode}.h5"), mode, str(STEPS)], cwd=REPO,
            env={**ENV, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, preexec_fn=_limit_file_size)
    results = {}
    for mode, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        lines = stdout.strip().splitlines()
        assert lines, f"{mode}: no result (exit {process.returncode}): {stderr[-3000:]}"
        results[mode] = {**json.loads(lines[-1]), "code": process.returncode, "stderr": stderr,
                         "path": folder / f"{mode}.h5"}
    return results


def _flushed(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every series of a records file, read as an SWMR reader (steps, values), without the toolkit's checks."""
    found = {}
    with h5py.File(path, "r", swmr=True) as file:
        for kind in records.KINDS:
            for name, group in file.get(kind, {}).items():
                steps = group["step"][()]
                found[f"{kind}/{name}"] = steps, group["values"][: len(steps)]
    return found


@pytest.mark.slow
def test_full_disk_warns_once_and_training_goes_on_unchanged(full_disk):
    warn = full_disk["warn"]
    probed, plain = warn["probed"], warn["plain"]
    assert probed["error"] is None and probed["done"] == STEPS
    assert len([w for w in probed["warnings"] if "could not write" in w]) == 1, probed["warnings"]
    assert "no room" in probed["warnings"][0]
    assert 0 < probed["warned_at"] < STEPS - 1  # the limit was reached part-way through
    assert (probed["losses"], probed["weights"], probed["rng"]) == (plain["losses"], plain["weights"], plain["rng"])


@pytest.mark.slow
def test_full_disk_in_strict_mode_stops_at_the_failing_flush(full_disk):
    strict = full_disk["strict"]["probed"]
    assert strict["error"] is not None and "no room" in strict["error"]
    warned = full_disk["warn"]["probed"]["warned_at"]
    assert strict["done"] == warned  # the step whose flush failed did not finish
    assert strict["losses"] == full_disk["warn"]["probed"]["losses"][:warned]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["warn", "strict"])
def test_full_disk_keeps_every_step_flushed_before_the_failure(full_disk, mode):
    """Read without the toolkit's checks: every series holds, in order, the steps of every flush that finished
    (flushes come every 4 recorded steps: the one that failed began at ``warned - 3``), with their values (the wide
    probe's are its step numbers); rows of the failed flush that reached the file hold NaN, the schema's "not
    written", or their values."""
    complete = full_disk["warn"]["probed"]["warned_at"] - 3
    series = _flushed(full_disk[mode]["path"])
    assert {"scalars/train", "gradient_norms/layers", "scalars/wide"} <= set(series)
    for name, (steps, values) in series.items():
        assert steps.size >= complete, (name, steps.size, complete)
        np.testing.assert_array_equal(steps, np.arange(steps.size))
        assert np.isfinite(values[:complete]).any(axis=1).all(), name  # (some columns are NaN by design)
    steps, values = series["scalars/wide"]
    expected = np.repeat(steps[:, None], 4096, axis=1).astype("f4")
    np.testing.assert_array_equal(values[:complete], expected[:complete])
    late = values[complete:]
    assert (np.isnan(late) | (late == expected[complete:])).all()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["warn", "strict"])
def test_full_disk_records_open_with_the_toolkit(full_disk, mode):
    run = records.open_run(full_disk[mode]["path"])
    assert run.series("wide").steps.size > 0


@pytest.mark.slow
def test_full_disk_training_process_exits_cleanly(full_disk):
    assert full_disk["warn"]["code"] == 0 and "Traceback" not in full_disk["warn"]["stderr"]


@pytest.mark.slow
def test_full_disk_after_the_room_check_is_survived_and_the_records_open(full_disk):
    """Regression: HDF5's failed write once left a file ``open_run`` refused ("truncated") and crashed the process at
    exit (SIGSEGV); now the process exits cleanly, training is unchanged, and the file opens with every step of
    every flush that finished."""
    race = full_disk["race"]
    assert race["code"] == 0, race["stderr"][-3000:]
    assert "Traceback" not in race["stderr"] and "Exception ignored" not in race["stderr"], race["stderr"][-3000:]
    probed = race["probed"]
    assert probed["done"] == STEPS and probed["error"] is None
    assert [w for w in probed["warnings"] if "could not write" in w and "failed" in w], probed["warnings"]
    assert (probed["losses"], probed["weights"]) == (full_disk["warn"]["plain"]["losses"],
                                                     full_disk["warn"]["plain"]["weights"])
    wide = records.open_run(race["path"]).series("wide")
    assert 0 < wide.steps.size < STEPS
    np.testing.assert_array_equal(wide.steps, np.arange(wide.steps.size))
    np.testing.assert_array_equal(wide.values, np.repeat(wide.steps[:, None], 4096, axis=1).astype("f4"))

"""Two writers, one records file: the second is refused in one line; a reader never keeps a writer out.

    python3 -m pytest tests/test_writers.py        # ~30 s: real processes holding the file

A records file has one writer at a time. A second process that tries to write it (the API, or a command such as
``forgetting --out``) while the first holds it, before or after it started recording, gets one line naming the
process; nothing is written. Readers (``open_run``, ``plots``, ``report``) take no file lock, so a writer opens
the file, appends and closes while any number of readers hold it open.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from probes import records

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

# Holds PATH as a writer (started or not) or as a reader until told to let go on stdin.
HOLDER = r'''
import sys
from pathlib import Path
from probes import records
path, role = Path(sys.argv[1]), sys.argv[2]
if role == "reader":
    held = records._open_for_reading(path)
else:
    held = records.RunWriter.open(path)
    if role == "started":
        held.add_series("more", ["x"])
        held.start()
        held.append("more", 0, [1.0])
        held.flush()
print("holding", flush=True)
sys.stdin.readline()
held.close()
'''


@pytest.fixture
def run_file(tmp_path) -> Path:
    path = tmp_path / "run.h5"
    with records.RunWriter.create(path, records.RunMeta(seed=0)) as writer:
        writer.add_series("train", ["loss"])
        writer.start()
        for step in range(10):
            writer.append("train", step, [1.0 / (step + 1)])
    return path


def _hold(path: Path, role: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), role], cwd=REPO, env=ENV,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def _release(holder: subprocess.Popen) -> None:
    holder.communicate("\n", timeout=60)
    assert holder.returncode == 0


SECOND_WRITER = r'''
import sys
from probes import records
try:
    records.write_grid(sys.argv[1], "curve", {"k": [0, 1]}, {"perplexity": [2.0, 1.0]}, kind="forgetting")
except records.RecordsError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
'''


@pytest.mark.slow
@pytest.mark.parametrize("role", ["declaring", "started"])
def test_a_second_writer_is_refused_in_one_line_and_writes_nothing(run_file, role):
    holder = _hold(run_file, role)
    try:
        digest = hashlib.sha256(run_file.read_bytes()).hexdigest()
        second = subprocess.run([sys.executable, "-c", SECOND_WRITER, str(run_file)], cwd=REPO, env=ENV,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        expected = ("is being written by process" if role == "started"
                    else "is open for writing by another process that has not started recording")
        assert expected in second.stderr, second.stderr
        assert hashlib.sha256(run_file.read_bytes()).hexdigest() == digest
    finally:
        _release(holder)
    assert "curve" not in records.open_run(run_file).names("forgetting")


@pytest.mark.slow
def test_a_command_writing_a_file_in_use_is_refused_in_one_line(run_file, tiny_checkpoints, tiny_mlm_dir, tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text("the cat was on the house . a dog is in the river .\n" * 20)
    holder = _hold(run_file, "started")
    try:
        done = subprocess.run([sys.executable, "-m", "diagnostics.forgetting", str(tiny_checkpoints["bert"]),
                               "--pretrained", str(tiny_mlm_dir), "--corpus", str(corpus), "--out", str(run_file)],
                              cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    finally:
        _release(holder)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"is being written by process {holder.pid}" in last, done.stderr[-2000:]


@pytest.mark.slow
def test_readers_holding_the_file_never_block_a_writer(run_file):
    readers = [_hold(run_file, "reader") for _ in range(2)]
    try:
        with records.RunWriter.open(run_file) as writer:
            writer.add_grid("curve", {"k": [0, 1, 2]}, ["perplexity"], kind="forgetting")
            writer.start()
            for k in range(3):
                writer.write_point("curve", (k,), {"perplexity": float(10 - k)})
        records.write_summary(run_file, {"final_dev_metric": 0.5})
    finally:
        for reader in readers:
            _release(reader)
    run = records.open_run(run_file)
    np.testing.assert_array_equal(run.grid("curve").fields["perplexity"], [10.0, 9.0, 8.0])
    assert run.summary["final_dev_metric"] == 0.5 and run.series("train").steps.size == 10

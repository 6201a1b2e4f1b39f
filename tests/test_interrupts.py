"""Ctrl-C (SIGINT) and SIGTERM during the commands that write records: real signals to real processes.

    python3 -m pytest tests/test_interrupts.py     # slow: real fine-tuning, forgetting and study processes

Each command stops within seconds with one line saying what it kept (exit status 130 or 143), closes its records
(they open without the SWMR fallback a killed writer needs), and the same command run again does what the command
documents: ``finetune`` refuses the unfinished folder, ``forgetting --out`` adds its record (it wrote nothing),
``study`` sets the unfinished runs aside and redoes them. ``surface --out`` (which resumes) is tested in
``tests/test_surface.py`` (``test_a_stopped_run_resumes_and_matches_an_uninterrupted_one``, SIGTERM included).
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import tiny
from diagnostics import interrupt
from diagnostics.embedded import DEFAULT_MODEL
from diagnostics.finetune import finished_run
from diagnostics.tasks import Example, write_task
from probes import records

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
STOPS = [signal.SIGINT, signal.SIGTERM]
GRACE = 30.0  # seconds to stop: generous, the two cores are shared by other jobs


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    """48 training and 8 dev sentences of the tiny vocabulary."""
    examples = [Example(" ".join(tiny.WORDS[i % 60:i % 60 + 5]), None, i % 2) for i in range(56)]
    folder = tmp_path_factory.mktemp("task") / "toy"
    write_task(folder, examples[:48], examples[48:], {"name": "toy", "kind": "single", "label_names": ["no", "yes"],
                                                       "metric": "accuracy", "majority_baseline": 0.5})
    return folder


def _stop(process: subprocess.Popen, number: int) -> float:
    """Send the signal; the seconds the process took to end."""
    started = time.monotonic()
    process.send_signal(number)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"{signal.Signals(number).name}: still running after 120 s")
    return time.monotonic() - started


def _last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr.replace("\r", "\n").strip().splitlines()[-1]


def _closed_cleanly(path: Path) -> bool:
    """A writer that closed leaves no 'open for write' flag: a plain (non-SWMR) open succeeds."""
    try:
        with h5py.File(path, "r", locking=False):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------- finetune


@pytest.mark.slow
@pytest.mark.parametrize("number", STOPS, ids=lambda n: signal.Signals(n).name)
def test_finetune_stops_says_what_it_kept_and_a_rerun_refuses(task, tiny_mlm_dir, tmp_path, number):
    command = [sys.executable, "-m", "diagnostics.finetune", "--task", str(task), "--recipe", "default", "--seed",
               "0", "--out", str(tmp_path / "runs"), "--model", str(tiny_mlm_dir), "--max-length", "16",
               "--batch-size", "1", "--epochs", "40", "--evals", "1", "--threads", "1"]
    path = tmp_path / "runs" / "toy-default-s0" / "run.h5"
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
    seen = _train_steps_once_flushed(path, process)
    seconds = _stop(process, number)
    assert process.returncode == 128 + number
    line = _last_line((tmp_path / "stderr").read_text())
    assert line.startswith(f"interrupted by {signal.Signals(number).name}: {path} keeps "), line
    assert "refuses the unfinished folder" in line
    assert seconds < GRACE, seconds

    assert _closed_cleanly(path)
    run = records.open_run(path)
    kept = run.series("train").steps
    assert f"keeps {kept.size} training steps" in line and kept.size >= seen
    for kind in ("scalars", "gradient_norms", "activation_gradients"):
        for name in run.names(kind):
            steps = run.series(name, kind).steps
            np.testing.assert_array_equal(steps, np.arange(steps.size))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    again = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and again.stderr.strip().count("\n") == 0
    assert "holds an unfinished run; delete it or pick another --out" in again.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _train_steps_once_flushed(path: Path, process: subprocess.Popen) -> int:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            steps = records.open_run(path).series("train").steps.size
        except records.RecordsError:
            steps = 0  # not created, or its records not declared yet
        if steps:
            return steps
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no flushed step within the deadline (exit {process.poll()})")


# ----------------------------------------------------------------------------------------------- forgetting


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory) -> Path:
    """Enough held-out text of the tiny vocabulary that the sweep runs for a while."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "heldout.txt"
    path.write_text("\n".join(" ".join(rng.choice(tiny.WORDS, 12)) + "." for _ in range(40_000)))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("number", STOPS, ids=lambda n: signal.Signals(n).name)
def test_forgetting_out_stops_without_writing_and_a_rerun_adds_the_record(tiny_checkpoints, tiny_mlm_dir,
                                                                         long_corpus, tmp_path, number):
    out = tmp_path / "run.h5"
    records.write_grid(out, "earlier", {"k": [0, 1]}, {"perplexity": np.array([2.0, 1.0])}, kind="forgetting")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    command = [sys.executable, "-m", "diagnostics.forgetting", str(tiny_checkpoints["bert"]), "--pretrained",
               str(tiny_mlm_dir), "--corpus", str(long_corpus), "--out", str(out)]
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 240
    while "forgetting:" not in (tmp_path / "stderr").read_text() and time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "stderr").read_text()[-2000:]
        time.sleep(0.1)
    seconds = _stop(process, number)
    assert process.returncode == 128 + number, (tmp_path / "stderr").read_text()[-2000:]
    assert _last_line((tmp_path / "stderr").read_text()) == \
        f"interrupted by {signal.Signals(number).name}; nothing written"
    assert seconds < GRACE, seconds
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest

    again = subprocess.run(command + ["--max-tokens", "512"], cwd=REPO, env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert records.open_run(out).names("forgetting") == ["earlier", "final"]


def test_a_signal_during_a_deferred_write_lets_it_finish_then_stops():
    written = []
    with interrupt.stop_on_signals(), pytest.raises(interrupt.Stopped) as stopped:
        with interrupt.deferred(kept="the record"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            written.append(True)
    assert written == [True] and stopped.value.signal == signal.SIGTERM and stopped.value.kept == "the record"
    assert interrupt.exit_status(stopped.value) == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# ----------------------------------------------------------------------------------------------- study


@pytest.mark.slow
@pytest.mark.skipif(not (DEFAULT_MODEL / "model.safetensors").exists(), reason="embedded default not built")
def test_study_stops_its_workers_keeps_readable_records_a_rerun_redoes_the_run_and_sigkill_leaves_no_orphan(tmp_path):
    out = tmp_path / "study"
    command = [sys.executable, "-m", "diagnostics.study", "--out", str(out), "--quick", "--tasks",
               "wordnet-entail", "--workers", "2"]
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
    run = out / "wordnet-entail-default-s0"
    _train_steps_once_flushed(run / "run.h5", process)
    workers = _children(process.pid)
    assert workers, "the study runs its seeds in worker processes"
    seconds = _stop(process, signal.SIGTERM)
    assert process.returncode == 143, (tmp_path / "stderr").read_text()[-3000:]
    line = _last_line((tmp_path / "stderr").read_text())
    runs = [folder for folder in out.iterdir() if (folder / "run.h5").exists()]
    unfinished = [folder for folder in runs if finished_run(folder) is None]
    assert unfinished, "the runs in flight were stopped, not finished"  # (a 3-step run may finish meanwhile)
    assert line.startswith(f"interrupted by SIGTERM: {len(runs) - len(unfinished)} finished runs"), line
    assert "interrupted-N" in line, line
    assert seconds < 4 * GRACE, seconds  # each worker ends its current step of the real model first (59 s at load 15)
    time.sleep(1)
    assert not [pid for pid in workers if _alive(pid)], "worker processes outlived the study"
    for path in out.glob("*/run.h5"):
        assert _closed_cleanly(path), path
        records.open_run(path)

    # the same command sets the unfinished runs aside and redoes them; killed outright (SIGKILL) this time, its
    # workers see their parent gone, close their records and exit: no orphan left waiting for work
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    set_aside = out / f"{unfinished[0].name}.interrupted-1"
    deadline = time.monotonic() + 240
    while not set_aside.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert records.open_run(set_aside / "run.h5").series("train").steps.size > 0
    while not _a_run_in_flight(out) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    workers = _children(process.pid)
    process.kill()
    process.wait()
    deadline = time.monotonic() + 4 * GRACE
    while [pid for pid in workers if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in workers if _alive(pid)], "workers outlived their SIGKILLed parent"
    for path in out.glob("*/run.h5"):
        assert _closed_cleanly(path), path


def _a_run_in_flight(out: Path) -> bool:
    """Whether a worker is training a run of the study in ``out`` (steps flushed, not finished)."""
    for folder in out.glob("*-s[0-9]"):
        try:
            if finished_run(folder) is None and records.open_run(folder / "run.h5").series("train").steps.size:
                return True
        except records.RecordsError:
            pass
    return False


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

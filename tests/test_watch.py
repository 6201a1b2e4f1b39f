"""``python -m plots watch``: a live figure from a records file while a real training process writes it.

A tiny BERT trains with the probes in one process (flushing every two steps); two watchers redraw its gradient
figure from other processes: one is stopped with Ctrl-C (SIGINT) half-way, one ends by itself when the run does.
The writer must finish unharmed with every step in its file.

    python3 -m pytest tests/test_watch.py
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from probes.records import open_run

REPO = Path(__file__).resolve().parents[1]
STEPS = 30
WRITER = """
import sys, time
import torch
import probes, tiny
torch.set_num_threads(1)
model = tiny.classifier("bert")
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
batch = tiny.batch(4, 10)
chosen = [probes.GradientNorms(), probes.EarlyWarning(8)]
with probes.attach(model, optimizer, sys.argv[1], schedule=probes.Schedule(every=1), flush_every=2, probes=chosen):
    for step in range(int(sys.argv[2])):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
        time.sleep(0.4)
print("writer done", flush=True)
"""


def _watcher(run: Path, out: Path, every: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "plots", "watch", str(run), "-o", str(out), "--every", str(every)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")


@pytest.mark.slow
def test_watch_redraws_a_live_run_until_it_ends_or_ctrl_c(tmp_path):
    run = tmp_path / "runs" / "live.h5"
    stopped = _watcher(run, tmp_path / "stopped.png", every=5)  # draws once, then is stopped while it waits
    finished = _watcher(run, tmp_path / "figures" / "live.png", every=1)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run), str(STEPS)], cwd=REPO,
                              env={**__import__("os").environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "stopped.png").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert writer.poll() is None, "the run ended before the live view drew anything: make it longer"
        stopped.send_signal(signal.SIGINT)
        out, err = stopped.communicate(timeout=60)
        assert stopped.returncode == 130 and "last complete figure" in err, err
        assert _is_png(tmp_path / "stopped.png")
        writer_out, writer_err = writer.communicate(timeout=180)
        assert writer.returncode == 0 and "writer done" in writer_out, writer_err
        out, err = finished.communicate(timeout=60)
    finally:
        for process in (writer, stopped, finished):
            if process.poll() is None:
                process.kill()
    assert finished.returncode == 0, err
    drawn = [int(line.rsplit("step ", 1)[1].rstrip(")")) for line in out.splitlines() if "step " in line]
    assert len(set(drawn)) >= 3 and drawn == sorted(drawn) and drawn[-1] == STEPS - 1, out  # it followed the run
    assert f"run ended; wrote gradients: {tmp_path / 'figures' / 'live.png'}" in out
    assert _is_png(tmp_path / "figures" / "live.png")
    records = open_run(run)  # the writer lost nothing to its readers
    layers = records.series("layers")
    assert list(layers.steps) == list(range(STEPS)) and np.isfinite(layers.values).all()
    assert records.series("early_warning").steps.tolist() == [8]


def test_watch_refuses_an_existing_output_and_a_bad_interval(tmp_path, capsys):
    from plots.cli import main

    (tmp_path / "old.png").write_bytes(b"old")
    assert main(["watch", str(tmp_path / "run.h5"), "-o", str(tmp_path / "old.png")]) == 1
    error = capsys.readouterr().err
    assert "already exists" in error and error.count("\n") == 1 and (tmp_path / "old.png").read_bytes() == b"old"
    assert main(["watch", str(tmp_path / "run.h5"), "-o", str(tmp_path / "new.png"), "--every", "0"]) == 1
    assert "--every" in capsys.readouterr().err and not (tmp_path / "new.png").exists()

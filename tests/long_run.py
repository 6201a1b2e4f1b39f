"""A long probed training loop, measured as it goes, with a reader polling its records file from another process.

Not a test module: ``tests/test_long_run.py`` runs a short loop, ``bench/long_run.py`` the 10,000 steps. The loop
trains a tiny real BERT classifier with the default probes recording every step (the heaviest schedule) and a
flush every 50 recorded steps. Every ``sample_every`` steps it notes the process's resident memory (RSS, from
/proc), the Python allocations still held (tracemalloc), the file's size and the time of the writer's flushes since
the last sample. The reader (``python tests/long_run.py read PATH``) opens the file every ``poll_seconds`` while
it grows and checks that it sees a consistent prefix: every series' steps run 0, 1, 2, ... without a gap, and the
rows seen at one poll are still there, unchanged, at the next.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@dataclass
class Sample:
    step: int
    rss_mb: float
    traced_mb: float
    file_mb: float
    flush_ms: float  # median flush time since the previous sample
    flushes: int


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def train(path: Path, steps: int, sample_every: int, poll_seconds: float, echo: bool = False) -> dict:
    """Run the probed loop with a polling reader beside it; what both measured."""
    import torch

    import probes
    import tiny
    from probes.records import RunMeta, RunWriter

    flush_times: list[float] = []

    class TimedWriter(RunWriter):
        def extend(self, name, steps, block) -> None:  # one block of rows per series and flush of the session
            started = time.perf_counter()
            super().extend(name, steps, block)
            flush_times.append(time.perf_counter() - started)

    torch.manual_seed(0)
    model = tiny.classifier("bert", layers=2, seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = [tiny.batch(4, 16, seed=i) for i in range(16)]
    writer = TimedWriter.create(path, RunMeta(model="tiny-bert", seed=0))
    samples: list[Sample] = []
    reader = None
    tracemalloc.start()
    started = time.perf_counter()
    with probes.attach(model, optimizer, writer, schedule=probes.Schedule(every=1), flush_every=50):
        for step in range(steps):
            loss = model(**batches[step % len(batches)]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            if reader is None and flush_times:
                reader = subprocess.Popen([sys.executable, str(Path(__file__)), "read", str(path), str(poll_seconds)],
                                          stdout=subprocess.PIPE, text=True, cwd=REPO,
                                          env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}"})
            if (step + 1) % sample_every == 0:
                recent = flush_times[samples[-1].flushes if samples else 0:] or flush_times[-1:] or [float("nan")]
                samples.append(Sample(step + 1, rss_mb(), tracemalloc.get_traced_memory()[0] / 2 ** 20,
                                      path.stat().st_size / 2 ** 20, 1e3 * float(np.median(recent)),
                                      len(flush_times)))
                if echo:
                    print(json.dumps(asdict(samples[-1])), flush=True)
    seconds = time.perf_counter() - started
    writer.close()
    tracemalloc.stop()
    polls = {"polls": 0, "problems": ["the reader never started"]}
    if reader is not None:
        reader.terminate()
        polls = json.loads(reader.communicate(timeout=60)[0].strip().splitlines()[-1])
    return {"samples": [asdict(s) for s in samples], "seconds": seconds, "steps": steps, "reader": polls,
            "flush_ms": [1e3 * t for t in flush_times], "file_bytes": path.stat().st_size}


def read(path: Path, poll_seconds: float) -> None:
    """Poll the file until terminated; print one JSON line: polls made, largest prefix seen, problems found."""
    import signal

    from probes.records import RecordsError, open_run

    seen: dict[str, tuple[int, str]] = {}
    report = {"polls": 0, "steps_seen": 0, "problems": []}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    while not stop:
        try:
            run = open_run(path)
        except RecordsError as error:
            report["problems"].append(f"poll {report['polls']}: {error}")
            run = None
        if run is not None:
            report["polls"] += 1
            for kind in run.records:
                for name in run.names(kind):
                    series = run.series(name, kind)
                    if not np.array_equal(series.steps, np.arange(series.steps.size)):
                        report["problems"].append(f"poll {report['polls']}: {kind}/{name} steps have a gap")
                    before, digest = seen.get(name, (0, ""))
                    if series.steps.size < before or _digest(series, before) != digest:
                        report["problems"].append(f"poll {report['polls']}: {kind}/{name} lost or changed rows")
                    seen[name] = series.steps.size, _digest(series, series.steps.size)
            report["steps_seen"] = max((n for n, _ in seen.values()), default=0)
        time.sleep(poll_seconds)
    print(json.dumps(report), flush=True)


def _digest(series, rows: int) -> str:
    return hashlib.sha256(series.values[:rows].tobytes() + series.steps[:rows].tobytes()).hexdigest() if rows else ""


def slope(x: list[float], y: list[float]) -> float:
    return float(np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 1)[0])


if __name__ == "__main__" and sys.argv[1:2] == ["read"]:
    read(Path(sys.argv[2]), float(sys.argv[3]))

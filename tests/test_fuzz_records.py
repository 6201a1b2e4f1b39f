"""Damaged records files against every reader: a seeded slice of ``bench/fuzz_records.py`` (which runs 1,000+).

    python3 -m pytest tests/test_fuzz_records.py   # ~2 minutes on a busy core

Each mutant of a real records file (``tests/records_fuzz.py``: truncated, bytes flipped in the superblock, HDF5
metadata and data, attributes dropped or retyped, datasets reshaped, NaN/inf, steps out of order, grid points
missing) must end every reader with a valid result or one line ``error: ...`` and a non-zero status, within the time
limit: never a crash of the interpreter, a hang or a traceback. The readers run in a watched worker process (so a
segfault is seen); a few mutants also go through the real command lines.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import records_fuzz

REPO = Path(__file__).resolve().parents[1]
PER_MUTATION = 2


@pytest.fixture(scope="module")
def mutants(tmp_path_factory) -> list[records_fuzz.Mutant]:
    folder = tmp_path_factory.mktemp("fuzz")
    sources = records_fuzz.seed_files(folder / "sources")
    pairs = len([(s, m) for s in sources for m in records_fuzz.MUTATIONS
                 if s != "killed" or m in records_fuzz.BYTE_MUTATIONS])
    return records_fuzz.make_mutants(sources, folder / "mutants", PER_MUTATION * pairs // len(sources), seed=18)


@pytest.mark.slow
def test_every_reader_ends_every_mutant_with_a_result_or_one_line(mutants, tmp_path):
    worker = records_fuzz.Worker(timeout=300)
    faults = []
    try:
        for number, mutant in enumerate(mutants):
            readers = [r for r in records_fuzz.READERS if r != "plots" or number % 4 == 0]  # plots is slow
            for reader in readers:
                verdict = worker.read(reader, mutant.path, tmp_path / "scratch")
                outcome = records_fuzz.judge(verdict)
                if outcome not in ("ok", "error"):
                    faults.append(f"{outcome} {reader} {mutant.path.name} ({mutant.description}): "
                                  f"{verdict['stderr'].strip().splitlines()[-1:] }")
    finally:
        worker.close()
    assert not faults, "\n".join(faults)
    assert {m.mutation for m in mutants} == set(records_fuzz.MUTATIONS)


@pytest.mark.slow
def test_the_command_lines_answer_damaged_records_in_one_line(mutants, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    chosen = [m for m in mutants if m.mutation in ("truncate", "flip_metadata", "reshape_dataset")][:3]
    for number, mutant in enumerate(chosen):
        for command in (["plots", "all", str(mutant.path), "-o", str(tmp_path / f"figures-{number}")],
                        ["diagnostics.report", str(mutant.path)]):
            done = subprocess.run([sys.executable, "-m", *command], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode >= 0, f"{command[0]} died of signal {-done.returncode} on {mutant.description}"
            assert "Traceback" not in done.stderr, done.stderr[-3000:]
            if done.returncode:
                errors = [line for line in done.stderr.splitlines() if "error:" in line]
                assert len(errors) == 1, done.stderr

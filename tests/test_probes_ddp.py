"""Probes under torchrun (2 processes, gloo, CPU) give the norms of one process on the same global batch, with DDP
(replicated gradients) and with FSDP2 (``fully_shard``: sharded DTensor gradients combined across ranks), and the
interpolation probe the lines of one process (held sample split over the ranks; under FSDP2 each moves its shard).

Run: ``python3 -m pytest tests/test_probes_ddp.py`` (slow: starts two worker processes per test).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import probes
from probes.records import open_run
from probe_harness import LoopConfig, interpolation_probe, oracle_matrix, run_loop

HARNESS = Path(__file__).with_name("probe_harness.py")


def _torchrun(mode: str, folder: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HARNESS), mode, str(folder / "run.h5"), "--oracle", str(folder / "oracle.json")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers
    assert process.returncode == 0, output[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["oracle.json", "run.h5"]  # rank 0 wrote, alone


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process on the whole global batch of every step."""
    chosen = [probes.GradientNorms(), probes.ActivationGradients(), interpolation_probe()]
    config = LoopConfig(steps=4, length=12, clip=0.1, probe_list=chosen)
    return run_loop(config, tmp_path_factory.mktemp("single") / "run.h5").records


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_processes_match_one_process(tmp_path, single, mode):
    _torchrun(mode, tmp_path)
    records = open_run(tmp_path / "run.h5")
    for name in ("start", "last_update"):  # the held sample split over the ranks, the sums all-reduced
        assert records.series(name).steps.tolist() == single.series(name).steps.tolist() == [1, 3]
        np.testing.assert_allclose(records.series(name).values, single.series(name).values, rtol=1e-5)
    for name in ("layers", "components", "activations"):  # key-bias gradients are ~1e-13 rounding noise: atol
        np.testing.assert_allclose(records.series(name).values, single.series(name).values, rtol=1e-4, atol=1e-9)
    columns = ["loss", "grad_norm_pre_clip", "grad_norm_post_clip"]
    np.testing.assert_allclose(records.frame("probe")[columns], single.frame("probe")[columns], rtol=1e-4)
    oracle = json.loads((tmp_path / "oracle.json").read_text())  # rank 0's own param.grad after the all-reduce
    if mode == "ddp":
        layers = records.series("layers")
        np.testing.assert_allclose(layers.values, oracle_matrix(oracle, layers.columns), rtol=1e-5)

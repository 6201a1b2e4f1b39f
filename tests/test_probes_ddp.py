"""Probes under torchrun DDP (2 processes, gloo, CPU) give the norms of one process on the same global batch.

Run: ``python3 -m pytest tests/test_probes_ddp.py`` (slow: starts two worker processes).
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

from diagnostics.records import open_run
from probe_harness import LoopConfig, one_thread, run_loop  # noqa: F401

HARNESS = Path(__file__).with_name("probe_harness.py")


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HARNESS), str(tmp_path / "ddp.h5"), "--oracle", str(tmp_path / "oracle.json")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers
    assert process.returncode == 0, output[-3000:]
    assert not (tmp_path / "ddp.h5.rank1").exists() and len(list(tmp_path.glob("*.h5"))) == 1  # rank 0 only
    single = run_loop(LoopConfig(steps=4, length=12, clip=0.1), tmp_path / "single.h5").records
    ddp = open_run(tmp_path / "ddp.h5")
    for name in ("layers", "components", "activations"):
        np.testing.assert_allclose(ddp.series(name).values, single.series(name).values, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(ddp.frame("probe")[["loss", "grad_norm_pre_clip", "grad_norm_post_clip"]],
                               single.frame("probe")[["loss", "grad_norm_pre_clip", "grad_norm_post_clip"]],
                               rtol=1e-4)
    oracle = json.loads((tmp_path / "oracle.json").read_text())  # rank 0's own param.grad after the all-reduce
    layers = ddp.series("layers")
    np.testing.assert_allclose(layers.values, [[step[c] for c in layers.columns] for step in oracle], rtol=1e-5)

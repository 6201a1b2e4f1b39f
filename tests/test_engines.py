"""The engines for real: a Ray cluster of this machine (``ray.init(num_cpus=2)`` through the command), submitit's
LocalExecutor (a subprocess per job) and DebugExecutor, and the one-line refusals of each."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diagnostics.embedded import DEFAULT_MODEL
from diagnostics.engines import Engine, EngineError, finetune_all
from diagnostics.finetune import FinetuneConfig, finished_run
from probes.records import open_run

EMBEDDED = pytest.mark.skipif(not (DEFAULT_MODEL / "model.safetensors").exists(), reason="embedded default not built")
RAY = pytest.mark.skipif(not importlib.util.find_spec("ray"), reason='needs pip install -e ".[distributed]"')
SUBMITIT = pytest.mark.skipif(not importlib.util.find_spec("submitit"), reason='needs pip install -e ".[distributed]"')
QUICK_STUDY = ["-m", "diagnostics.study", "--quick"]


def command(repo_root: Path, args: list[str], timeout: int = 900, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=repo_root, timeout=timeout,
                          stdin=subprocess.DEVNULL, **options)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


@EMBEDDED
@pytest.mark.parametrize("args, says", [
    (["--engine", "ray", "--ray-address", "127.0.0.1:1"], "no Ray cluster answers at --ray-address 127.0.0.1:1"),
    (["--engine", "slurm", "--slurm-option", "account"], "--slurm-option 'account' is not KEY=VALUE"),
    (["--engine", "slurm"], "--engine slurm submits with sbatch, which is not on this machine"),
    (["--no-wait"], "--no-wait submits SLURM jobs"),
    (["--stop-early", "hyperband"], "the rule is dodge or predictor"),
    (["--stop-early", "dodge:keep=2"], "dodge takes at and keep, each a number in (0, 1]"),
])
def test_bad_engine_input_is_one_line_and_writes_nothing(tmp_path, repo_root, args, says):
    out = tmp_path / "study"
    line = one_error_line(command(repo_root, [*QUICK_STUDY, "--out", str(out), *args], timeout=120))
    assert says in line
    assert not out.exists()


@EMBEDDED
def test_engine_not_installed_is_one_line(tmp_path, repo_root):
    out = tmp_path / "bank"
    code = ("import sys; sys.modules['ray'] = sys.modules['submitit'] = None; from diagnostics.seed_bank import main; "
            "sys.argv[0] = 'seed_bank'; raise SystemExit(main(sys.argv[1:]))")
    for engine, module in (("ray", "ray"), ("slurm", "submitit")):
        line = one_error_line(command(repo_root, ["-c", code, "--out", str(out), "--engine", engine], timeout=120))
        assert line == (f"error: --engine {engine} needs {module}, which is not installed: "
                        'pip install -e ".[distributed]"')
    assert not out.exists()


def records_without_timings(run_h5: Path) -> dict:
    """Everything a run recorded but when and how long: summary (less seconds), every series and grid."""
    run = open_run(run_h5)
    values = {f"summary/{k}": v for k, v in run.summary.items() if k != "seconds"}
    for kind, named in run.records.items():
        for name, record in named.items():
            arrays = [record.steps, record.values] if hasattr(record, "steps") else list(record.fields.values())
            values[f"{kind}/{name}"] = [np.asarray(array).tobytes() for array in arrays]  # NaN equals NaN here
    return values


def ray_worker_running(name: str) -> list[int]:
    """PIDs of the Ray worker processes running a task called ``name`` (Ray titles them ``ray::<name>``)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and cmdline[0].startswith(f"ray::{name}"):
            found.append(process.pid)
    return found


def writing_records(pid: int, out: Path) -> bool:
    """Whether process ``pid`` holds a records file under ``out`` open."""
    import psutil

    try:
        files = psutil.Process(pid).open_files()
        return any(f.path.startswith(str(out)) and f.path.endswith("run.h5") for f in files)
    except psutil.Error:
        return False


@pytest.mark.slow
@EMBEDDED
@RAY
def test_quick_study_on_ray_with_a_worker_killed_matches_the_local_engine(tmp_path, repo_root, quick_study):
    """The quick study on a Ray cluster of this machine, one worker SIGKILLed in the middle of a run: the run is
    retried (its partial folder kept), the report is complete, and records and report tables equal the local
    engine's (the study's own test run, shared), timings aside."""
    (local, first), on_ray = quick_study, tmp_path / "ray"
    assert first.returncode == 0, first.stderr[-3000:]
    study = subprocess.Popen([sys.executable, *QUICK_STUDY, "--out", str(on_ray), "--engine", "ray", "--workers",
                              "2"], cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and study.poll() is None and time.monotonic() < deadline:
        for pid in ray_worker_running("finetune_task"):
            if writing_records(pid, on_ray):  # in the middle of a run: its records are open
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
        time.sleep(0.1)
    stdout, stderr = study.communicate(timeout=900)
    assert killed is not None, "no Ray worker was running a run"
    assert study.returncode == 0, stderr[-3000:]
    assert list(on_ray.glob("*.interrupted-1")), "the killed run's folder is set aside"
    runs = sorted(p.parent.name for p in local.glob("*/run.h5"))
    assert runs == sorted(p.parent.name for p in on_ray.glob("*/run.h5") if "interrupted" not in p.parent.name)
    for name in runs:
        assert records_without_timings(on_ray / name / "run.h5") == records_without_timings(local / name / "run.h5")

    def tables(out: Path) -> str:  # the command line and the paths under --out aside
        return re.sub(r"command `[^`]*`", "", (out / "report.md").read_text()).replace(str(out), "OUT")

    assert tables(on_ray) == tables(local)
    assert {p.name for p in (on_ray / "figures").glob("*.pdf")} == {p.name for p in (local / "figures").glob("*.pdf")}


@pytest.mark.slow
@EMBEDDED
@RAY
def test_out_not_shared_with_the_ray_workers_is_one_line(tmp_path, repo_root):
    """A real cluster (``ray start --head``) whose processes see another folder at --out's path (a tmpfs mounted
    over it in their own mount namespace): the command says so in one line and starts no run."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -m (root) to give the cluster its own view of the file system")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    port = 6390 + os.getpid() % 500
    ray = Path(sys.executable).with_name("ray")
    env = {**os.environ, "PYTHONPATH": str(repo_root), "RAY_AUTH_MODE": "disabled"}  # a private test cluster
    cluster = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs none {hidden} && exec {ray} start --head --block --port "
                                      f"{port} --node-ip-address 127.0.0.1 --num-cpus 1 --include-dashboard false"],
        cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=env)
    try:
        out = hidden / "bank"
        deadline = time.monotonic() + 120
        result = None
        while time.monotonic() < deadline:
            result = command(repo_root, ["-m", "diagnostics.seed_bank", "--out", str(out), "--engine", "ray",
                                         "--ray-address", f"127.0.0.1:{port}", "--tasks", "hedge", "--seeds", "1",
                                         "--corrected-seeds", "0"], timeout=300, env=env)
            if "no Ray cluster answers" not in result.stderr:
                break
            time.sleep(2)  # the cluster is still starting
        line = one_error_line(result)
        assert f"--out {out}" in line and "is not shared with the Ray workers" in line
        assert "cannot use it (No such file or directory)" in line and "storage every node mounts" in line
        assert not list(out.rglob("run.h5")) and not list(out.glob("lr*/*"))
    finally:
        os.killpg(cluster.pid, signal.SIGTERM)
        cluster.wait(timeout=60)


BANK = ["-m", "diagnostics.seed_bank", "--tasks", "hedge", "--lrs", "2e-4", "--seeds", "2", "--corrected-seeds", "0",
        "--epochs", "1", "--train-examples", "32"]


@pytest.mark.slow
@EMBEDDED
@SUBMITIT
def test_slurm_path_on_submitits_local_executor_submits_without_waiting_then_collects(tmp_path, repo_root):
    """Two runs as a job array through submitit's LocalExecutor (a real subprocess per job): --no-wait submits and
    exits; the same command run again submits nothing that is running, waits and collects."""
    out = tmp_path / "bank"
    again = [*BANK, "--out", str(out), "--engine", "slurm", "--slurm-cluster", "local", "--workers", "2",
             "--slurm-time", "10", "--slurm-option", "account=lab", "--no-wait"]
    log = tmp_path / "submit.log"
    started = time.monotonic()
    with open(log, "w") as into:  # a file: the jobs inherit the command's output and outlive it
        submitted = subprocess.run([sys.executable, *again], cwd=repo_root, stdout=into, stderr=into, timeout=120)
    assert submitted.returncode == 0, log.read_text()[-3000:]
    assert time.monotonic() - started < 45, "--no-wait does not wait for the runs"
    assert "2 runs submitted, 0 still queued or running" in log.read_text()
    jobs = out / "lr0.0002" / "slurm" / "jobs.json"
    assert jobs.is_file()
    collected = command(repo_root, [arg for arg in again if arg != "--no-wait"])
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert "2 runs done" in collected.stdout
    assert "submitted" not in collected.stderr, "runs in flight are not submitted again"
    for seed in (0, 1):
        assert finished_run(out / "lr0.0002" / f"hedge-default-s{seed}") is not None
    assert not list(out.rglob("*.interrupted-*"))


@pytest.mark.slow
@EMBEDDED
@SUBMITIT
def test_a_preempted_slurm_job_is_requeued_and_its_run_restarted_in_a_fresh_folder(tmp_path, repo_root):
    """SIGUSR2 to a running job, as SLURM sends before preempting it: submitit requeues the job, the run restarts
    in a fresh folder and the interrupted one is kept as <run>.interrupted-1."""
    import psutil

    out = tmp_path / "bank"
    args = [*BANK, "--seeds", "1", "--epochs", "3", "--out", str(out), "--engine", "slurm", "--slurm-cluster",
            "local", "--slurm-time", "10", "--no-wait"]
    with open(tmp_path / "submit.log", "w") as into:
        assert subprocess.run([sys.executable, *args], cwd=repo_root, stdout=into, stderr=into).returncode == 0
    controller = int(next(iter(json.loads((out / "lr0.0002" / "slurm" / "jobs.json").read_text()).values())))
    deadline = time.monotonic() + 300
    preempted = False
    while not preempted and time.monotonic() < deadline:
        for job in psutil.Process(controller).children():
            if writing_records(job.pid, out):
                job.send_signal(signal.SIGUSR2)
                preempted = True
        time.sleep(0.1)
    assert preempted, "the job never got to training"
    collected = command(repo_root, [arg for arg in args if arg != "--no-wait"])
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert finished_run(out / "lr0.0002" / "hedge-default-s0") is not None
    assert (out / "lr0.0002" / "hedge-default-s0.interrupted-1" / "run.h5").is_file()


@pytest.mark.slow
@EMBEDDED
@SUBMITIT
def test_slurm_path_on_submitits_debug_executor_names_the_run_that_failed(tmp_path):
    """A job whose run raises (its model folder is not there on the node) is named in one line; the other run
    finishes."""
    common = dict(task="hedge", recipe="default", out=tmp_path / "runs", max_length=16, evals=1, epochs=1,
                  train_examples=16, dev_examples=16, threads=1, probes=False)
    configs = [FinetuneConfig(seed=0, model=tmp_path / "not-copied-here", **common), FinetuneConfig(seed=1, **common)]
    with pytest.raises(EngineError, match=r"^1 of 2 runs failed in their jobs, first hedge-default-s0 \(job "):
        finetune_all(configs, Engine("slurm", workers=1, slurm_cluster="debug"), lambda result: None)
    assert finished_run(tmp_path / "runs" / "hedge-default-s1") is not None
    assert not (tmp_path / "runs" / "hedge-default-s0").exists()


@pytest.mark.slow
@EMBEDDED
@RAY
def test_ctrl_c_cancels_the_ray_tasks_and_leaves_closed_readable_records(tmp_path, repo_root):
    import h5py

    out = tmp_path / "bank"
    bank = subprocess.Popen([sys.executable, "-m", "diagnostics.seed_bank", "--out", str(out), "--tasks", "hedge",
                             "--lrs", "2e-4", "--seeds", "2", "--corrected-seeds", "0", "--epochs", "2",
                             "--engine", "ray", "--workers", "2"],
                            cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list(out.glob("lr*/*/run.h5")) and bank.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # into the training steps
    workers = [pid for pid in ray_worker_running("finetune_task") if writing_records(pid, out)]
    bank.send_signal(signal.SIGINT)
    _, stderr = bank.communicate(timeout=300)
    assert bank.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted by SIGINT: finished runs are kept")
    runs = list(out.glob("lr*/*/run.h5"))
    assert runs and all(finished_run(path.parent) is None for path in runs), "the runs were stopped, not finished"
    for path in runs:
        with h5py.File(path, "r", locking=False):  # a writer that closed leaves no 'open for write' flag
            pass
        open_run(path)
    import psutil

    assert workers and not [pid for pid in workers if psutil.pid_exists(pid)], "the command's Ray workers are gone"

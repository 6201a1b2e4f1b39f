"""Probes under torchrun (2 processes, gloo, CPU) give the norms of one process on the same global batch, with DDP
(replicated gradients), FSDP2 (``fully_shard``: sharded DTensor gradients) and FSDP1 (``FullyShardedDataParallel``
with flat or original parameters, FULL_SHARD and SHARD_GRAD_OP: each parameter's part of the local gradient shard),
and DeepSpeed ZeRO 1/2/3 (each parameter's part of the rank's partition), and refuse, in one line, the FSDP1 and
DeepSpeed settings they do not measure exactly; the interpolation probe gives the lines of one process under DDP
and FSDP2 (held sample split over the ranks; under FSDP2 each moves its shard). The Trainer's and Accelerate's own
distributed paths are checked the same way.

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
import torch

import probes
import tiny
from probes.records import open_run
import trainer_worker
from diagnostics.hardware import Machine
from probe_harness import FSDP1, REFUSED, ZERO, LoopConfig, distributed_probes, oracle_matrix, run_loop

HARNESS = Path(__file__).with_name("probe_harness.py")
TRAINER = Path(__file__).with_name("trainer_worker.py")


def torchrun(script: Path, *arguments: str, timeout: int = 300) -> str:
    """Run ``script`` under torchrun with 2 processes of 1 thread; returns the output, which fails the test unless
    every process exits cleanly."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               *arguments]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process on the whole global batch of every step."""
    config = LoopConfig(steps=4, length=12, clip=0.1, probe_list=distributed_probes())
    return run_loop(config, tmp_path_factory.mktemp("single") / "run.h5").records


def assert_matches_one_process(records, single) -> None:
    names = [name for name in ("layers", "components", "activations", "parameters", "updates")
             if any(name in kind for kind in single.records.values())]
    for name in names:  # key-bias gradients are ~1e-13 rounding noise: atol
        series, expected = records.series(name), single.series(name)
        assert list(series.columns) == list(expected.columns)
        np.testing.assert_allclose(series.values, expected.values, rtol=1e-5, atol=1e-9)
    columns = ["loss", "grad_norm_pre_clip", "grad_norm_post_clip"]
    np.testing.assert_allclose(records.frame("train")[columns], single.frame("train")[columns], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_processes_match_one_process(tmp_path, single, mode):
    torchrun(HARNESS, mode, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{mode}.h5"] + ([f"{mode}.json"] if mode == "ddp" else [])
    records = open_run(tmp_path / f"{mode}.h5")  # rank 0 wrote, alone
    assert_matches_one_process(records, single)
    for name in ("start", "last_update"):  # the held sample split over the ranks, the sums all-reduced
        assert records.series(name).steps.tolist() == single.series(name).steps.tolist() == [1, 3]
        np.testing.assert_allclose(records.series(name).values, single.series(name).values, rtol=1e-5)
    if mode == "ddp":
        oracle = json.loads((tmp_path / "ddp.json").read_text())  # rank 0's own param.grad after the all-reduce
        layers = records.series("layers")
        np.testing.assert_allclose(layers.values, oracle_matrix(oracle, layers.columns), rtol=1e-5)


@pytest.mark.slow
def test_fsdp1_flat_and_original_parameters_match_one_process(tmp_path, single):
    """Regression: FSDP1 once recorded 67 of 105 tensors (original parameters) or 7 (flat ones), silently. Also
    ``probes.attach`` after ``accelerator.prepare`` with an FSDP1 plugin, in the same two processes; on a CPU
    Accelerate (which enables FSDP only on accelerators) wraps the model in DDP."""
    modes = [*FSDP1, "accelerate-fsdp"]
    torchrun(HARNESS, ",".join(modes), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{mode}.h5" for mode in modes] +
                                                                ["accelerate-fsdp.txt"])
    for mode in modes:
        assert_matches_one_process(open_run(tmp_path / f"{mode}.h5"), single)
    print("accelerate wrapped the model in", (tmp_path / "accelerate-fsdp.txt").read_text())


FP16_ZERO = [mode for mode, setting in ZERO.items() if "fp16" in setting]
FP16_MISSING = ("fp16 ZeRO needs a CPU on which oneDNN computes fp16 (AVX512-FP16 or AMX-FP16 instructions, "
                "oneDNN not capped below them by ONEDNN_MAX_CPU_ISA); DeepSpeed refuses fp16 on this one")


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory) -> tuple[Path, list[str]]:
    """One torchrun of every ZeRO mode this CPU can run (the fp16 ones only where DeepSpeed's CPU accelerator
    computes fp16), ZeRO-2 through ``accelerator.prepare`` and the refusals: ``(folder, modes run)``."""
    pytest.importorskip("deepspeed")
    folder = tmp_path_factory.mktemp("zero")
    modes = [mode for mode in ZERO if Machine.this().cpu_fp16 or mode not in FP16_ZERO]
    torchrun(HARNESS, ",".join([*modes, "accelerate-zero2", "deepspeed-refusals"]), str(folder))
    return folder, modes


def assert_matches_deepspeed(folder: Path, mode: str) -> None:
    """The mode's per-layer norms, pre-clip total, skipped steps and Adam second moments equal DeepSpeed's own."""
    records, oracle = open_run(folder / f"{mode}.h5"), json.loads((folder / f"{mode}.json").read_text())
    layers, moments, train = records.series("layers"), records.series("second_moment"), records.frame("train")
    np.testing.assert_allclose(layers.values, oracle_matrix(oracle, layers.columns), rtol=1e-5)
    global_norm = np.array([step["deepspeed_global_norm"] for step in oracle])
    applied = np.isfinite(global_norm)
    np.testing.assert_array_equal(train["skipped"], ~applied)
    np.testing.assert_allclose(train["grad_norm_pre_clip"][applied], global_norm[applied], rtol=1e-5)
    expected = oracle_matrix([step["second_moment"] for step in oracle], moments.columns)
    np.testing.assert_allclose(moments.values[applied], expected[applied], rtol=1e-5)


@pytest.mark.slow
def test_deepspeed_zero_matches_deepspeeds_own_gradients_and_one_process(zero_runs, single):
    """DeepSpeed ZeRO 1/2/3 (fp32, bf16, optimiser offload, gradient accumulation), and ZeRO-2 through
    ``accelerator.prepare``, in one torchrun. Every mode equals DeepSpeed's own full gradients
    (``safe_get_full_grad``), global pre-clip norm and full Adam state; the fp32 ones also equal one process. Then
    the settings probes refuse, each in one line."""
    folder, _ = zero_runs
    for mode in ZERO:
        if mode not in FP16_ZERO:
            assert_matches_deepspeed(folder, mode)
            if "bf16" not in ZERO[mode]:
                assert_matches_one_process(open_run(folder / f"{mode}.h5"), single)
    assert (folder / "accelerate-zero2.txt").read_text() == "DeepSpeedEngine"
    assert_matches_one_process(open_run(folder / "accelerate-zero2.h5"), single)
    said = json.loads((folder / "deepspeed-refusals.json").read_text())
    assert list(said) == list(REFUSED)
    assert said["stage 0"] == said["stage 0, bf16"] == (
        "probes do not support DeepSpeed without ZeRO (DeepSpeedEngine: stage 0 reduces gradients after the backward, "
        "with no ZeRO step to read them at); use ZeRO stage 1, 2 or 3 (zero_optimization.stage), or DDP")
    assert said["ZeRO-3, torch optimiser"].startswith("probes need the ZeRO optimiser of ZeRO-3 parameters")
    assert said["ZeRO-2, interpolation"].startswith("Interpolation does not support DeepSpeed ZeRO")
    assert not any("\n" in message for message in said.values())


@pytest.mark.slow
def test_deepspeed_zero_fp16_divides_by_the_loss_scale_and_skips_overflows(zero_runs):
    """fp16 ZeRO 1/3 at loss scale 2^8 equals DeepSpeed's own unscaled numbers; at 2^17 (ZeRO-2) the overflowing
    steps are recorded as skipped. Only where the CPU computes fp16 (not on Zen 4 or AVX2-only CPUs)."""
    folder, modes = zero_runs
    if not set(FP16_ZERO) <= set(modes):
        pytest.skip(FP16_MISSING)
    for mode in FP16_ZERO:
        assert_matches_deepspeed(folder, mode)
    overflow = json.loads((folder / "zero2-fp16-overflow.json").read_text())
    assert not np.isfinite(overflow[0]["deepspeed_global_norm"])


@pytest.fixture(scope="module")
def single_trainer(tmp_path_factory):
    """The Trainer in one process on batches of 8: its records and its own logged pre-clip norms."""
    folder = tmp_path_factory.mktemp("single-trainer")
    trainer = trainer_worker.train(folder, per_device_batch=8)
    return open_run(folder / "run.h5"), [entry["grad_norm"] for entry in trainer.state.log_history
                                         if "grad_norm" in entry]


ZERO2_TRAINER = ('deepspeed={"zero_optimization": {"stage": 2}, '
                 '"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", '
                 '"gradient_clipping": "auto"}')


@pytest.mark.slow
@pytest.mark.parametrize("options", [[], ["fsdp=full_shard"], [ZERO2_TRAINER]], ids=["ddp", "fsdp-args", "deepspeed"])
def test_trainer_under_torchrun_matches_one_process(tmp_path, single_trainer, options):
    """The Trainer's own distributed path, 2 processes of 4 examples against one of 8. With ``fsdp`` arguments on a
    CPU, Accelerate (which enables FSDP only on accelerators) trains with DDP: recorded in ``wrapped.txt``. The
    Trainer's default ``average_tokens_across_devices=True`` multiplies the loss by the number of processes for
    models that accept loss keywords, a classifier's gradients included: turned off here, so that the gradients
    themselves equal one process's (probes record gradients as they are either way). With ``deepspeed`` (ZeRO-2, the
    Trainer's own AdamW) the callback reads ZeRO's partitioned gradients. Not ZeRO-3 here: with it the
    Trainer's arguments make transformers build the model under ``deepspeed.zero.Init``, which initialises other
    weights than one process (ZeRO-3 itself is checked against DeepSpeed's own gradients above)."""
    if options == [ZERO2_TRAINER]:
        pytest.importorskip("deepspeed")
    expected, logged = single_trainer
    torchrun(TRAINER, str(tmp_path / "two"), "4", "average_tokens_across_devices=False", *options)
    records = open_run(tmp_path / "two" / "run.h5")
    assert list(records.series("layers").steps) == [0, 1, 2]
    assert_matches_one_process(records, expected)
    np.testing.assert_allclose(records.frame("train")["grad_norm_pre_clip"], logged, rtol=1e-5)
    print("trained as", (tmp_path / "two" / "wrapped.txt").read_text())


@pytest.mark.slow
def test_trainer_with_deepspeed_zero3_records_every_tensor_and_deepspeeds_own_norm(tmp_path):
    """ZeRO-3 under the Trainer: transformers builds the model under ``deepspeed.zero.Init`` (parameters partitioned
    from their creation, other initial weights than one process), so the oracle is DeepSpeed's own pre-clip norm,
    which the Trainer logs as ``grad_norm``. Every trainable tensor is recorded, none empty (FSDP1 once had
    silently recorded 67 of 105), and the per-layer norms add up to the total."""
    pytest.importorskip("deepspeed")
    zero3 = ZERO2_TRAINER.replace('"stage": 2', '"stage": 3')
    torchrun(TRAINER, str(tmp_path), "4", "average_tokens_across_devices=False", zero3)
    records = open_run(tmp_path / "run.h5")
    assert (tmp_path / "wrapped.txt").read_text() == "DeepSpeedEngine"
    pre = records.frame("train")["grad_norm_pre_clip"].to_numpy()
    np.testing.assert_allclose(pre, json.loads((tmp_path / "logged.json").read_text()), rtol=1e-5)
    trainable = [name for name, param in tiny.classifier("bert").named_parameters() if param.requires_grad]
    components = records.series("components")
    assert len(components.columns) == len(trainable) and (components.values > 0).all()
    layers = records.series("layers").values
    np.testing.assert_allclose(np.sqrt(np.square(layers).sum(axis=1)), pre, rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(np.square(components.values).sum(axis=1)), pre, rtol=1e-5)


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo group of one process (FSDP1 then falls back to NO_SHARD), destroyed afterwards."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("setting, message", [
    ({}, "sharding_strategy=NO_SHARD; use FULL_SHARD or SHARD_GRAD_OP"),
    ({"cpu_offload": "offload"}, "FSDP1 with CPU offload"),
    ({"ignored_modules": "pooler"}, "ignored_modules"),
])
def test_fsdp1_settings_not_measured_exactly_are_refused_in_one_line(tmp_path, one_process_group, setting, message):
    from torch.distributed.fsdp import CPUOffload, FullyShardedDataParallel

    model = tiny.classifier("bert", seed=0)
    options = {"cpu_offload": CPUOffload(offload_params=True)} if "cpu_offload" in setting else {}
    if "ignored_modules" in setting:
        options["ignored_modules"] = [model.bert.pooler]
    wrapped = FullyShardedDataParallel(model, device_id=torch.device("cpu"), **options)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=message) as refused:
        probes.attach(wrapped, optimizer, tmp_path / "run.h5")
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "run.h5").exists()

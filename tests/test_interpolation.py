"""The interpolation probe against its oracle, ``diagnostics.surface --line`` through checkpoints saved at
the probe's steps; its schedule, its memory and its refusals. Invariance is in ``tests/test_invariance.py``, the
distributed sums in ``tests/test_probes_ddp.py``, the figure in ``tests/test_plots.py``.

    python3 -m pytest tests/test_interpolation.py            # ~20 s; the finetune + CLI oracle is marked slow
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import probes
import tiny
from probe_harness import LoopConfig, run_loop
from probes.interpolation import COEFFICIENTS, Interpolation, evaluation_targets
from probes.records import open_run
from diagnostics.evaluation import load_examples, prepare_batches
from diagnostics.surface import main as surface_main
from diagnostics.tasks import Example, write_task

REPO = Path(__file__).resolve().parents[1]
LINE = ["--range", "-0.25", "1.25", "--grid", "7", "--json"]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    examples = [Example(" ".join(tiny.WORDS[i:i + 3 + i % 5]), None, (i // 3) % 2) for i in range(40)]
    folder = tmp_path_factory.mktemp("task") / "toy"
    write_task(folder, examples[:32], examples[32:], {"name": "toy", "kind": "single", "label_names": ["a", "b"],
                                                       "metric": "accuracy", "majority_baseline": 0.5})
    return folder


def held_sample(task_dir: Path, model, examples: int = 24) -> list[dict]:
    """The first training examples in the batches ``diagnostics.surface`` makes of them (so both see the same)."""
    _, chosen = load_examples(str(task_dir), "train", examples)
    batches = prepare_batches(chosen, tiny.tokenizer(), model, max_length=16, batch_size=8, device=torch.device("cpu"))
    return [{**inputs, "labels": labels} for inputs, labels in batches]


def surface_line(start: Path, end: Path, task_dir: Path, capsys) -> dict:
    assert surface_main(["--line", str(start), str(end), "--task", str(task_dir), "--max-examples", "24",
                         "--max-length", "16", "--batch-size", "8", "--precision", "fp32", *LINE]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])  # a library may log a line before it


def test_probe_equals_the_surface_line_through_checkpoints_saved_at_its_steps(task_dir, tmp_path, capsys):
    config = tiny.config("bert", len(tiny.tokenizer()))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).train()  # dropout on: eval mode must hold
    tiny.save(model, tmp_path / "start")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    probe = Interpolation(held_sample(task_dir, model), total_steps=6, times=3)
    with probes.attach(model, optimizer, tmp_path / "run.h5", probes=[probe], schedule=probes.Schedule(every=1),
                       strict=True):
        for step in range(6):
            model(**tiny.batch(8, 10, seed=step)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step in probe.targets:
                tiny.save(model, tmp_path / f"step{step}")
    series = open_run(tmp_path / "run.h5").series("start", "interpolation")
    assert series.steps.tolist() == [1, 3, 5] and series.attrs["examples"] == 24
    assert series.axes["a"].tolist() == list(COEFFICIENTS) * 2
    assert series.axes["field"].tolist() == ["loss"] * 7 + ["accuracy"] * 7
    for step, row in zip(series.steps, series.values):
        line = surface_line(tmp_path / "start", tmp_path / f"step{step}", task_dir, capsys)
        np.testing.assert_allclose(row[:7], line["loss"], rtol=2e-6)
        np.testing.assert_allclose(row[7:], line["accuracy"], rtol=1e-6)
    assert np.ptp(series.values[-1, :7]) > 1e-3  # the line is not flat: the comparison means something


@pytest.mark.slow
def test_finetune_records_the_line_that_the_surface_command_measures(task_dir, tiny_mlm_dir, tmp_path):
    """The runner attaches the probe; its last row (after the final update) is the line step0 -> final."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    finetune = [sys.executable, "-m", "diagnostics.finetune", "--task", str(task_dir), "--recipe", "mosbach",
                "--seed", "1", "--out", str(tmp_path), "--model", str(tiny_mlm_dir), "--max-length", "16",
                "--epochs", "2", "--batch-size", "8", "--lr", "1e-2", "--precision", "fp32"]
    done = subprocess.run(finetune, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "toy-mosbach-s1"
    series = open_run(run_dir / "run.h5").series("start", "interpolation")
    assert series.steps.tolist() == sorted(evaluation_targets(8, 10)) and series.attrs["examples"] == 32
    surface = [sys.executable, "-m", "diagnostics.surface", "--line", str(run_dir / "step0"), str(run_dir / "final"),
               "--task", str(task_dir), "--max-examples", "64", "--max-length", "16", "--precision", "fp32", *LINE]
    done = subprocess.run(surface, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.splitlines()[-1])
    np.testing.assert_allclose(series.values[-1, :7], line["loss"], rtol=2e-6)
    np.testing.assert_allclose(series.values[-1, 7:], line["accuracy"], rtol=1e-6)


def test_targets_spread_evenly_and_snap_back_to_recorded_steps(tmp_path):
    assert evaluation_targets(100, 10) == set(range(9, 100, 10))
    assert evaluation_targets(3, 10) == {0, 1, 2}
    sample = [tiny.batch(4, 8, seed=9)]
    known = Interpolation(sample, total_steps=12, times=2)  # targets 5 and 11
    every = Interpolation(sample, every=4)  # targets 3, 7, 11
    for name, probe, expected in (("known", known, [5, 10]), ("every", every, [0, 5, 10])):
        config = LoopConfig(steps=12, schedule=probes.Schedule(every=5, dense=0), probe_list=[probe])
        result = run_loop(config, tmp_path / f"{name}.h5")
        assert result.records.series("start").steps.tolist() == expected, name


def test_theta_0_is_one_copy_of_the_trainable_weights_on_device_or_host(tmp_path):
    sample = [tiny.batch(4, 8, seed=9)]
    kept, offloaded = (Interpolation(sample, total_steps=4, times=2, offload=offload) for offload in (False, True))
    results = [run_loop(LoopConfig(steps=4, probe_list=[probe]), tmp_path / f"{i}.h5")
               for i, probe in enumerate((kept, offloaded))]
    trainable = sum(p.numel() for p in tiny.classifier("bert").parameters() if p.requires_grad)
    for probe in (kept, offloaded):
        assert sum(t.numel() for t in probe.theta_0) == trainable
        assert {t.device.type for t in probe.theta_0} == {"cpu"}  # on a CPU machine both live on the host
    assert all(t.data_ptr() != p.data_ptr() for t, p in zip(kept.theta_0, kept.params))
    first, second = (r.records.series("start").values for r in results)
    np.testing.assert_array_equal(first, second)


def test_frozen_parameters_stay_out_of_the_line(tmp_path):
    model = tiny.classifier("bert")
    model.bert.embeddings.requires_grad_(False)
    probe = Interpolation([tiny.batch(4, 8, seed=9)], total_steps=2, times=1)
    run_loop(LoopConfig(steps=2, probe_list=[probe]), tmp_path / "run.h5", model=model)
    assert not any(name.startswith("bert.embeddings") for name in probe.names)
    assert len(probe.theta_0) == len([p for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("sample, message", [([], "non-empty list"), ([{"input_ids": torch.ones(2, 3)}], "'labels'")])
def test_a_sample_without_labels_is_refused(sample, message):
    with pytest.raises(ValueError, match=message):
        Interpolation(sample)


def test_fsdp1_is_refused_in_one_line():
    """FSDP1 flattens the weights into one parameter per unit: not supported yet."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = FullyShardedDataParallel(tiny.classifier("bert"), device_id=torch.device("cpu"))
        optimizer = torch.optim.AdamW(model.parameters())
        with pytest.raises(ValueError, match=r"FSDP1") as refusal:
            probes.attach(model, optimizer, None, probes=[Interpolation([tiny.batch(4, 8)])])
        assert "\n" not in str(refusal.value)
    finally:
        dist.destroy_process_group()

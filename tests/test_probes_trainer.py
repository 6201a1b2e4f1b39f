"""Probes under the Hugging Face ``Trainer`` (ProbeCallback) and under Accelerate, on tiny real models.

Run: ``python3 -m pytest tests/test_probes_trainer.py``. The Trainer clips before ``on_pre_optimizer_step``; the
oracle here is taken inside the Trainer's own clipping call, before it clips.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import probes
import tiny
from probes.records import open_run
from probe_harness import oracle_layers, oracle_matrix

transformers = pytest.importorskip("transformers")


class OracleTrainer(transformers.Trainer):
    """A Trainer that notes the per-layer gradient norms just before it clips them (every transformers version
    clips through ``accelerator.clip_grad_norm_``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.oracle: list = []
        clip = self.accelerator.clip_grad_norm_

        def noting_clip(parameters, *rest, **options):
            self.oracle.append(oracle_layers(self.model))
            return clip(parameters, *rest, **options)

        self.accelerator.clip_grad_norm_ = noting_clip


class StopAtStep(probes.Probe):
    """A minimal extension probe: asks the run to stop once ``step`` is reached (as an early warning would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, session, row) -> None:
        session.stop_requested = session.step >= self.step


def _dataset(size: int = 24):
    batch = tiny.batch(size, 10, seed=7)
    return [{key: value[i] for key, value in batch.items()} for i in range(size)]


def _trainer(tmp_path, callback, accumulation=1, max_steps=6):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=max_steps, per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation, learning_rate=1e-3, max_grad_norm=0.05, logging_steps=1,
        report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    trainer = OracleTrainer(model=tiny.classifier("bert"), args=args, train_dataset=_dataset(),
                            callbacks=[callback])
    return trainer


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_callback_records_pre_clip_norms(tmp_path, accumulation):
    trainer = _trainer(tmp_path, probes.ProbeCallback(tmp_path / "run.h5", schedule=probes.Schedule(every=1)),
                       accumulation=accumulation)
    trainer.train()
    records = open_run(tmp_path / "run.h5")
    layers = records.series("layers")
    assert list(layers.steps) == list(range(6))
    np.testing.assert_allclose(layers.values, oracle_matrix(trainer.oracle, layers.columns), rtol=1e-5)
    frame = records.frame("train")
    logged = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    np.testing.assert_allclose(frame["grad_norm_pre_clip"], logged, rtol=1e-5)
    np.testing.assert_allclose(frame["grad_norm_post_clip"], 0.05, rtol=1e-4)
    # the lr each update used: the Trainer's default linear decay from 1e-3 over 6 steps (the Trainer's own log
    # reads it after the scheduler stepped in transformers 4.x, before in 5.x)
    np.testing.assert_allclose(frame["lr"], 1e-3 * (6 - np.arange(6)) / 6, rtol=1e-6)
    assert np.isfinite(frame["loss"]).all() and records.series("activations").values.shape == (6, tiny.LAYERS)
    model, optimizer = trainer.model, trainer.optimizer
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    assert len(optimizer.optimizer._optimizer_step_pre_hooks) == 0


def test_a_probe_can_stop_the_trainer(tmp_path):
    callback = probes.ProbeCallback(tmp_path / "run.h5", probes=[StopAtStep(2)], schedule=probes.Schedule(every=1))
    trainer = _trainer(tmp_path, callback, max_steps=10)
    trainer.train()
    assert trainer.state.global_step == 3
    assert list(open_run(tmp_path / "run.h5").series("train").steps) == [0, 1, 2]


def test_accelerate_loop_with_accumulation(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = tiny.classifier("albert").train()
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    oracle = []
    with probes.attach(model, optimizer, tmp_path / "run.h5", schedule=probes.Schedule(every=1), strict=True):
        for micro in range(8):
            with accelerator.accumulate(model):
                accelerator.backward(model(**tiny.batch(4, 10, seed=micro)).loss)
                if accelerator.sync_gradients:
                    oracle.append(oracle_layers(model))
                    accelerator.clip_grad_norm_(model.parameters(), 0.05)
                optimizer.step()
                optimizer.zero_grad()
    accelerate.state.AcceleratorState._reset_state(True)  # leave no accumulation setting to later tests
    accelerate.state.GradientState._reset_state()
    records = open_run(tmp_path / "run.h5")
    layers = records.series("layers")
    assert list(layers.steps) == [0, 1, 2, 3]  # four real steps out of eight micro-batches
    np.testing.assert_allclose(layers.values, oracle_matrix(oracle, layers.columns), rtol=1e-5)
    assert records.series("activations").values.shape == (4, tiny.LAYERS)

"""Invariance: watching a run must not change it, and a diagnostic that moves weights must put them back exactly.

    python3 -m pytest tests/test_invariance.py            # ~15 s on two busy cores

* Probes on and off give bit-identical training under the Hugging Face ``Trainer`` (losses, final weights, RNG
  state) and in ``diagnostics.finetune.run`` (its records, its saved weights, the RNG state). The models here keep
  dropout on, so a probe that drew a random number would change the trajectory. The plain loop is covered in
  ``tests/test_probes.py`` (``test_probing_changes_nothing``), and here for the interpolation probe, which moves
  every weight and runs the model in between steps.
* ``layer_reset.reset_blocks`` and ``Subspace.moving`` restore every architecture's parameters bit for bit, in
  place (the same tensors, so an optimiser holding them still works), also after an exception inside the block.
  BERT alone is checked in ``tests/test_forgetting.py`` and ``tests/test_surface.py``; here every architecture.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

import probes
import tiny
from probe_harness import LoopConfig, run_loop
from probes import records
from diagnostics.finetune import FinetuneConfig, run
from probes.model.interpolation import Subspace
from probes.model.reset import reset_blocks
from diagnostics.tasks import Example, write_task


def with_dropout(auto_class, arch: str = "bert", seed: int = 0):
    """A tiny model of ``auto_class`` with dropout 0.1, so the trajectory depends on the RNG stream."""
    config = tiny.config(arch, len(tiny.tokenizer()))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.1
    torch.manual_seed(seed)
    return auto_class.from_config(config)


def same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[n], second[n]) for n in first)


# ----------------------------------------------------------------------------------------------- training


def _train_with_trainer(tmp_path: Path, callbacks: list) -> tuple[list[float], dict, torch.Tensor]:
    batch = tiny.batch(16, 10, seed=3)
    dataset = [{key: value[i] for key, value in batch.items()} for i in range(16)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=5, per_device_train_batch_size=4, learning_rate=1e-3,
        max_grad_norm=0.5, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
        seed=0)
    trainer = transformers.Trainer(model=with_dropout(AutoModelForSequenceClassification), args=args,
                                   train_dataset=dataset, callbacks=callbacks)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses, {n: t.detach().clone() for n, t in trainer.model.state_dict().items()}, torch.get_rng_state()


def test_trainer_with_and_without_probes_trains_bit_identically(tmp_path):
    interpolation = probes.Interpolation([tiny.batch(6, 10, seed=9)], total_steps=5, times=2, last_update=True)
    callback = probes.ProbeCallback(tmp_path / "run.h5", schedule=probes.Schedule(every=1),
                                    probes=[probes.GradientNorms(), probes.ActivationGradients(),
                                            probes.ParameterNorms(), interpolation])
    probed = _train_with_trainer(tmp_path / "probed", [callback])
    plain = _train_with_trainer(tmp_path / "plain", [])
    assert len(probed[0]) == 5 and probed[0] == plain[0]
    assert same_tensors(probed[1], plain[1]) and torch.equal(probed[2], plain[2])
    run = records.open_run(tmp_path / "run.h5")
    assert run.series("layers").steps.size == 5  # the probes did record
    assert run.series("start").steps.tolist() == run.series("last_update").steps.tolist() == [1, 4]


def test_interpolation_leaves_a_dropout_run_bit_identical(tmp_path):
    """The probe moves every weight, evaluates in eval mode and forks the RNG: nothing of that reaches the run."""
    sample = [tiny.batch(6, 10, seed=9), tiny.batch(5, 7, seed=10)]
    probe = probes.Interpolation(sample, total_steps=5, times=5, last_update=True)
    config = LoopConfig(accumulation=2, clip=0.1, probe_list=[probe])
    probed = run_loop(config, tmp_path / "run.h5", model=with_dropout(AutoModelForSequenceClassification))
    config.probe = False
    plain = run_loop(config, model=with_dropout(AutoModelForSequenceClassification))
    assert probed.losses == plain.losses and torch.equal(probed.rng, plain.rng)
    assert same_tensors(probed.weights, plain.weights)
    assert probed.records.series("start").steps.tolist() == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def dropout_mlm(tmp_path_factory) -> Path:
    return tiny.save(with_dropout(AutoModelForMaskedLM), tmp_path_factory.mktemp("dropout-mlm"))


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    examples = [Example(" ".join(tiny.WORDS[i:i + 6]), None, (i // 3) % 2) for i in range(40)]
    folder = tmp_path_factory.mktemp("task") / "toy"
    write_task(folder, examples[:32], examples[32:], {"name": "toy", "kind": "single", "label_names": ["a", "b"],
                                                       "metric": "accuracy", "majority_baseline": 0.5})
    return folder


def _finetune(task: Path, model: Path, out: Path, with_probes: bool):
    config = FinetuneConfig(task=str(task), recipe="default", seed=2, out=out, model=model, max_length=16, evals=2,
                            epochs=2, batch_size=8, lr=1e-3, probes=with_probes)
    result = run(config)
    rng = torch.get_rng_state()
    run_records = records.open_run(result.run_dir / "run.h5")
    weights = {part: load_file(result.run_dir / part / "model.safetensors") for part in ("step0", "final")}
    return result, run_records, weights, rng


def test_finetune_run_with_and_without_probes_trains_bit_identically(task, dropout_mlm, tmp_path):
    probed = _finetune(task, dropout_mlm, tmp_path / "probed", True)
    plain = _finetune(task, dropout_mlm, tmp_path / "plain", False)
    assert "gradient_norms" in probed[1].records and "gradient_norms" not in plain[1].records
    assert probed[1].series("start", "interpolation").steps.tolist() == [3, 7]  # with each of the 2 dev evaluations
    for name in ("train", "eval"):
        first, second = probed[1].series(name, "scalars"), plain[1].series(name, "scalars")
        assert first.steps.tolist() == second.steps.tolist() and np.array_equal(first.values, second.values, equal_nan=True), name
    assert probed[0].final_dev_metric == plain[0].final_dev_metric and probed[0].steps == plain[0].steps == 8
    for part in ("step0", "final"):
        assert same_tensors(probed[2][part], plain[2][part]), part
    assert torch.equal(probed[3], plain[3])


# ----------------------------------------------------------------------------------------------- restoring


def _snapshot(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, int]]:
    """Every parameter and buffer: a copy of its value and the address of its storage."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {name: (t.detach().clone(), t.data_ptr()) for name, t in tensors.items()}


def _restored(model: torch.nn.Module, before: dict[str, tuple[torch.Tensor, int]]) -> bool:
    after = _snapshot(model)
    return after.keys() == before.keys() and all(
        torch.equal(after[n][0], before[n][0]) and after[n][1] == before[n][1] for n in before)


def test_reset_blocks_restores_every_architecture_in_place_even_after_an_error(arch):
    finetuned, pretrained = tiny.classifier(arch, seed=1), tiny.masked_lm(arch, seed=0)
    before, source = _snapshot(finetuned), _snapshot(pretrained)
    depths = range(0, tiny.LAYERS + 1) if arch == "albert" else (0, 2, tiny.LAYERS)  # ALBERT: all depths or none
    with pytest.raises(RuntimeError, match="inside"):
        with reset_blocks(finetuned, pretrained, depths):
            assert not _restored(finetuned, before)  # the blocks did change
            raise RuntimeError("inside")
    assert _restored(finetuned, before) and _restored(pretrained, source)
    with reset_blocks(finetuned, pretrained, depths):
        pass
    assert _restored(finetuned, before)


def test_subspace_moving_restores_every_architecture_in_place_even_after_an_error(arch):
    anchors = [tiny.classifier(arch, seed=seed) for seed in (0, 1, 2)]
    space = Subspace.from_models(anchors)
    model = tiny.classifier(arch, seed=5)
    before = _snapshot(model)
    with pytest.raises(KeyError):
        with space.moving(model) as move_to:
            move_to((0.3, -0.7))
            assert not _restored(model, before)
            move_to((1.0, 0.0))
            assert same_tensors(dict(model.named_parameters()), dict(anchors[1].named_parameters()))
            raise KeyError("inside")
    assert _restored(model, before)

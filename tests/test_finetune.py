"""Tests of the fine-tuning runner, its recipes and BertAdam, on tiny real BERTs built from configs.

    python -m pytest tests/test_finetune.py -q            # all (the end-to-end ones are marked slow)
    python -m pytest tests/test_finetune.py -q -m "not slow"
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny
import probes
from probes import catalogue, records
from diagnostics.bert_adam import BertAdam
from diagnostics.finetune import FinetuneConfig, eval_steps, load_model, main, run
from diagnostics.recipes import RecipeError, get_recipe, linear_schedule, parameter_groups, reinit_top

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory) -> Path:
    """A 48/16 pair task in the tiny tokenizer's words; the label says whether the two texts share a word."""
    return tiny.pair_task(tmp_path_factory.mktemp("tasks") / "toy", dev=16)


def _config(task: Path, out: Path, model: Path, **overrides) -> FinetuneConfig:
    values = dict(task=str(task), recipe="default", seed=0, out=out, model=model, max_length=32, evals=2,
                  epochs=1, batch_size=8, lr=1e-3)
    values.update(overrides)
    return FinetuneConfig(**values)


# ---------------------------------------------------------------- BertAdam


def _tensors(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=generator).requires_grad_(), torch.randn(5, generator=generator).requires_grad_()]


def _gradients(step: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=generator) for p in params]


def test_bert_adam_without_bias_correction_matches_the_original_update():
    params, lr, (b1, b2), eps, wd = _tensors(), 0.01, (0.9, 0.999), 1e-6, 0.1
    optimizer = BertAdam(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, correct_bias=False)
    reference = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in reference]
    v = [torch.zeros_like(p) for p in reference]
    for step in range(5):
        grads = _gradients(step, params)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        for i, g in enumerate(grads):  # google-research/bert AdamWeightDecayOptimizer, written out
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            reference[i] = reference[i] - lr * (m[i] / (v[i].sqrt() + eps) + wd * reference[i])
    for p, r in zip(params, reference):
        torch.testing.assert_close(p.detach(), r)


def test_bert_adam_with_bias_correction_equals_torch_adamw():
    ours, theirs = _tensors(), _tensors()
    a = BertAdam(ours, lr=0.01, eps=1e-6, weight_decay=0.1, correct_bias=True)
    b = torch.optim.AdamW(theirs, lr=0.01, eps=1e-6, weight_decay=0.1)
    for step in range(5):
        for x, y, g in zip(ours, theirs, _gradients(step, ours)):
            x.grad, y.grad = g.clone(), g.clone()
        a.step()
        b.step()
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y)


def test_bert_adam_skips_parameters_without_gradients():
    params = _tensors()
    before = params[1].detach().clone()
    params[0].grad = torch.ones_like(params[0])
    BertAdam(params, lr=0.1).step()
    assert torch.equal(params[1].detach(), before)


# ---------------------------------------------------------------- recipes and schedule


def test_recipes_follow_the_papers():
    default, mosbach, zhang = (get_recipe(n) for n in ("default", "mosbach", "zhang"))
    assert not default.correct_bias and mosbach.correct_bias and zhang.correct_bias
    assert (default.weight_decay, default.max_grad_norm, default.adam_eps, default.batch_size,
            default.warmup_ratio, default.epochs) == (0.01, 1.0, 1e-6, 16, 0.1, 3)
    assert mosbach.epochs > default.epochs and zhang.reinit_layers >= 1 and zhang.reinit_pooler
    assert default.replace(lr=5.0, epochs=None).lr == 5.0 and default.replace(epochs=None).epochs == 3
    with pytest.raises(ValueError, match="unknown recipe 'adam'"):
        get_recipe("adam")


def test_linear_schedule_warms_up_then_decays_to_zero():
    multipliers = [linear_schedule(step, total=20, warmup=4) for step in range(20)]
    assert multipliers[:4] == [0.25, 0.5, 0.75, 1.0]
    assert multipliers[4] == 1.0 and multipliers[-1] == pytest.approx(1 / 16)
    assert all(a >= b for a, b in zip(multipliers[3:], multipliers[4:]))
    assert eval_steps(63, 10) == {6, 13, 19, 25, 32, 38, 44, 50, 57, 63}


def test_parameter_groups_exempt_biases_and_layer_norms_from_decay():
    model = tiny.classifier("bert")
    groups = parameter_groups(model, get_recipe("default"))
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for p in group["params"]:
            exempt = names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)]
            assert group["weight_decay"] == (0.0 if exempt else 0.01)
    assert sum(len(g["params"]) for g in groups) == len(names)


def test_layerwise_lr_decay_scales_lower_blocks_down():
    model = tiny.classifier("bert")
    groups = parameter_groups(model, get_recipe("zhang").replace(layerwise_lr_decay=0.5))
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale[id(named["classifier.weight"])] == 1.0
    assert scale[id(named["bert.encoder.layer.3.output.dense.weight"])] == 0.5
    assert scale[id(named["bert.encoder.layer.0.output.dense.weight"])] == 0.5 ** 4
    assert scale[id(named["bert.embeddings.word_embeddings.weight"])] == 0.5 ** 5


def test_reinit_top_resets_only_the_top_blocks_and_the_pooler():
    model = tiny.classifier("bert")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    reinit_top(model, layers=1, pooler=True)
    top = model.bert.encoder.layer[-1]
    assert top.output.LayerNorm.weight.eq(1).all() and top.output.LayerNorm.bias.eq(0).all()
    assert top.attention.self.query.bias.eq(0).all() and 0.005 < top.attention.self.query.weight.std() < 0.05
    assert model.bert.pooler.dense.bias.eq(0).all()
    assert model.bert.encoder.layer[-2].output.LayerNorm.weight.eq(0.5).all()
    with pytest.raises(RecipeError, match="cannot re-initialise 9 blocks"):
        reinit_top(model, layers=9, pooler=False)


# ---------------------------------------------------------------- the runner


def test_same_seed_same_trajectory(toy_task, tiny_mlm_dir, tmp_path):
    first = run(_config(toy_task, tmp_path / "a", tiny_mlm_dir))
    again = run(_config(toy_task, tmp_path / "b", tiny_mlm_dir))
    losses = [records.open_run(r.run_dir / "run.h5").series("train").column("loss") for r in (first, again)]
    assert first.steps == 6 and len(losses[0]) == 6 and (losses[0] == losses[1]).all()


def test_the_seed_draws_the_head(tiny_mlm_dir):
    heads = [load_model(tiny_mlm_dir, 2, seed)[0].classifier.weight for seed in (0, 0, 1)]
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])


def test_zhang_recipe_runs_and_records_its_resolved_recipe(toy_task, tiny_mlm_dir, tmp_path):
    result = run(_config(toy_task, tmp_path, tiny_mlm_dir, recipe="zhang"))
    meta = records.open_run(result.run_dir / "run.h5").meta
    assert meta["recipe"] == "zhang" and meta["config"]["resolved_recipe"]["reinit_layers"] == 1
    assert meta["config"]["resolved_recipe"]["epochs"] == 1 and meta["seed"] == 0


def test_probes_declare_series_before_start_and_see_every_step(toy_task, tiny_mlm_dir, tmp_path):
    seen = []

    @contextlib.contextmanager
    def my_probes(model, optimizer, writer):
        writer.add_series("calls", ["calls"], kind="scalars")
        handle = optimizer.register_step_pre_hook(lambda *_: seen.append(len(seen) + 1))
        try:
            with probes.attach(model, optimizer, writer, probes=[]) as session:
                yield session
        finally:
            handle.remove()
            writer.append("calls", len(seen), [len(seen)])

    result = run(_config(toy_task, tmp_path, tiny_mlm_dir), probes=my_probes)
    assert seen == list(range(1, 7))
    assert records.open_run(result.run_dir / "run.h5").series("calls").values.tolist() == [[6.0]]


def test_dev_predictions_and_cls_representations_are_kept(toy_task, tiny_mlm_dir, tmp_path):
    """The final row of predictions/dev scores the final dev metric; dev_cls is the saved model's own [CLS] state."""
    from transformers import AutoModelForSequenceClassification

    from diagnostics.instability import dev_outputs
    from diagnostics.tasks import encode, load_task, metric

    result = run(_config(toy_task, tmp_path, tiny_mlm_dir, precision="fp32"))
    stored = records.open_run(result.run_dir / "run.h5")
    task = load_task(toy_task)
    series = stored.series("dev", kind="predictions")
    assert series.steps.tolist() == stored.series("eval").steps.tolist() == [3, 6]
    outputs = dev_outputs(stored)
    labels = [e.label for e in task.dev]
    assert metric(task.metric, outputs.predictions.tolist(), labels) == pytest.approx(result.final_dev_metric)
    model = AutoModelForSequenceClassification.from_pretrained(result.run_dir / "final").eval()
    with torch.no_grad():
        out = model(**encode(task.dev, tiny.tokenizer(), 32), output_hidden_states=True)
    assert outputs.predictions.tolist() == out.logits.argmax(-1).tolist()
    torch.testing.assert_close(torch.from_numpy(outputs.cls).float(), out.hidden_states[-1][:, 0], rtol=1e-4,
                               atol=1e-5)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "diagnostics.finetune", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_end_to_end_then_skip_then_refuse_unfinished(toy_task, tiny_mlm_dir, tmp_path, capsys):
    args = ["--task", str(toy_task), "--recipe", "default", "--seed", "3", "--out", str(tmp_path),
            "--model", str(tiny_mlm_dir), "--max-length", "32", "--epochs", "2", "--batch-size", "8",
            "--evals", "3", "--threads", "1"]
    done = _cli(*args)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "toy-default-s3"
    for part in ("step0/config.json", "step0/tokenizer_config.json", "final/config.json", "final/model.safetensors"):
        assert (run_dir / part).is_file(), part
    rr = records.open_run(run_dir / "run.h5")
    assert rr.series("train").columns == list(catalogue.TRAIN.columns) and len(rr.series("train").steps) == 12
    assert list(rr.series("eval").steps) == [4, 8, 12] and rr.series("eval").columns == ["accuracy", "loss"]
    assert rr.summary["steps"] == 12 and rr.summary["metric"] == "accuracy" and rr.summary["majority"] == 0.5
    assert rr.summary["final_dev_metric"] == rr.series("eval").column("accuracy")[-1]
    assert rr.meta["argv"][1:3] == ["--task", str(toy_task)]

    again = _cli(*args)
    assert again.returncode == 0 and "already finished, skipping" in again.stdout

    assert main([*args, "--lr", "0.5"]) == 1
    assert "holds a finished run with other settings (lr); pick another --out" in capsys.readouterr().err

    (tmp_path / "toy-default-s4").mkdir()
    assert main([*args[:5], "4", *args[6:]]) == 1
    refused = capsys.readouterr().err
    assert "unfinished run; delete it or pick another --out" in refused and len(refused.strip().splitlines()) == 1


@pytest.mark.parametrize("change, message", [
    (("--task", "nope"), "unknown task 'nope'"),
    (("--model", "/nonexistent"), "--model /nonexistent does not exist"),
    (("--epochs", "0"), "--epochs must be positive"),
])
def test_bad_input_is_one_line(toy_task, tiny_mlm_dir, tmp_path, capsys, change, message):
    values = {"--task": str(toy_task), "--recipe": "default", "--seed": "0", "--out": str(tmp_path),
              "--model": str(tiny_mlm_dir)}
    values[change[0]] = change[1]
    assert main([x for kv in values.items() for x in kv]) == 1
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1

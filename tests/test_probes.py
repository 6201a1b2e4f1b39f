"""Probes in a plain PyTorch loop: norms against an independent oracle, no effect on training, hook hygiene, AMP,
accumulation, NaN handling, schedules and failures. Run: ``python3 -m pytest tests/test_probes.py``."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import probes
import tiny
from probes.records import RecordsError, RunWriter, RunMeta, open_run
from probe_harness import LoopConfig, count_hooks, oracle_layers, oracle_matrix, run_loop
from probes.schedule import records_step


def test_layer_norms_equal_param_grad_norms(arch, tmp_path):
    result = run_loop(LoopConfig(arch=arch, clip=0.05), tmp_path / "run.h5")
    layers = result.records.series("layers", "gradient_norms")
    assert layers.attrs["clipping"] == "pre"
    np.testing.assert_allclose(layers.values, oracle_matrix(result.oracle, layers.columns), rtol=1e-5)
    components = result.records.series("components")
    per_layer = {c: np.sqrt(sum(components.column(n) ** 2 for n in components.columns if n.startswith(c + "/")))
                 for c in layers.columns}
    np.testing.assert_allclose(np.stack([per_layer[c] for c in layers.columns], 1), layers.values, rtol=1e-5)
    scalars = result.records.frame("train")
    np.testing.assert_allclose(scalars["grad_norm_pre_clip"], result.oracle_total, rtol=1e-5)
    np.testing.assert_allclose(scalars["grad_norm_post_clip"], 0.05, rtol=1e-4)  # every step was clipped
    assert (scalars["nonfinite"] == 0).all() and (scalars["skipped"] == 0).all()
    assert list(layers.steps) == list(range(5))


def test_activation_gradients_equal_retained_block_output_grads(arch, tmp_path):
    model = tiny.classifier(arch).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    expected = np.zeros(tiny.LAYERS)
    with probes.attach(model, optimizer, tmp_path / "run.h5", schedule=probes.Schedule(every=1)):
        for micro in range(2):  # two micro-batches of one accumulated step
            output = model(**tiny.batch(4, 10, seed=micro), output_hidden_states=True)
            for hidden in output.hidden_states[1:]:
                hidden.retain_grad()
            (output.loss / 2).backward()
            expected += [float(h.grad.double().norm()) ** 2 for h in output.hidden_states[1:]]
        optimizer.step()
    activations = open_run(tmp_path / "run.h5").series("activations")
    assert activations.columns == [f"encoder.{d}" for d in range(1, tiny.LAYERS + 1)]  # L depths, ALBERT too
    np.testing.assert_allclose(activations.values[0], np.sqrt(expected), rtol=1e-5)


def test_probing_changes_nothing(tmp_path):
    config = LoopConfig(accumulation=2, clip=0.1, probe_list=[probes.GradientNorms(), probes.ActivationGradients(),
                                                              probes.ParameterNorms()])
    probed = run_loop(config, tmp_path / "run.h5")
    config.probe = False
    plain = run_loop(config)
    assert probed.losses == plain.losses
    assert all(torch.equal(probed.weights[name], plain.weights[name]) for name in plain.weights)
    assert torch.equal(probed.rng, plain.rng)


def test_no_hooks_left_after_detach_exception_and_nesting(tmp_path):
    model = tiny.classifier("bert").train()
    optimizer = torch.optim.AdamW(model.parameters())
    before = count_hooks(model, optimizer)
    with probes.attach(model, optimizer, tmp_path / "a.h5") as outer:
        one = count_hooks(model, optimizer) - before
        assert one == len(outer.hooks) > 0
        with probes.attach(model, optimizer, tmp_path / "b.h5"):
            assert count_hooks(model, optimizer) == before + 2 * one
        assert count_hooks(model, optimizer) == before + one
    assert count_hooks(model, optimizer) == before
    with pytest.raises(KeyError):
        with probes.attach(model, optimizer, tmp_path / "c.h5", schedule=probes.Schedule(every=1)):
            model(**tiny.batch(4, 8)).loss.backward()
            optimizer.step()
            raise KeyError("the loop failed")
    assert count_hooks(model, optimizer) == before
    assert list(open_run(tmp_path / "c.h5").series("layers").steps) == [0]  # what was recorded is kept


def test_accumulation_and_bf16_autocast(tmp_path):
    result = run_loop(LoopConfig(arch="roberta", accumulation=3, bf16=True, clip=0.1), tmp_path / "run.h5")
    layers = result.records.series("layers")
    np.testing.assert_allclose(layers.values, oracle_matrix(result.oracle, layers.columns), rtol=1e-5)
    step_losses = np.array(result.losses).reshape(-1, 3).sum(1)  # the harness divides each micro loss by 3
    np.testing.assert_allclose(result.records.series("train").column("loss"), step_losses, rtol=1e-5)


def test_grad_scaler_norms_unscaled_and_skipped_step_recorded(tmp_path):
    result = run_loop(LoopConfig(scale=2.0 ** 12, nan_at=2), tmp_path / "run.h5")
    frame = result.records.frame("train")
    assert list(frame.index) == [0, 1, 2, 3, 4]
    assert list(frame["skipped"]) == [0, 0, 1, 0, 0] and list(frame["nonfinite"]) == [0, 0, 1, 0, 0]
    assert list(frame["loss_scale"]) == [2.0 ** 12] * 3 + [2.0 ** 11] * 2  # the scaler backed off after the skip
    layers = result.records.series("layers")
    finite = [0, 1, 3, 4]
    np.testing.assert_allclose(layers.values[finite], oracle_matrix(result.oracle, layers.columns)[finite], rtol=1e-5)


@pytest.mark.parametrize("skip", [False, True])
def test_nan_gradients_are_flagged_and_the_run_goes_on(tmp_path, skip):
    result = run_loop(LoopConfig(nan_at=2, skip_nonfinite=skip), tmp_path / "run.h5")
    frame = result.records.frame("train")
    assert list(frame.index) == [0, 1, 2, 3, 4]
    assert list(frame["nonfinite"]) == ([0, 0, 1, 0, 0] if skip else [0, 0, 1, 1, 1])
    assert list(frame["skipped"]) == ([0, 0, 1, 0, 0] if skip else [0] * 5)
    assert np.isnan(result.records.series("layers").values[2]).all()


def test_schedule_records_only_scheduled_steps_across_flushes(tmp_path):
    assert [s for s in range(40) if records_step(s, every=10, dense=3)] == [0, 1, 2, 10, 20, 30]
    assert [s for s in range(1, 40) if records_step(s, every=1000, log_spaced=True)][:12] == [
        1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 16]
    model = tiny.classifier("distilbert").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with probes.attach(model, optimizer, tmp_path / "run.h5", schedule=probes.Schedule(every=3, dense=2),
                       start_step=100, flush_every=2, post_clip=False):
        for step in range(9):
            model(**tiny.batch(4, 8, seed=step)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    records = open_run(tmp_path / "run.h5")
    assert list(records.series("train").steps) == [102, 105, 108]
    assert list(records.series("activations").steps) == [102, 105, 108]
    assert np.isnan(records.series("train").column("grad_norm_post_clip")).all()  # that pass was skipped


def test_loss_and_lr_from_a_plain_loop(tmp_path):
    model = tiny.classifier("bert").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    losses = []
    with probes.attach(model, optimizer, tmp_path / "run.h5", schedule=probes.Schedule(every=1)) as session:
        for step in range(4):
            batch = tiny.batch(4, 8, seed=step)
            logits = model(input_ids=batch["input_ids"]).logits  # no labels: the model returns no loss
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
            loss.backward()
            if step == 0:
                session.log_scalars(loss=loss)  # before the step
            optimizer.step()
            if step in (1, 2):
                session.log_scalars(loss=float(loss.detach()))  # after the step, before the next backward
            schedule.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
    frame = open_run(tmp_path / "run.h5").frame("train")
    np.testing.assert_allclose(frame["loss"][:3], losses[:3], rtol=1e-6)
    assert np.isnan(frame["loss"][3])
    np.testing.assert_allclose(frame["lr"], [0.1, 0.05, 0.1 / 3, 0.025], rtol=1e-6)


def test_parameter_norms_and_update_ratios(tmp_path):
    model = tiny.classifier("electra").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    expected_weights, expected_ratios = [], []
    with probes.attach(model, optimizer, tmp_path / "run.h5", schedule=probes.Schedule(every=1),
                       probes=[probes.ParameterNorms()]):
        for step in range(2):
            model(**tiny.batch(4, 8, seed=step)).loss.backward()
            before = {name: param.detach().clone() for name, param in model.named_parameters()}
            optimizer.step()
            optimizer.zero_grad()
            for name, param in model.named_parameters():
                param.grad = param.detach() - before[name]  # the update, to reuse the per-layer oracle
            updates = oracle_layers(model)
            for name, param in model.named_parameters():
                param.grad = before[name]
            weights = oracle_layers(model)
            model.zero_grad()
            expected_weights.append(weights)
            expected_ratios.append({k: updates[k] / weights[k] for k in weights})
    records = open_run(tmp_path / "run.h5")
    for name, expected in (("parameters", expected_weights), ("updates", expected_ratios)):
        series = records.series(name)
        np.testing.assert_allclose(series.values, [[e[c] for c in series.columns] for e in expected], rtol=1e-4)


def test_unknown_model_names_blocks_and_leaves_no_file(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(probes.LayerDiscoveryError, match="blocks="):
        probes.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "run.h5")
    assert not (tmp_path / "run.h5").exists()


def test_started_writer_is_refused_and_runner_series_come_first(tmp_path):
    model = tiny.classifier("bert").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = RunWriter.create(tmp_path / "run.h5", RunMeta(seed=3))
    writer.add_series("dev", ["dev_accuracy"])
    with probes.attach(model, optimizer, writer, schedule=probes.Schedule(every=1)):
        model(**tiny.batch(4, 8)).loss.backward()
        optimizer.step()
        writer.append("dev", 0, [0.5])
    writer.close()
    records = open_run(tmp_path / "run.h5")
    assert records.meta["seed"] == 3 and records.names("scalars") == ["dev", "train"]
    started = RunWriter.create(tmp_path / "other.h5", RunMeta())
    started.start()
    with pytest.raises(RecordsError, match="start"):
        probes.attach(model, optimizer, started)
    started.close()


def test_write_failure_warns_once_and_training_goes_on(tmp_path):
    model = tiny.classifier("bert").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = RunWriter.create(tmp_path / "run.h5", RunMeta())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with probes.attach(model, optimizer, writer, schedule=probes.Schedule(every=1), flush_every=1):
            writer.close()  # the file goes away under the probes
            for step in range(3):
                model(**tiny.batch(4, 8, seed=step)).loss.backward()
                optimizer.step()
    assert len([w for w in caught if "could not write" in str(w.message)]) == 1
    writer = RunWriter.create(tmp_path / "strict.h5", RunMeta())
    with pytest.raises(RecordsError, match="closed"):
        with probes.attach(model, optimizer, writer, schedule=probes.Schedule(every=1), flush_every=1,
                           strict=True):
            writer.close()
            model(**tiny.batch(4, 8)).loss.backward()
            optimizer.step()


def test_log_scalars_after_the_step_reaches_a_step_that_filled_the_buffer(tmp_path):
    """Regression: with the flush at the end of the step, values given after ``optimizer.step()`` were dropped on
    every step that filled the buffer (here every second step)."""
    model = tiny.classifier("bert").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with probes.attach(model, optimizer, tmp_path / "run.h5", probes=[], schedule=probes.Schedule(every=1),
                       flush_every=2) as session:
        for step in range(5):
            model(**tiny.batch(4, 8, seed=step)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            session.log_scalars(loss=100.0 + step, lr=step / 10)
    train = open_run(tmp_path / "run.h5").series("train")
    assert train.steps.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(train.column("loss"), 100.0 + np.arange(5))
    np.testing.assert_allclose(train.column("lr"), np.arange(5) / 10, rtol=1e-6)


@pytest.mark.parametrize("clipping", ["none", "norm", "norm-loose", "value", "scaler-norm"])
def test_post_clip_total_equals_the_gradients_inside_the_step(tmp_path, clipping):
    """The post-clip total, known without a second pass when clipping is one global factor, equals the
    norm of the gradients the optimiser sees (float64 oracle), and falls back to the full pass otherwise."""
    model = tiny.classifier("bert").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if clipping.startswith("scaler") else None
    seen = []
    optimizer.register_step_pre_hook(lambda *_: seen.append(
        sum(float(p.grad.double().norm()) ** 2 for p in model.parameters() if p.grad is not None) ** 0.5))
    with probes.attach(model, optimizer, tmp_path / "run.h5", probes=[], schedule=probes.Schedule(every=1),
                       scaler=scaler):
        for step in range(3):
            loss = model(**tiny.batch(4, 8, seed=step)).loss
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            if clipping in ("norm", "scaler-norm"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            elif clipping == "norm-loose":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)
            elif clipping == "value":
                torch.nn.utils.clip_grad_value_(model.parameters(), 1e-3)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad()
    train = open_run(tmp_path / "run.h5").series("train")
    np.testing.assert_allclose(train.column("grad_norm_post_clip"), seen, rtol=1e-5)
    if clipping in ("norm", "scaler-norm"):
        np.testing.assert_allclose(seen, 0.05, rtol=1e-4)  # the clipping really acted

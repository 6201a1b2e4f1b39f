"""The seed-signal probes (sign-like Adam steps, consecutive gradient cosine, [CLS] collapse) and the seed features
built from them, each against a plain float64 computation on the same real tiny training loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import probes
import tiny
from diagnostics.bert_adam import BertAdam
from probes.early_failure.signals import change, warmup_end, window_features, lower_norm
from probes.records import open_run

STEPS = 5


def _layer_of(model) -> dict[str, str]:
    layers = probes.find_layers(model)
    return {name: layers.group_of(name) for name, param in model.named_parameters() if param.requires_grad}


def _train(tmp_path, optimizer_class, **options):
    """Five recorded steps of a tiny BERT classifier with the three probes; the oracle's float64 copies of every
    gradient, Adam state and [CLS] batch along the way."""
    model = tiny.classifier("bert", seed=0, layers=4).train()
    optimizer = optimizer_class(model.parameters(), lr=3e-3, **options)
    seen = {"grads": [], "states": [], "cls": []}
    chosen = [probes.AdamSignShare(), probes.GradientCosine(), probes.ClsCollapse()]
    with probes.attach(model, optimizer, tmp_path / "run.h5", probes=chosen, schedule=probes.Schedule(every=1)):
        for step in range(STEPS):
            output = model(**tiny.batch(8, 12, seed=step), output_hidden_states=True)
            seen["cls"].append(output.hidden_states[-1][:, 0].detach().double().numpy())
            output.loss.backward()
            seen["grads"].append({name: p.grad.detach().double().numpy().copy()
                                  for name, p in model.named_parameters()})
            optimizer.step()
            seen["states"].append({name: {key: (value.detach().double().numpy().copy() if torch.is_tensor(value)
                                                and value.dim() else float(value))
                                          for key, value in optimizer.state[p].items()}
                                   for name, p in model.named_parameters()})
            optimizer.zero_grad()
    return model, open_run(tmp_path / "run.h5"), seen


@pytest.mark.parametrize("optimizer_class, options", [(torch.optim.AdamW, {}),
                                                      (BertAdam, {"correct_bias": False})])
def test_sign_share_counts_bias_corrected_sign_like_coordinates(tmp_path, optimizer_class, options):
    model, records, seen = _train(tmp_path, optimizer_class, **options)
    series = records.series("sign_share")
    defaults = optimizer_class(model.parameters(), lr=1.0, **options).defaults
    (beta1, beta2), eps = defaults["betas"], defaults["eps"]
    layer_of = _layer_of(model)
    for row, states in zip(series.values, seen["states"]):
        counted, sizes = {}, {}
        for name, state in states.items():
            t = state["step"]
            m_hat, v_hat = state["exp_avg"] / (1 - beta1 ** t), state["exp_avg_sq"] / (1 - beta2 ** t)
            ratio = np.abs(m_hat) / (np.sqrt(v_hat) + eps)
            layer = layer_of[name]
            counted[layer] = counted.get(layer, 0) + int((ratio >= 0.9).sum())
            sizes[layer] = sizes.get(layer, 0) + ratio.size
        np.testing.assert_allclose(row, [counted[layer] / sizes[layer] for layer in series.columns], atol=1e-6)
    first = {layer: [] for layer in series.columns}  # step 1: m_hat / (sqrt(v_hat) + eps) = |g| / (|g| + eps)
    for name, grad in seen["grads"][0].items():
        first[layer_of[name]].append(np.abs(grad).ravel() >= 9 * eps)
    np.testing.assert_allclose(series.values[0], [np.concatenate(first[layer]).mean() for layer in series.columns],
                               atol=1e-6)


def test_gradient_cosine_is_the_cosine_of_consecutive_gradients(tmp_path):
    model, records, seen = _train(tmp_path, torch.optim.AdamW)
    series = records.series("consecutive", kind="gradient_cosine")
    layer_of = _layer_of(model)
    assert np.isnan(series.values[0]).all()
    for step in range(1, STEPS):
        now, before = seen["grads"][step], seen["grads"][step - 1]
        expected = []
        for layer in series.columns:
            names = [name for name in now if layer_of[name] == layer]
            dot = sum(float((now[n] * before[n]).sum()) for n in names)
            norm_now = math.sqrt(sum(float((now[n] ** 2).sum()) for n in names))
            norm_before = math.sqrt(sum(float((before[n] ** 2).sum()) for n in names))
            expected.append(dot / (norm_now * norm_before))
        np.testing.assert_allclose(series.values[step], expected, rtol=1e-4, atol=1e-6)


def test_cls_collapse_is_the_batchs_pairwise_cosine_and_effective_rank(tmp_path):
    _, records, seen = _train(tmp_path, torch.optim.AdamW)
    series = records.series("cls")
    for row, cls in zip(series.values, seen["cls"]):
        unit = cls / np.linalg.norm(cls, axis=1, keepdims=True)
        pairs = [float(unit[i] @ unit[j]) for i in range(len(unit)) for j in range(len(unit)) if i != j]
        singular = np.linalg.svd(cls - cls.mean(0), compute_uv=False)
        share = singular / singular.sum()
        rank = math.exp(-sum(p * math.log(p) for p in share if p > 0))
        np.testing.assert_allclose(row, [np.mean(pairs), rank], rtol=1e-4)


def test_seed_features_compare_the_window_with_the_runs_own_warm_up():
    steps = np.arange(40)
    lr = np.minimum(steps + 1, 10) * 1e-5  # warm-up ends at step 9
    assert warmup_end(steps, lr) == 9
    values = np.where(steps <= 9, 2.0, 0.02)  # a signal falling 100-fold after warm-up
    assert change(steps, values, 39, 9, log=True) == pytest.approx(-2.0)
    assert change(steps, values, 39, 9, log=False) == pytest.approx(-1.98)
    assert change(steps, values, 39, None, log=True) == pytest.approx(-2.0)  # no lr: the window's first quarter
    layers = ["embeddings", "encoder.1", "encoder.2", "encoder.3", "encoder.4", "head"]
    norms = np.tile([5.0, 3.0, 4.0, 100.0, 100.0, 7.0], (2, 1))
    np.testing.assert_allclose(lower_norm(layers, norms), [5.0, 5.0])  # blocks 1-2 of 4: sqrt(9 + 16)
    found = window_features({"lr": (steps, lr), "lower_norm": (steps, values)}, 39)
    assert found["lower_growth"] == pytest.approx(-2.0)
    assert math.isnan(found["cls_rank_growth"])  # a signal the run did not record


def test_a_probe_read_only_early_records_up_to_its_last_step_and_costs_nothing_after(tmp_path):
    """The runner's probes with ``until`` set: the early-only series hold the same rows as without it up to that
    step and none after, every other series is whole, and past it those probes dispatch no operation (counted
    against the same set without them)."""
    from diagnostics.finetune import signal_probes
    from probes.op_count import probe_step_ops

    def run(until, path):
        model = tiny.classifier("bert", seed=0, layers=4).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        with probes.attach(model, optimizer, path, probes=signal_probes(until), schedule=probes.Schedule(every=1)):
            for step in range(STEPS):
                model(**tiny.batch(8, 12, seed=step)).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        return open_run(path)

    whole, early = run(None, tmp_path / "whole.h5"), run(1, tmp_path / "early.h5")
    for kind, named in whole.records.items():
        for name, series in named.items():
            cut = early.records[kind][name]
            limited = name in {"head_ratio", "second_moment", "parameters", "updates", "sign_share", "cls"}
            expected = series.steps[series.steps <= 1] if limited else series.steps
            np.testing.assert_array_equal(cut.steps, expected, err_msg=f"{kind}/{name}")
            np.testing.assert_allclose(cut.values, series.values[: len(expected)], rtol=1e-6, err_msg=name)
    batch = tiny.batch(8, 12, seed=0)
    model = lambda: tiny.classifier("bert", seed=0, layers=4).train()  # noqa: E731
    past = probe_step_ops(model, batch, probes=signal_probes(-1))
    without = probe_step_ops(model, batch, probes=signal_probes(None)[:4])
    assert [step.total for step in past] == [step.total for step in without]

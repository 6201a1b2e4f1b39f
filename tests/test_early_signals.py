"""The early-failure signal probes against plain oracles, on the shared harness's real tiny training loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import log_softmax

import torch

import probes
import tiny
from probes.records import open_run
from probe_harness import LoopConfig, oracle_matrix, run_loop
from diagnostics.bert_adam import BertAdam


def _oracle_predictions(micro_batches: list[np.ndarray]) -> list[float]:
    """Majority share, mean entropy, mean top-2 margin over all examples of one step, from its logits."""
    logits = np.concatenate(micro_batches)
    counts = np.bincount(logits.argmax(-1), minlength=logits.shape[-1])
    log_p = log_softmax(logits, axis=-1)
    ordered = np.sort(logits, axis=-1)
    return [counts.max() / len(logits), float(-(np.exp(log_p) * log_p).sum(-1).mean()),
            float((ordered[:, -1] - ordered[:, -2]).mean())]


def test_prediction_collapse_matches_the_logits_over_every_micro_batch(tmp_path):
    result = run_loop(LoopConfig(steps=4, accumulation=2, lr=3e-2, probe_list=[probes.PredictionCollapse()]),
                      tmp_path / "r.h5")
    recorded = result.records.series("predictions")
    expected = np.array([_oracle_predictions(step) for step in result.logits])
    assert recorded.steps.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(recorded.values, expected, rtol=1e-5, atol=1e-6)


def test_prediction_collapse_counts_only_recorded_steps(tmp_path):
    schedule = probes.Schedule(every=2, dense=0)
    result = run_loop(LoopConfig(steps=4, schedule=schedule, probe_list=[probes.PredictionCollapse()]),
                      tmp_path / "r.h5")
    recorded = result.records.series("predictions")
    assert recorded.steps.tolist() == [0, 2]
    expected = np.array([_oracle_predictions(result.logits[step]) for step in (0, 2)])
    np.testing.assert_allclose(recorded.values, expected, rtol=1e-5, atol=1e-6)


def test_prediction_collapse_ignores_evaluation_forwards(tmp_path):
    model = tiny.classifier("bert", seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    logits = []
    with probes.attach(model, optimizer, tmp_path / "r.h5", probes=[probes.PredictionCollapse()],
                       schedule=probes.Schedule(every=1, dense=0)):
        for step in range(2):
            output = model(**tiny.batch(8, 12, seed=step))
            logits.append([output.logits.detach().double().numpy()])
            output.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            model.eval()
            with torch.no_grad():
                model(**tiny.batch(16, 12, seed=50 + step))  # an evaluation between steps: not counted
            model.train()
    recorded = open_run(tmp_path / "r.h5").series("predictions")
    np.testing.assert_allclose(recorded.values, [_oracle_predictions(step) for step in logits], rtol=1e-5, atol=1e-6)


def test_loss_plateau_is_loss_over_ln_c_and_its_trailing_slope(tmp_path):
    result = run_loop(LoopConfig(steps=7, lr=1e-2, probe_list=[probes.LossPlateau(window=3)]), tmp_path / "r.h5")
    recorded = result.records.series("plateau")
    losses = np.array(result.losses)
    np.testing.assert_allclose(recorded.column("loss_over_ln_c"), losses / math.log(2), rtol=1e-5)
    slopes = [np.polyfit(np.arange(max(0, i - 2), i + 1), losses[max(0, i - 2):i + 1], 1)[0]
              for i in range(1, 7)]
    assert math.isnan(recorded.column("slope")[0]), "one loss has no slope"
    np.testing.assert_allclose(recorded.column("slope")[1:], slopes, rtol=1e-4, atol=1e-7)


def test_head_encoder_ratio_per_depth(tmp_path):
    result = run_loop(LoopConfig(steps=3, accumulation=2, clip=0.1, probe_list=[probes.HeadEncoderRatio()]),
                      tmp_path / "r.h5")
    recorded = result.records.series("head_ratio")
    head = oracle_matrix(result.oracle, ["head"])
    np.testing.assert_allclose(recorded.values, head / oracle_matrix(result.oracle, recorded.columns), rtol=1e-5)


@pytest.mark.parametrize("optimizer", [None, BertAdam], ids=["torch AdamW", "BertAdam"])
def test_adam_second_moment_per_layer(tmp_path, optimizer):
    result = run_loop(LoopConfig(steps=3, optimizer=optimizer, probe_list=[probes.AdamSecondMoment()]),
                      tmp_path / "r.h5")
    recorded = result.records.series("second_moment", kind="optimizer_state")
    np.testing.assert_allclose(recorded.values, oracle_matrix(result.second_moments, recorded.columns), rtol=1e-5)


def test_signals_leave_the_training_unchanged(tmp_path):
    signals = [probes.PredictionCollapse(), probes.LossPlateau(), probes.HeadEncoderRatio(),
               probes.AdamSecondMoment()]
    probed = run_loop(LoopConfig(steps=4, probe_list=signals), tmp_path / "r.h5")
    plain = run_loop(LoopConfig(steps=4, probe=False))
    assert probed.losses == plain.losses
    assert all(probed.weights[name].equal(plain.weights[name]) for name in plain.weights)
    assert probed.rng.equal(plain.rng)

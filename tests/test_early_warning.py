"""Early warning: the collapse score's maths, and the probe's online decision against the offline one."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import probes
from probe_harness import LoopConfig, run_loop
from probes.early_failure.signals import FEATURES, encoder_norm, features_at
from probes.early_failure.warning import EarlyWarning, collapse_score
from probes.early_failure.predictor import Predictor


def test_collapse_score_reads_the_quarters_of_the_window():
    steps = np.arange(21)
    collapsing = np.where(steps < 10, 1e-1, 1e-5)
    assert collapse_score(steps, collapsing, 20) == pytest.approx(-4.0)
    assert collapse_score(steps, np.full(21, 0.3), 20) == pytest.approx(0.0)
    growing = np.r_[np.full(5, 1e-2), np.full(16, 1.0)]
    assert collapse_score(steps, growing, 20) == pytest.approx(2.0)
    assert math.isnan(collapse_score(steps, np.full(21, np.nan), 20))
    assert math.isnan(collapse_score(steps[:6], np.ones(6), 20)), "nothing recorded in the late quarter"


def test_encoder_norm_combines_only_encoder_layers():
    names = ["embeddings", "encoder.1", "encoder.2", "head"]
    norms = np.array([[5.0, 3.0, 4.0, 100.0]])
    np.testing.assert_allclose(encoder_norm(names, norms), [5.0])


def test_probe_decides_once_like_the_offline_rule(tmp_path, caplog):
    warning = EarlyWarning(window_end=8, threshold=math.inf, predictor=None)  # flag whatever happens, to see the whole path
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # logged, not warned: no source line echoed across a bar
        result = run_loop(LoopConfig(steps=12, probe_list=[probes.GradientNorms(), warning]), tmp_path / "r.h5")
    said = [r for r in caplog.records if r.name == "probes.early_failure.warning"]
    assert len(said) == 1 and said[0].levelname == "WARNING" and "early warning at step 8" in said[0].getMessage()
    assert "\n" not in said[0].getMessage()
    layers = result.records.series("layers", kind="gradient_norms")
    offline = collapse_score(layers.steps, encoder_norm(layers.columns, layers.values), 8)
    decision = result.records.series("early_warning")
    assert decision.steps.tolist() == [8]
    assert decision.column("score")[0] == pytest.approx(offline, rel=1e-4)
    assert decision.column("flagged")[0] == 1.0


def test_unflagged_run_does_not_ask_to_stop(tmp_path):
    warning = EarlyWarning(window_end=6, threshold=-math.inf, stop=True, predictor=None)
    run_loop(LoopConfig(steps=8, probe_list=[probes.GradientNorms(), warning]), tmp_path / "r.h5")
    assert warning.decision is not None and warning.decision[-1] is False


def _signal_probes():
    return [probes.GradientNorms(), probes.PredictionCollapse(), probes.LossPlateau(), probes.HeadEncoderRatio(),
            probes.AdamSecondMoment()]


def test_online_features_equal_the_offline_ones_and_the_predictor_decides(tmp_path):
    predictor = Predictor(FEATURES, tuple([0.0] * len(FEATURES)), tuple([1.0] * len(FEATURES)),
                          tuple(1.0 if name == "loss_ratio" else 0.0 for name in FEATURES), -0.5)
    warning = EarlyWarning(window_end=7, predictor=predictor, total_steps=10)
    result = run_loop(LoopConfig(steps=10, probe_list=[*_signal_probes(), warning]), tmp_path / "r.h5")
    offline = features_at(result.records, 0.8)
    assert offline.keys() == warning.features.keys()
    for name, value in offline.items():
        assert warning.features[name] == pytest.approx(value, rel=1e-4, nan_ok=True), name
    decision = result.records.series("early_warning")
    expected = predictor.probability_of(offline)
    assert decision.column("probability")[0] == pytest.approx(expected, rel=1e-4)
    assert decision.column("flagged")[0] == float(expected >= 0.5)
    assert result.records.series("early_warning").attrs["total_steps"] == 10

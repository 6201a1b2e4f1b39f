"""The early-failure predictor: a small L2-regularised logistic model over the early features (numpy only).

    model = Predictor.fit(X, failed, features)        # X: (runs, features), rows of window_features
    model.probability(X)                              # P(the run will fail) per row
    Predictor.from_json(model.to_json())

Features are standardised with the training runs' mean and spread; a missing feature (NaN) takes the training mean, so a
run without one probe is still judged by the others. The fit is Newton's method on the penalised log-likelihood
(``penalty`` on the standardised weights, none on the intercept): a handful of features and ~100 runs need nothing
heavier. ``diagnostics.early_warning_report`` fits it on some seeds and scores it on others; the models fitted on the
whole committed seed bank ship in ``probes/early_failure/model.json`` (:mod:`probes.early_failure.predictor_file`). A
run is flagged at P(fail) >= :data:`FLAG_AT`, live and in every benchmark.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT = "default"
FLAG_AT = 0.5  # a run is flagged at P(fail) >= FLAG_AT: the early warning, the benchmark and the protocol alike
# Ridge on the standardised weights, fixed before any held-out score was seen: a seed bank of tens of runs and nine
# features needs strong shrinkage.
PENALTY = 4.0


@dataclass(frozen=True)
class Predictor:
    """P(fail) = sigmoid(intercept + coef . (x - mean) / scale) over ``features``."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    fraction: float = float("nan")

    @classmethod
    def fit(cls, x: np.ndarray, failed: np.ndarray, features: tuple[str, ...], penalty: float = PENALTY,
            fraction: float = float("nan")) -> "Predictor":
        """Fit on rows ``x`` (runs x features) with outcomes ``failed`` (bool)."""
        x, y = np.asarray(x, dtype="f8"), np.asarray(failed, dtype="f8")
        with warnings.catch_warnings():  # a feature no run has (its probe did not run) is all NaN: mean 0, scale 1
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, scale = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        z = np.c_[np.ones(len(x)), _standardise(x, mean, scale)]
        weights = np.zeros(z.shape[1])
        ridge = np.r_[0.0, np.full(z.shape[1] - 1, penalty)]
        for _ in range(50):
            p = _sigmoid(z @ weights)
            gradient = z.T @ (p - y) + ridge * weights
            hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(ridge) + 1e-9 * np.eye(z.shape[1])
            step = np.linalg.solve(hessian, gradient)
            weights -= step
            if np.abs(step).max() < 1e-8:
                break
        return cls(tuple(features), tuple(mean), tuple(scale), tuple(weights[1:]), float(weights[0]), fraction)

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(fail) for each row of ``x`` (columns in the order of ``features``)."""
        z = _standardise(np.atleast_2d(np.asarray(x, dtype="f8")), np.array(self.mean), np.array(self.scale))
        return _sigmoid(self.intercept + z @ np.array(self.coef))

    def probability_of(self, features: dict[str, float]) -> float:
        """P(fail) of one run from its feature dict (missing names count as missing values)."""
        return float(self.probability([[features.get(name, np.nan) for name in self.features]])[0])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Predictor":
        values = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (x - mean) / scale
    return np.where(np.isfinite(z), z, 0.0)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(t, -50, 50)))

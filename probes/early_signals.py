"""The early-failure features of a run: what its signals looked like over the first steps (pure numpy).

One function, :func:`window_features`, turns the per-step signals of the probes (encoder gradient norm,
head-to-encoder ratio, loss over ln C and its slope, prediction collapse, Adam's second moment) recorded up to
step ``window_end`` into a few numbers. Each compares the late part of the window (its last quarter) with its
start (first quarter) or reads the late level, the rule of :func:`probes.early_warning.collapse_score`. The same
function serves the online probe (:class:`probes.early_warning.EarlyWarning`, from its device history) and the
offline benchmark (``diagnostics.early_features``, from a records file), so both decide on identical numbers.
"""
from __future__ import annotations

import math

import numpy as np

# The signals a run provides, each a per-step array: (steps,) values.
SIGNALS = ("encoder_norm", "head_ratio", "loss_ratio", "slope", "majority_share", "entropy_ratio", "margin",
           "moment_encoder", "moment_head")
FEATURES = ("collapse", "head_ratio", "head_ratio_growth", "loss_ratio", "slope", "majority_share",
            "entropy_ratio", "margin", "moment_ratio")


def _quarters(steps: np.ndarray, values: np.ndarray, window_end: int) -> tuple[np.ndarray, np.ndarray]:
    """The finite values of the first and the last quarter of steps 0..window_end."""
    steps, values = np.asarray(steps), np.asarray(values, dtype="f8")
    usable = np.isfinite(values) & (steps <= window_end)
    quarter = max(1, window_end // 4)
    return values[usable & (steps <= quarter)], values[usable & (steps >= window_end - quarter)]


def late_level(steps: np.ndarray, values: np.ndarray, window_end: int) -> float:
    """Median over the last quarter of the window (NaN when it holds nothing)."""
    _, late = _quarters(steps, values, window_end)
    return float(np.median(late)) if late.size else math.nan


def log_growth(steps: np.ndarray, values: np.ndarray, window_end: int) -> float:
    """log10(median of the last quarter / median of the first quarter) of a positive signal (NaN if unknown)."""
    early, late = _quarters(steps, values, window_end)
    early, late = early[early > 0], late[late > 0]
    if early.size == 0 or late.size == 0:
        return math.nan
    return float(np.log10(np.median(late) / np.median(early)))


def window_features(signals: dict[str, tuple[np.ndarray, np.ndarray]], window_end: int) -> dict[str, float]:
    """The features of :data:`FEATURES` from the signals recorded up to ``window_end`` (NaN where one is missing).

    ``collapse``: log10 growth of the encoder's gradient norm (negative: vanishing); ``head_ratio``: log10 of the
    late head-to-encoder gradient ratio, ``head_ratio_growth`` its log10 growth; ``loss_ratio``: late loss / ln C
    (1 = the plateau); ``slope``: late loss slope per step, in units of ln C per 100 steps; ``majority_share``,
    ``entropy_ratio`` (entropy / ln C), ``margin``: late prediction collapse; ``moment_ratio``: log10 of the late
    head / encoder second-moment norms of Adam.
    """
    missing = (np.array([], dtype="i8"), np.array([]))
    get = lambda name: signals.get(name, missing)  # noqa: E731
    late = {name: late_level(*get(name), window_end) for name in SIGNALS}
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "collapse": log_growth(*get("encoder_norm"), window_end),
            "head_ratio": float(np.log10(late["head_ratio"])),
            "head_ratio_growth": log_growth(*get("head_ratio"), window_end),
            "loss_ratio": late["loss_ratio"],
            "slope": 100 * late["slope"],
            "majority_share": late["majority_share"],
            "entropy_ratio": late["entropy_ratio"],
            "margin": late["margin"],
            "moment_ratio": float(np.log10(late["moment_head"] / late["moment_encoder"])),
        }

"""The early-failure features of a run: what its signals looked like over the first steps (pure numpy).

One function, :func:`window_features`, turns the per-step signals of the probes (encoder gradient norm,
head-to-encoder ratio, loss over ln C and its slope, prediction collapse, Adam's second moment) recorded up to
step ``window_end`` into a few numbers. Each compares the late part of the window (its last quarter) with its
start (first quarter) or reads the late level, the rule of :func:`probes.early_warning.collapse_score`. The same
function serves the online probe (:class:`probes.early_warning.EarlyWarning`, from its device history) and the
offline benchmark (:func:`features_at`, from a records file: :func:`run_signals` reads the probes' series), so both
decide on identical numbers. Only numpy and the records reader: ``plots`` uses it too.
"""
from __future__ import annotations

import math

import numpy as np

from probes.records import RecordsError, RunRecords

# The signals a run provides, each a per-step array: (steps,) values.
SIGNALS = ("encoder_norm", "head_ratio", "loss_ratio", "slope", "majority_share", "entropy_ratio", "margin",
           "moment_encoder", "moment_head")
FEATURES = ("collapse", "head_ratio", "head_ratio_growth", "loss_ratio", "slope", "majority_share",
            "entropy_ratio", "margin", "moment_ratio")


def encoder_norm(layer_names: list[str], layer_norms: np.ndarray) -> np.ndarray:
    """Total L2 norm of the encoder blocks per row, from per-layer norms ``(N, layers)`` (as records store them)."""
    columns = [i for i, name in enumerate(layer_names) if name.startswith("encoder.")]
    return np.sqrt(np.square(np.asarray(layer_norms, dtype="f8")[:, columns]).sum(axis=1))


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


def total_steps(run: RunRecords) -> int | None:
    """The run's planned optimiser steps: the summary's for a finished run, the early warning's declaration for
    one still going (None when neither says)."""
    if "steps" in run.summary:
        return int(run.summary["steps"])
    try:
        planned = run.series("early_warning").attrs.get("total_steps")
    except RecordsError:
        return None
    return None if planned is None else int(planned)


def run_signals(run: RunRecords) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The per-step signals the run's records hold (a signal whose probe did not run is left out)."""
    signals = {}
    names = {kind: set(run.names(kind)) for kind in run.records}
    if "layers" in names.get("gradient_norms", ()):
        layers = run.series("layers", kind="gradient_norms")
        signals["encoder_norm"] = (layers.steps, encoder_norm(layers.columns, layers.values))
    if "head_ratio" in names.get("gradient_norms", ()):
        ratio = run.series("head_ratio", kind="gradient_norms")
        signals["head_ratio"] = (ratio.steps, np.nanmedian(ratio.values, axis=1))
    elif "layers" in names.get("gradient_norms", ()) and "head" in layers.columns:  # records made before the probe
        values = np.asarray(layers.values, dtype="f8")
        encoder = [i for i, name in enumerate(layers.columns) if name.startswith("encoder.")]
        with np.errstate(divide="ignore", invalid="ignore"):
            per_depth = values[:, [layers.columns.index("head")]] / values[:, encoder]
        signals["head_ratio"] = (layers.steps, np.nanmedian(per_depth, axis=1))
    if "plateau" in names.get("scalars", ()):
        plateau = run.series("plateau", kind="scalars")
        ln_c = float(plateau.attrs.get("ln_c", math.log(2)))
        signals["loss_ratio"] = (plateau.steps, plateau.column("loss_over_ln_c"))
        signals["slope"] = (plateau.steps, plateau.column("slope") / ln_c)
    if "predictions" in names.get("scalars", ()):
        predictions = run.series("predictions", kind="scalars")
        ln_c = float(run.series("plateau").attrs.get("ln_c", math.log(2))) if "loss_ratio" in signals else math.log(2)
        signals["majority_share"] = (predictions.steps, predictions.column("majority_share"))
        signals["entropy_ratio"] = (predictions.steps, predictions.column("entropy") / ln_c)
        signals["margin"] = (predictions.steps, predictions.column("margin"))
    if "second_moment" in names.get("optimizer_state", ()):
        moment = run.series("second_moment", kind="optimizer_state")
        encoder = [i for i, name in enumerate(moment.columns) if name.startswith("encoder.")]
        values = np.asarray(moment.values, dtype="f8")
        signals["moment_encoder"] = (moment.steps, np.sqrt(np.square(values[:, encoder]).sum(axis=1)))
        if "head" in moment.columns:
            signals["moment_head"] = (moment.steps, values[:, moment.columns.index("head")])
    return signals


def window_end(steps: int, fraction: float) -> int:
    """The last step of the first ``fraction`` of ``steps`` (at least step 2, so a window has a start and an end)."""
    return max(2, round(fraction * steps) - 1)


def features_at(run: RunRecords, fraction: float, steps: int | None = None) -> dict[str, float]:
    """The run's features over its first ``fraction`` of steps (``steps``: the planned total, else read)."""
    steps = steps or total_steps(run)
    if steps is None:
        raise RecordsError(f"{run.path} does not say how many steps the run will take; pass the total")
    return window_features(run_signals(run), window_end(steps, fraction))

"""The early-failure features of a run: what its signals looked like over the first steps (pure numpy).

One function, :func:`window_features`, turns the per-step signals of the probes (encoder gradient norm,
head-to-encoder ratio, loss over ln C and its slope, prediction collapse, Adam's second moment) recorded up to
step ``window_end`` into a few numbers. Each compares the late part of the window (its last quarter) with its
start (first quarter) or reads the late level, the rule of :func:`probes.early_failure.warning.collapse_score`. The same
function serves the online probe (:class:`probes.early_failure.warning.EarlyWarning`, from its device history) and the
offline benchmark (:func:`features_at`, from a records file: :func:`run_signals` reads the probes' series), so both
decide on identical numbers. Only numpy and the records reader: ``plots`` uses it too.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from probes import catalogue
from probes.catalogue import SeriesSpec
from probes.records import RecordsError, RunRecords

# The signals a run provides, each a per-step array: (steps,) values.
SIGNALS = ("encoder_norm", "head_ratio", "loss_ratio", "slope", "majority_share", "entropy_ratio", "margin",
           "moment_encoder", "moment_head", "lr", "lower_norm", "update_ratio", "sign_share", "cls_cosine", "cls_rank")
# The failure-pattern features: levels and growth over the window, what separates learning rates.
COLLAPSE_FEATURES = ("collapse", "head_ratio", "head_ratio_growth", "loss_ratio", "slope", "majority_share",
                     "entropy_ratio", "margin", "moment_ratio")
# The seed features: each run against its own warm-up (late part of the window vs the warm-up steps), made to
# separate seeds of one configuration.
# Measured on the 100-seed cell and dropped for carrying nothing within a cell: the consecutive-gradient cosine's
# change (within-cell AUC 0.47-0.62, every interval covering 0.5) and the loss slope per unit of learning rate
# (inside a cell the learning rate is constant, so it ranks runs exactly as ``slope`` does); docs/verdicts.md.
SEED_FEATURES = ("lower_growth", "update_growth", "sign_share_change", "cls_cosine_change", "cls_rank_growth")
FEATURES = COLLAPSE_FEATURES + SEED_FEATURES


def encoder_norm(layer_names: list[str], layer_norms: np.ndarray) -> np.ndarray:
    """Total L2 norm of the encoder blocks per row, from per-layer norms ``(N, layers)`` (as records store them)."""
    columns = [i for i, name in enumerate(layer_names) if name.startswith("encoder.")]
    return np.sqrt(np.square(np.asarray(layer_norms, dtype="f8")[:, columns]).sum(axis=1))


def encoder_mean(layer_names: list[str], values: np.ndarray) -> np.ndarray:
    """Mean over the encoder blocks per row of a per-layer series ``(N, layers)`` (NaN-blind)."""
    columns = [i for i, name in enumerate(layer_names) if name.startswith("encoder.")]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(values, dtype="f8")[:, columns], axis=1)


def lower_norm(layer_names: list[str], layer_norms: np.ndarray) -> np.ndarray:
    """Total L2 norm of the lower half of the encoder blocks (``encoder.1`` .. ``encoder.L/2``, at least one) per
    row: where vanishing gradients show first, far from the head."""
    blocks = [name for name in layer_names if name.startswith("encoder.")]
    lower = blocks[: max(1, len(blocks) // 2)]
    columns = [layer_names.index(name) for name in lower]
    return np.sqrt(np.square(np.asarray(layer_norms, dtype="f8")[:, columns]).sum(axis=1))


def warmup_end(steps: np.ndarray, lr: np.ndarray) -> int | None:
    """The step at which the learning rate peaks (the end of a linear warm-up; None when unknown)."""
    steps, lr = np.asarray(steps), np.asarray(lr, dtype="f8")
    usable = np.isfinite(lr)
    if not usable.any():
        return None
    return int(steps[usable][np.argmax(lr[usable])])


def _reference(steps: np.ndarray, values: np.ndarray, window_end: int, warmed: int | None) -> np.ndarray:
    """The run's own reference values: the warm-up steps (up to half the window), else the first quarter."""
    steps, values = np.asarray(steps), np.asarray(values, dtype="f8")
    usable = np.isfinite(values)
    end = min(warmed, window_end // 2) if warmed else max(1, window_end // 4)
    return values[usable & (steps <= end)]


def change(steps, values, window_end: int, warmed: int | None, log: bool) -> float:
    """The late level of the window against the run's own warm-up level: log10 ratio (``log``) or difference."""
    reference = _reference(steps, values, window_end, warmed)
    _, late = _quarters(steps, values, window_end)
    if log:
        reference, late = reference[reference > 0], late[late > 0]
    if reference.size == 0 or late.size == 0:
        return math.nan
    early_level, late_level_ = float(np.median(reference)), float(np.median(late))
    return math.log10(late_level_ / early_level) if log else late_level_ - early_level


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
    head / encoder second-moment norms of Adam. The seed features compare the window's last quarter with the run's
    own warm-up: ``lower_growth`` (log10, the lower blocks' gradient norm), ``update_growth`` (log10, the encoder's
    update-to-weight ratio per unit of learning rate), ``sign_share_change`` (share of sign-like Adam steps),
    ``cls_cosine_change`` and ``cls_rank_growth`` (log10) of the training batch's [CLS] representations.
    """
    missing = (np.array([], dtype="i8"), np.array([]))
    get = lambda name: signals.get(name, missing)  # noqa: E731
    late = {name: late_level(*get(name), window_end) for name in SIGNALS}
    warmed = warmup_end(*get("lr"))
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
            "lower_growth": change(*get("lower_norm"), window_end, warmed, log=True),
            "update_growth": change(*per_lr(get("update_ratio"), get("lr")), window_end, warmed, log=True),
            "sign_share_change": change(*get("sign_share"), window_end, warmed, log=False),
            "cls_cosine_change": change(*get("cls_cosine"), window_end, warmed, log=False),
            "cls_rank_growth": change(*get("cls_rank"), window_end, warmed, log=True),
        }


def per_lr(signal: tuple[np.ndarray, np.ndarray], lr: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A signal divided by the learning rate of its step (NaN where the step's lr is unknown)."""
    at = dict(zip(np.asarray(lr[0]).tolist(), np.asarray(lr[1], dtype="f8").tolist()))
    steps = np.asarray(signal[0])
    rates = np.array([at.get(step, math.nan) for step in steps.tolist()], dtype="f8")
    with np.errstate(divide="ignore", invalid="ignore"):
        return steps, np.asarray(signal[1], dtype="f8") / rates


def total_steps(run: RunRecords) -> int | None:
    """The run's planned optimiser steps: the summary's for a finished run, the early warning's declaration for
    one still going (None when neither says)."""
    if "steps" in run.summary:
        return int(run.summary["steps"])
    try:
        planned = run.get(catalogue.EARLY_WARNING).attrs.get("total_steps")
    except RecordsError:
        return None
    return None if planned is None else int(planned)


def _column(name: str) -> Callable:
    return lambda columns, values, attrs: np.asarray(values, dtype="f8")[:, list(columns).index(name)]


def _over_ln_c(name: str) -> Callable:
    """A column divided by ln C, the plateau of C classes (the series' ``ln_c`` attribute, ln 2 in records
    written before it was stored)."""
    return lambda columns, values, attrs: _column(name)(columns, values, attrs) / float(attrs.get("ln_c", math.log(2)))


def _head(columns, values, attrs) -> np.ndarray:
    values = np.asarray(values, dtype="f8")
    return values[:, list(columns).index("head")] if "head" in columns else np.full(len(values), math.nan)


@dataclass(frozen=True)
class Signal:
    """One early-failure signal: the recorded series it is computed from, and how, from that series' columns,
    values ``(steps, columns)`` and attributes, as written. The online probe and the offline reader both call
    ``compute`` on the same rows (:func:`signals_from`), so the two cannot differ."""

    name: str
    source: SeriesSpec
    compute: Callable[[Sequence[str], np.ndarray, Mapping], np.ndarray]


CATALOGUE = (
    Signal("encoder_norm", catalogue.LAYER_NORMS, lambda columns, values, attrs: encoder_norm(columns, values)),
    Signal("lower_norm", catalogue.LAYER_NORMS, lambda columns, values, attrs: lower_norm(columns, values)),
    Signal("head_ratio", catalogue.HEAD_RATIO,
           lambda columns, values, attrs: np.nanmedian(np.asarray(values, dtype="f8"), axis=1)),
    Signal("loss_ratio", catalogue.LOSS_PLATEAU, _column("loss_over_ln_c")),
    Signal("slope", catalogue.LOSS_PLATEAU, _over_ln_c("slope")),
    Signal("majority_share", catalogue.PREDICTION_COLLAPSE, _column("majority_share")),
    Signal("entropy_ratio", catalogue.PREDICTION_COLLAPSE, _over_ln_c("entropy")),
    Signal("margin", catalogue.PREDICTION_COLLAPSE, _column("margin")),
    Signal("moment_encoder", catalogue.SECOND_MOMENT, lambda columns, values, attrs: encoder_norm(columns, values)),
    Signal("moment_head", catalogue.SECOND_MOMENT, _head),
    Signal("lr", catalogue.TRAIN, _column("lr")),
    Signal("update_ratio", catalogue.UPDATE_RATIOS, lambda columns, values, attrs: encoder_mean(columns, values)),
    Signal("sign_share", catalogue.SIGN_SHARE, lambda columns, values, attrs: encoder_mean(columns, values)),
    Signal("cls_cosine", catalogue.CLS_COLLAPSE, _column("cosine")),
    Signal("cls_rank", catalogue.CLS_COLLAPSE, _column("effective_rank")),
)
SOURCES = tuple(dict.fromkeys(signal.source for signal in CATALOGUE))


def signals_from(spec: SeriesSpec, steps: np.ndarray, columns: Sequence[str], values: np.ndarray,
                 attrs: Mapping) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every signal computed from one recorded series (its rows as written), keyed by signal name."""
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row (a step a probe skipped) stays NaN
        return {signal.name: (np.asarray(steps), signal.compute(columns, values, attrs))
                for signal in CATALOGUE if signal.source == spec}


def run_signals(run: RunRecords) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The per-step signals the run's records hold (a signal whose probe did not run is left out)."""
    signals = {}
    for spec in SOURCES:
        if run.has(spec):
            series = run.get(spec)
            signals.update(signals_from(spec, series.steps, series.columns, series.values, series.attrs))
    if "head_ratio" not in signals and run.has(catalogue.LAYER_NORMS):  # records made before that probe existed
        layers = run.get(catalogue.LAYER_NORMS)
        if "head" in layers.columns:
            values = np.asarray(layers.values, dtype="f8")
            encoder = [i for i, name in enumerate(layers.columns) if name.startswith("encoder.")]
            with np.errstate(divide="ignore", invalid="ignore"):
                per_depth = values[:, [layers.columns.index("head")]] / values[:, encoder]
            signals["head_ratio"] = (layers.steps, np.nanmedian(per_depth, axis=1))
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

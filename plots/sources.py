"""Where each figure's data lives in a records file: every record, column and attribute name ``plots`` reads.

A renamed record is one edit here. Each fetcher takes a :class:`~probes.records.RunRecords` and returns plain
numpy data, or raises :class:`MissingRecord` whose one-line message names the record needed and the command that
writes it. Not a command; imported by the figure modules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probes import catalogue
from probes.records import Grid, RecordsError, RunRecords, Series, open_run

# The commands that write each record (shown in "missing record" messages).
FINETUNE = "python -m diagnostics.finetune (it records scalars and, with probes attached, gradient norms)"
FORGETTING = "python -m diagnostics.forgetting CKPT --out RUN.h5 (layer-reset perplexity)"
SURFACE = "python -m diagnostics.surface (loss surface between checkpoints)"
BARRIERS = "python -m diagnostics.surface --barriers RUN... --out FILE.h5 (loss barriers between runs)"
INTERPOLATION = ("python -m diagnostics.finetune, or probes.Interpolation on your own loop (loss along the line "
                 "from the start during training)")


def _where(spec: catalogue.SeriesSpec) -> tuple[str, str]:
    return spec.kind, spec.name


TRAIN = _where(catalogue.TRAIN)
LEGACY_PROBE = _where(catalogue.LEGACY_PROBE_SCALARS)
EVAL = _where(catalogue.EVAL)
LAYER_NORMS = _where(catalogue.LAYER_NORMS)
COMPONENT_NORMS = _where(catalogue.COMPONENT_NORMS)
ACTIVATION_NORMS = _where(catalogue.ACTIVATION_NORMS)
EARLY_WARNING = _where(catalogue.EARLY_WARNING)
FORGETTING_KIND = catalogue.FORGETTING.kind
PROFILE_KIND = catalogue.FORGETTING_PROFILE.kind
SURFACES_KIND = catalogue.SURFACE_PLANE.kind
INTERPOLATION_KIND = catalogue.INTERPOLATION_START.kind
DEFAULT_SURFACE_LABELS = ("pre-trained", "failed", "successful")
LAYER_ORDER = ("embeddings", "encoder", "pooler", "head")


class MissingRecord(LookupError):
    """A run lacks what a figure needs; the message names the record and the command that makes it."""


class NotApplicable(MissingRecord):
    """The file holds no record of that kind at all (a surface file asked for training loss, a run never probed
    asked for gradient norms): a figure drawn from many files leaves it out without a note."""


@dataclass(frozen=True)
class Curve:
    """One quantity against optimiser steps."""

    steps: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class BarrierGrid:
    """Loss and accuracy along the line between every pair of runs (``loss[i, j, k]``: from run i to run j), and
    each run's label, verdict (None: unknown) and final dev metric."""

    labels: list[str]
    a: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    failed: list[bool | None]
    dev_metric: list[float | None]
    metric: str | None
    split: str


@dataclass(frozen=True)
class ForgettingCurve:
    """Perplexity after resetting the top (or bottom) k blocks to their pre-trained weights, k = 0..L."""

    k: np.ndarray
    perplexity: np.ndarray
    pretrained: float | None
    direction: str


@dataclass(frozen=True)
class InterpolationGrid:
    """Loss and accuracy over (training step, a): ``loss[i, j]`` after the update of ``steps[i]``, at ``a[j]``."""

    steps: np.ndarray
    a: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    line: str


def name_of(run: RunRecords) -> str:
    """How messages name a run's file: its folder and name (runs of a study are all called run.h5)."""
    return f"{run.path.parent.name}/{run.path.name}"


def _series(run: RunRecords, where: tuple[str, str], command: str) -> Series:
    kind, name = where
    record = run.records.get(kind, {}).get(name)
    if not isinstance(record, Series):
        error = MissingRecord if kind in run.records else NotApplicable
        raise error(f"{name_of(run)} has no {kind}/{name} record; make it with {command}")
    return record


def _column(run: RunRecords, where: tuple[str, str], column: str, command: str) -> Curve:
    series = _series(run, where, command)
    if column not in series.columns:
        raise MissingRecord(f"{name_of(run)}: {'/'.join(where)} has no column {column!r} "
                            f"(it has {', '.join(series.columns)}); make it with {command}")
    values = series.column(column).astype("f8")
    keep = np.isfinite(values)
    return Curve(series.steps[keep], values[keep])


def train_loss(run: RunRecords) -> Curve:
    return _column(run, _train_series(run), "loss", FINETUNE)


def learning_rate(run: RunRecords) -> Curve:
    return _column(run, _train_series(run), "lr", FINETUNE)


def _train_series(run: RunRecords) -> tuple[str, str]:
    """The ``train`` series, else the ``probe`` series of a 0.1 file of probes on a loop of the user's own."""
    kind, name = LEGACY_PROBE
    return LEGACY_PROBE if name in run.records.get(kind, {}) and TRAIN[1] not in run.records.get(kind, {}) else TRAIN


def dev_metric(run: RunRecords) -> tuple[Curve, str]:
    """The dev metric over training and its name: ``accuracy`` when recorded, else the summary's metric."""
    series = _series(run, EVAL, FINETUNE)
    for column in ("accuracy", run.summary.get("metric")):
        if column and column in series.columns:
            return _column(run, EVAL, column, FINETUNE), column
    raise MissingRecord(f"{name_of(run)}: scalars/eval has no accuracy or task-metric column "
                        f"(it has {', '.join(series.columns)}); make it with {FINETUNE}")


def _summary(run: RunRecords, key: str) -> Any:
    if key not in run.summary:
        # a fine-tuning run killed before its end, not a file of other records (probes on the user's own loop)
        error = MissingRecord if TRAIN[1] in run.records.get(TRAIN[0], {}) else NotApplicable
        raise error(f"{name_of(run)} has no summary {key!r} (a run killed before its end has none); "
                            f"finish the run with {FINETUNE}")
    return run.summary[key]


def final_metric(run: RunRecords) -> tuple[float, str]:
    """The final dev metric and its name (accuracy, f1 or mcc)."""
    return float(_summary(run, "final_dev_metric")), str(run.summary.get("metric", "accuracy"))


def majority(run: RunRecords) -> float | None:
    """The majority-class baseline of the run's metric, if the summary has it."""
    value = run.summary.get("majority")
    return None if value is None else float(value)


def final_train_loss(run: RunRecords) -> float:
    """From the summary, else the last recorded training loss."""
    if "final_train_loss" in run.summary:
        return float(run.summary["final_train_loss"])
    loss = train_loss(run)
    if not len(loss.values):
        raise MissingRecord(f"{name_of(run)} has an empty scalars/train record; make it with {FINETUNE}")
    return float(loss.values[-1])


def failed_flag(run: RunRecords) -> bool | None:
    """The summary's verdict on the run; for a file of forgetting records only, the verdict of the run whose
    checkpoint they measured (``<checkpoint>/../run.h5``); None when neither says."""
    value = run.summary.get("failed")
    if value is not None:
        return bool(value)
    for grid in run.grids(FORGETTING_KIND).values():
        checkpoint = grid.attrs.get("checkpoint")
        sibling = Path(str(checkpoint)).parent / "run.h5" if checkpoint else None
        if sibling and sibling.is_file() and sibling.resolve() != run.path.resolve():
            try:
                value = open_run(sibling).summary.get("failed")
            except RecordsError:
                continue
            if value is not None:
                return bool(value)
    return None


def task(run: RunRecords) -> str:
    return str(run.meta.get("task") or "task?")


def recipe(run: RunRecords) -> str:
    return str(run.meta.get("recipe") or "recipe?")


def seed(run: RunRecords) -> int | None:
    value = run.meta.get("seed")
    return None if value is None or int(value) < 0 else int(value)


def settings(run: RunRecords) -> dict[str, Any]:
    """The run's training settings: the recipe it resolved, with the values set in its config on top (numbers,
    strings and booleans only; paths and bookkeeping left out)."""
    config = dict(run.meta.get("config") or {})
    recipe = config.get("resolved_recipe") if isinstance(config.get("resolved_recipe"), dict) else {}
    merged = {**recipe, **{k: v for k, v in config.items() if v is not None}}
    ignored = {"out", "model", "threads", "seed", "task", "recipe", "name", "description", "resolved_recipe", "evals",
               "no_probes"}
    return {key: value for key, value in merged.items()
            if key not in ignored and isinstance(value, (int, float, str, bool))}


def warmup_end(run: RunRecords) -> float | None:
    """The step where warm-up ends: ``warmup_steps``, or ``warmup_ratio`` times the total steps, from the run's
    config or the recipe it resolved (diagnostics.finetune stores ``resolved_recipe``); None when not known."""
    config = dict(run.meta.get("config") or {})
    recipe = config.get("resolved_recipe") if isinstance(config.get("resolved_recipe"), dict) else {}
    settings = {**recipe, **{k: v for k, v in config.items() if v is not None}}
    if settings.get("warmup_steps"):
        return float(settings["warmup_steps"])
    ratio = settings.get("warmup_ratio")
    total = settings.get("total_steps") or settings.get("max_steps") or run.summary.get("steps")
    return float(max(1, round(float(ratio) * float(total)))) if ratio and total else None


def layer_norms(run: RunRecords) -> tuple[dict[str, Curve], str]:
    """Gradient norm per layer (``embeddings``, ``encoder.d``, ``pooler``, ``head``) and the clipping side."""
    series = _series(run, LAYER_NORMS, FINETUNE)
    return _by_layer(run, LAYER_NORMS, series.columns), str(series.attrs.get("clipping", ""))


def activation_norms(run: RunRecords) -> tuple[dict[str, Curve], str]:
    """Norm of the loss gradient with respect to each block's output, per depth (ALBERT's per-depth signal)."""
    series = _series(run, ACTIVATION_NORMS, FINETUNE)
    return _by_layer(run, ACTIVATION_NORMS, series.columns), ""


def component_norms(run: RunRecords, component: str | None = None) -> tuple[dict[str, Curve], str]:
    """One weight matrix per layer from the per-parameter norms: the named one (``attention.self.query.weight``)
    where a layer has it, else the layer's first matrix (the papers drew one matrix per layer)."""
    series = _series(run, COMPONENT_NORMS, FINETUNE)
    chosen: dict[str, str] = {}
    for column in series.columns:
        layer, _, part = column.partition("/")
        if part == component or (layer not in chosen and part.endswith("weight")):
            chosen[layer] = column
    if not chosen:
        raise MissingRecord(f"{name_of(run)}: gradient_norms/components has no weight columns; "
                            f"make it with {FINETUNE}")
    curves = _by_layer(run, COMPONENT_NORMS, list(chosen.values()))
    return {column.partition("/")[0]: curve for column, curve in curves.items()}, str(series.attrs.get("clipping", ""))


def _by_layer(run: RunRecords, where: tuple[str, str], columns: list[str]) -> dict[str, Curve]:
    ordered = sorted(columns, key=lambda c: layer_rank(c.partition("/")[0]))
    return {c: _column(run, where, c, FINETUNE) for c in ordered}


def layer_rank(layer: str) -> tuple[int, int]:
    """Sort key: embeddings, encoder.1 .. encoder.L (encoder.shared), pooler, head, anything else."""
    family, _, depth = layer.partition(".")
    rank = LAYER_ORDER.index(family) if family in LAYER_ORDER else len(LAYER_ORDER)
    return rank, int(depth) if depth.isdigit() else 0


def forgetting_curve(run: RunRecords, name: str | None = None) -> ForgettingCurve:
    """The run's layer-reset perplexity curve: ``name``, else the first resetting the top blocks, else the first."""
    grids = run.grids(FORGETTING_KIND)
    if name is not None and name not in grids:
        raise MissingRecord(f"{name_of(run)} has no forgetting/{name} record (it has {', '.join(grids) or 'none'}); "
                            f"make it with {FORGETTING}")
    if not grids:
        raise NotApplicable(f"{name_of(run)} has no forgetting record; make it with {FORGETTING}")
    if name is None:
        tops = [n for n, g in grids.items() if g.attrs.get("direction", "top") == "top"]
        name = (tops or list(grids))[0]
    grid = grids[name]
    pretrained = grid.attrs.get("pretrained_perplexity")
    return ForgettingCurve(grid.axes["k"], grid.fields["perplexity"],
                           None if pretrained is None else float(pretrained), str(grid.attrs.get("direction", "top")))


@dataclass(frozen=True)
class ForgettingProfile:
    """Per layer (``embeddings``, ``encoder.1`` ...): relative weight change, CKA of the hidden states after it
    with the pre-trained model's, and the perplexity of the pre-trained model with only that layer fine-tuned."""

    layers: list[str]
    weight_change: np.ndarray
    cka: np.ndarray
    alone: np.ndarray
    pretrained: float | None


def forgetting_profile(run: RunRecords, name: str | None = None) -> ForgettingProfile:
    """The run's forgetting profile: ``name``, else the one measured with the top-k curve, else the first."""
    grids = run.grids(PROFILE_KIND)
    if name is not None and name not in grids:
        raise MissingRecord(f"{name_of(run)} has no {PROFILE_KIND}/{name} record "
                            f"(it has {', '.join(grids) or 'none'}); make it with {FORGETTING}")
    if not grids:
        raise NotApplicable(f"{name_of(run)} has no {PROFILE_KIND} record; make it with {FORGETTING}")
    if name is None:
        tops = [n for n, g in grids.items() if g.attrs.get("direction", "top") == "top"]
        name = (tops or list(grids))[0]
    grid = grids[name]
    curve = run.grids(FORGETTING_KIND).get(name)
    pretrained = None if curve is None else curve.attrs.get("pretrained_perplexity")
    return ForgettingProfile(list(grid.attrs.get("layers") or [f"depth {int(d)}" for d in grid.axes["depth"]]),
                             grid.fields["weight_change"], grid.fields["cka"], grid.fields["alone"],
                             None if pretrained is None else float(pretrained))


def surface(run: RunRecords, kind: str, name: str | None = None) -> tuple[Grid, list[str]]:
    """A loss surface of ``kind`` ("plane" or "line") and the labels of its checkpoints."""
    grids = {n: g for n, g in run.grids(SURFACES_KIND).items() if _surface_kind(g) == kind}
    if name is not None:
        grids = {n: g for n, g in grids.items() if n == name}
    if not grids:
        which = f"surfaces/{name}" if name else "surfaces"
        raise NotApplicable(f"{name_of(run)} has no {which} record of kind {kind!r}; make it with {SURFACE}")
    grid = next(iter(grids.values()))
    labels = list(grid.attrs.get("labels") or DEFAULT_SURFACE_LABELS)
    return grid, labels


def _surface_kind(grid: Grid) -> str:
    return str(grid.attrs.get("kind") or ("plane" if len(grid.axes) == 2 else "line"))


def barriers(run: RunRecords, name: str | None = None) -> BarrierGrid:
    """The barrier matrix of ``diagnostics.surface --barriers``: ``name``, else the first in the file."""
    grids = {n: g for n, g in run.grids(SURFACES_KIND).items() if g.attrs.get("kind") == catalogue.SURFACE_BARRIERS.name}
    if name is not None:
        grids = {n: g for n, g in grids.items() if n == name}
    if not grids:
        which = f"surfaces/{name}" if name else "surfaces"
        raise NotApplicable(f"{name_of(run)} has no {which} record of kind 'barriers'; make it with {BARRIERS}")
    grid = next(iter(grids.values()))
    count = len(grid.axes["first"])
    labels = list(grid.attrs.get("labels") or [f"run {k}" for k in range(count)])
    return BarrierGrid(labels, grid.axes["a"], grid.fields["loss"], grid.fields["accuracy"],
                       list(grid.attrs.get("failed") or [None] * count),
                       list(grid.attrs.get("dev_metric") or [None] * count), grid.attrs.get("metric"),
                       str(grid.attrs.get("split", "train")))


def interpolation(run: RunRecords, name: str | None = None) -> InterpolationGrid:
    """The interpolation probe's grid over (step, a): the line from the start (``name`` "start", the default) or
    through each step's update ("last_update")."""
    name = name or "start"
    series = run.records.get(INTERPOLATION_KIND, {}).get(name)
    if not isinstance(series, Series):
        error = MissingRecord if INTERPOLATION_KIND in run.records else NotApplicable
        raise error(f"{name_of(run)} has no {INTERPOLATION_KIND}/{name} record; make it with {INTERPOLATION}")
    if not len(series.steps):
        raise MissingRecord(f"{name_of(run)}: {INTERPOLATION_KIND}/{name} has no evaluated step yet; "
                            f"let the run reach one, or make it with {INTERPOLATION}")
    field, a = series.axes["field"], series.axes["a"].astype("f8")
    loss, accuracy = (series.values[:, field == which].astype("f8") for which in ("loss", "accuracy"))
    return InterpolationGrid(series.steps, a[field == "loss"], loss, accuracy, str(series.attrs.get("line", "")))


@dataclass(frozen=True)
class EarlyWarningDecision:
    """What the early-warning probe decided during the run, at ``step``."""

    step: int
    score: float  # the collapse score: log10 of the encoder gradient's change over the window
    flagged: bool
    probability: float  # the predictor's P(fail); NaN where the probe ran without one (it then judged the score)

    def said(self) -> str:
        """``P(fail) 0.72``, or ``collapse score -1.30`` when no predictor decided."""
        if math.isfinite(self.probability):
            return f"P(fail) {self.probability:.2f}"
        return f"collapse score {self.score:.2f}"


def early_warning_decision(run: RunRecords) -> EarlyWarningDecision | None:
    """The probe's decision (``scalars/early_warning``); None when it did not run or has not decided yet."""
    kind, name = EARLY_WARNING
    if name not in run.names(kind):
        return None
    series = run.series(name, kind)
    if not series.steps.size:
        return None
    probability = float(series.column("probability")[-1]) if "probability" in series.columns else math.nan
    return EarlyWarningDecision(int(series.steps[-1]), float(series.column("score")[-1]),
                                bool(series.column("flagged")[-1] > 0), probability)

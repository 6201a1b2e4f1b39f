"""Which runs a seed bank's predictor may judge: a run's profile, the bank's domain, and the line that says why not.

The early features are levels, slopes over windows of steps and ratios between the head and the encoder; what they
mean depends on the model, the number of classes, the run's length and the optimiser. A predictor fitted on one
6-layer BERT with 60-step runs has nothing to say about a 3,000-step RoBERTa run, so it must not print a number
there. :class:`Profile` is what a run is (read from its records, :func:`run_profile`, or from the live model,
:func:`live_profile`); :class:`Domain` is what the bank's runs were (:meth:`Domain.of_rows`, from the feature
table); :meth:`Domain.note` says in one line which properties of a run lie outside, and how to calibrate on the
user's own model. Numpy and the records reader only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from probes.catalogue import LOSS_PLATEAU, TRAIN
from probes.early_failure.signals import total_steps
from probes.records import RunRecords

ATTRIBUTE = "architecture"  # the records' root attribute probes.attach writes from a Hugging Face model
CALIBRATE = ("to calibrate, build a bank on your model and task: python -m diagnostics.seed_bank --model PATH "
             "--task T --out RUNS, then --out RUNS --features F.csv, then --fit F.csv --predictor-out P.json, and "
             "pass --predictor P.json")


@dataclass(frozen=True)
class Profile:
    """What a run is, as far as its records or its live model say (None: not known)."""

    model_type: str | None = None
    layers: int | None = None
    hidden: int | None = None
    classes: int | None = None
    steps: int | None = None
    recipe: str | None = None
    correct_bias: bool | None = None
    lr: float | None = None
    task: str | None = None


def architecture(model: Any) -> dict | None:
    """``model_type``, ``layers``, ``hidden`` and ``classes`` of a Hugging Face model (its ``config``); None for a
    model without one. Written by ``probes.attach`` as the records' ``architecture`` attribute."""
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "model_type", None):
        return None
    return _from_config(config.to_dict() if hasattr(config, "to_dict") else vars(config))


def _from_config(config: dict) -> dict:
    """The architecture keys from a classifier's ``config.json`` dict (BERT-style or DistilBERT-style names); a
    config without labels has transformers' default of two (saved configs leave the default out)."""
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
    return {"model_type": config.get("model_type"),
            "layers": config.get("num_hidden_layers", config.get("n_layers")),
            "hidden": config.get("hidden_size", config.get("dim")), "classes": labels}


def _saved_architecture(run: RunRecords) -> dict | None:
    """The architecture of the checkpoint a fine-tuning run saved beside its records (``step0/config.json``)."""
    saved = Path(run.path).parent / "step0" / "config.json"
    if Path(run.path).name != "run.h5" or not saved.is_file():
        return None
    try:
        return _from_config(json.loads(saved.read_text()))
    except (OSError, ValueError):
        return None


def run_profile(run: RunRecords) -> Profile:
    """The profile of a run from its records: the ``architecture`` attribute (or the checkpoint saved beside
    them), the number of classes (else from the loss plateau's ln C), the planned steps, the recipe, bias
    correction and peak learning rate (the recipe's, else the largest recorded)."""
    found = run.meta.get(ATTRIBUTE) or _saved_architecture(run) or {}
    classes = found.get("classes")
    plateau = run.records.get(LOSS_PLATEAU.kind, {}).get(LOSS_PLATEAU.name)
    if classes is None and plateau is not None and "ln_c" in plateau.attrs:
        classes = round(math.exp(float(plateau.attrs["ln_c"])))
    recipe = (run.meta.get("config", {}) or {}).get("resolved_recipe", {}) or {}
    correct_bias = recipe.get("correct_bias", (run.meta.get("optimizer_audit", {}) or {}).get("bias_correction"))
    lr = recipe.get("lr")
    train = run.records.get(TRAIN.kind, {}).get(TRAIN.name)
    if lr is None and train is not None and "lr" in train.columns and np.isfinite(train.column("lr")).any():
        lr = float(np.nanmax(train.column("lr")))
    return Profile(found.get("model_type"), _int(found.get("layers")), _int(found.get("hidden")), _int(classes),
                   total_steps(run), run.meta.get("recipe") or None, None if correct_bias is None else
                   bool(correct_bias), None if lr is None else float(lr), run.meta.get("task") or None)


def live_profile(model: Any, correct_bias: bool | None, steps: int | None, lr: float | None = None) -> Profile:
    """The profile of a run in progress, from its model and optimiser (recipe and task are not known there)."""
    found = architecture(model) or {}
    return Profile(found.get("model_type"), _int(found.get("layers")), _int(found.get("hidden")),
                   _int(found.get("classes")), steps, None, correct_bias, lr)


@dataclass(frozen=True)
class Domain:
    """The bank's runs: every value of each property seen, and the range of run lengths."""

    model_types: tuple[str, ...]
    layers: tuple[int, ...]
    hidden: tuple[int, ...]
    classes: tuple[int, ...]
    steps: tuple[int, int]
    recipes: tuple[str, ...]
    bias_correction: tuple[bool, ...]
    tasks: tuple[str, ...]

    @classmethod
    def of_rows(cls, rows: list[dict]) -> "Domain":
        """The domain of a feature table's rows (``model_type``, ``layers``, ``hidden``, ``classes``, ``steps``,
        ``recipe``, ``correct_bias``, ``task`` columns; blank or NaN values are left out)."""
        def seen(key: str, kind=str) -> tuple:
            values = {row.get(key) for row in rows}
            return tuple(sorted(kind(v) for v in values if v not in (None, "") and not _nan(v)))

        steps = [int(row["steps"]) for row in rows]
        return cls(seen("model_type"), seen("layers", _int), seen("hidden", _int), seen("classes", _int),
                   (min(steps), max(steps)) if steps else (0, 0), seen("recipe"),
                   tuple(sorted({str(row["correct_bias"]) in ("True", "true", "1") for row in rows
                                 if str(row["correct_bias"]) not in ("", "nan", "None")})), seen("task"))

    @classmethod
    def from_json(cls, values: dict) -> "Domain":
        return cls(**{f.name: tuple(values.get(f.name, ())) for f in fields(cls)})

    def describe(self) -> str:
        """The bank in a few words: "bert, 6 layers, 384 wide, 2 classes, 60-200 steps"."""
        low, high = self.steps
        return ", ".join([_words(self.model_types, "unknown architecture"),
                          _words(self.layers, "? layers", " layers"), _words(self.hidden, "? wide", " wide"),
                          _words(self.classes, "? classes", " classes"),
                          f"{low:,}-{high:,} steps" if low != high else f"{low:,} steps"])

    def outside(self, profile: Profile) -> list[str]:
        """The properties of ``profile`` the bank did not cover, worded ("roberta", "3,000 steps"); an unknown
        architecture counts as outside (nothing vouches for it), an unknown recipe or bias correction (of the run or
        of the bank) does not."""
        found = []
        if profile.model_type is None:
            found.append("architecture not recorded")
        elif profile.model_type not in self.model_types:
            found.append(profile.model_type)
        for value, seen, unit in ((profile.layers, self.layers, " layers"), (profile.hidden, self.hidden, " wide"),
                                  (profile.classes, self.classes, " classes")):
            if value is not None and value not in seen:
                found.append(f"{value}{unit}")
        if profile.steps is None:
            found.append("run length unknown")
        elif not self.steps[0] <= profile.steps <= self.steps[1]:
            found.append(f"{profile.steps:,} steps")
        if profile.recipe is not None and self.recipes and profile.recipe not in self.recipes:
            found.append(f"recipe {profile.recipe}")
        if profile.correct_bias is not None and self.bias_correction and \
                profile.correct_bias not in self.bias_correction:
            found.append("bias-corrected Adam" if profile.correct_bias else "Adam without bias correction")
        return found

    def note(self, profile: Profile) -> str | None:
        """None inside the domain; else one line: which properties lie outside, the bank, how to calibrate."""
        outside = self.outside(profile)
        if not outside:
            return None
        return f"{', '.join(outside)}: outside the bank ({self.describe()}); {CALIBRATE}"


def _words(values: tuple, unknown: str, unit: str = "") -> str:
    return "/".join(f"{v}" for v in values) + unit if values else unknown


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _int(value: Any) -> int | None:
    return None if value is None or value == "" or _nan(value) else int(float(value))

"""Why did this run fail, or will it? A verdict a person reads in ten seconds, from a run's records.

    python -m diagnostics.diagnose runs/bank/lr0.0003/hedge-default-s4          # a run folder or its run.h5
    python -m diagnostics.diagnose runs/my-run.h5 --json                        # one JSON object
    python -m diagnostics.diagnose runs/bank/lr0.0003/hedge-default-s4 --until 0.2   # as if at 20% of the steps
    python -m diagnostics.diagnose runs/mine/run.h5 --predictor mine.json       # a predictor fitted on your model

The outcome is the run's own (``failed``: final dev metric at or below the majority baseline, Dodge et al. 2020;
``succeeded``) once it has finished, else ``too early``. Prior and evidence come apart
(:mod:`probes.early_failure.verdict`): ``prior`` is the share of the seed bank's seeds of the run's configuration
(bias correction, learning rate) that failed, null when the bank has no such cell; ``dev_so_far`` is Dodge et al.'s
reading, the last dev evaluation seen against the majority baseline, with how many of the bank's seeds of that
configuration that stood there failed and that rule's measured within-cell AUC; ``predicted_failure`` is what this
run's early signals change the prior to, the predictor's P(fail) (:mod:`probes.early_failure.predictor_file`: the
shipped file fitted on the seed bank, or ``--predictor``) from the model of the largest fraction of the steps seen
(for a finished run: 30%), null before 5% of the steps, with ``update_auc``, that update's measured within-cell AUC
and interval. A run outside the predictor's domain (architecture, depth, width, classes, run length, recipe) gets
``predicted_failure: null``, ``calibrated: false``, no bank numbers, and ``calibration``, one line saying why and
how to calibrate (docs/verdicts-usage.md). The evidence reads the records: vanishing encoder gradients (from which
step, in which depths), the loss plateau at ln C, prediction collapse, Adam without bias correction, and the
forgetting curve where one was measured; the advice is ranked by that evidence, after Mosbach et al. (2020) and
Zhang et al. (2020), and never asks for what the run already does. ``--until F`` cuts every record at the first F of
the run's steps and ignores the outcome, so a finished run shows what the diagnosis said at that point. A file still
being written is read as it stands.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from diagnostics.command import CommandParser, fail, summary
from probes import catalogue
from probes.early_failure.domain import run_profile
from probes.early_failure.signals import features_at, total_steps, window_end
from probes.early_failure.verdict import EarlyVerdict, dev_so_far, judge
from probes.early_failure.predictor import FLAG_AT
from probes.early_failure.predictor_file import MODEL_FILE, PredictorFile
from probes.records import RecordsError, RunRecords, Series, open_run

LAST_FRACTION = 0.30  # a finished run is judged as at this share of its steps, the predictor's last
VANISHED = 1e-2  # an encoder block whose late gradient norm is below this share of its early one has vanished
PLATEAU = 0.05  # loss within 5% of ln C is on the plateau


@dataclass
class Diagnosis:
    run: str
    outcome: str
    predicted_failure: float | None
    seen_steps: int
    total_steps: int | None
    final_dev_metric: float | None
    verdict: EarlyVerdict
    evidence: list[dict] = field(default_factory=list)
    advice: list[dict] = field(default_factory=list)

    def text(self) -> str:
        seen = (f"{self.seen_steps} of {self.total_steps} steps" if self.total_steps else f"{self.seen_steps} steps")
        lines = [f"{self.run}: {self.outcome.upper()} ({seen} seen"
                 + (f", final dev metric {self.final_dev_metric:.3f}" if self.final_dev_metric is not None else "")
                 + ")"]
        lines += self.verdict.lines()
        lines.append("evidence:" if self.evidence else "evidence: none of the failure signatures")
        lines += [f"  - {item['finding']}" for item in self.evidence]
        lines.append("advice:")
        lines += [f"  {i}. {item['action']}: {item['why']}" for i, item in enumerate(self.advice, start=1)]
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict:
        fields = {k: v for k, v in self.__dict__.items() if k != "verdict"}
        fields.update(self.verdict.as_json())
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fields.items()}


# ---------------------------------------------------------------- reading the records


def cut(run: RunRecords, last_step: int) -> RunRecords:
    """The records as they stood after step ``last_step``: every series cut there, no summary (not finished)."""
    kept = {}
    for kind, named in run.records.items():
        kept[kind] = {}
        for name, record in named.items():
            if isinstance(record, Series):
                keep = record.steps <= last_step
                record = replace(record, steps=record.steps[keep], values=record.values[keep])
            kept[kind][name] = record
    return replace(run, summary={}, records=kept)


def _series(run: RunRecords, spec: catalogue.SeriesSpec) -> Series | None:
    """The run's record of a catalogue entry, or None where the run did not record it."""
    return run.get(spec) if run.has(spec) else None


def seen_steps(run: RunRecords) -> int:
    """Optimiser steps the records cover (the last recorded step + 1)."""
    last = [int(s.steps.max()) for named in run.records.values() for s in named.values()
            if isinstance(s, Series) and s.steps.size and s is not _series(run, catalogue.EVAL)]
    return max(last) + 1 if last else 0


def last_evaluation(run: RunRecords, last_step: int | None) -> tuple[str, float, int] | None:
    """The dev metric's name, value and updates-before of the last evaluation a run seen through 0-based step
    ``last_step`` had (an evaluation after n updates counts once step n - 1 is seen); None without one."""
    evals = _series(run, catalogue.EVAL)
    if evals is None or not evals.columns:
        return None
    seen = [i for i, step in enumerate(evals.steps) if last_step is None or step <= last_step + 1]
    if not seen:
        return None
    value = float(evals.values[seen[-1], 0])
    return (evals.columns[0], value, int(evals.steps[seen[-1]])) if math.isfinite(value) else None


def majority_of(run: RunRecords) -> float | None:
    """The dev metric of always predicting the majority class: the summary's, else 0 for MCC (whatever the class
    balance), else unknown."""
    if "majority" in run.summary:
        return float(run.summary["majority"])
    evals = _series(run, catalogue.EVAL)
    return 0.0 if evals is not None and evals.columns and evals.columns[0] == "mcc" else None


# ---------------------------------------------------------------- evidence


def vanishing_gradients(run: RunRecords) -> dict | None:
    """Encoder blocks whose gradient norm fell below VANISHED of its value over the first 10% of the steps seen,
    and the first step at which the encoder's total norm fell under a tenth of its early value."""
    layers = _series(run, catalogue.LAYER_NORMS)
    if layers is None or layers.steps.size < 8:
        return None
    steps, values = layers.steps, np.asarray(layers.values, dtype="f8")
    early = steps <= max(2, steps.max() // 10)
    late = steps >= steps.max() - max(2, steps.max() // 10)
    encoder = [i for i, name in enumerate(layers.columns) if name.startswith("encoder.")]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.nanmedian(values[late], axis=0) / np.nanmedian(values[early], axis=0)
    vanished = [layers.columns[i] for i in encoder if ratio[i] < VANISHED]
    if not vanished:
        return None
    total = np.sqrt(np.square(values[:, encoder]).sum(axis=1))
    low = total < np.nanmedian(total[early]) / 10
    since = int(steps[np.argmax(low)]) if low.any() else int(steps[late][0])
    head = layers.columns.index("head") if "head" in layers.columns else None
    head_note = (f"; the head's stayed at {ratio[head]:.2g}x" if head is not None and math.isfinite(ratio[head])
                 else "")
    worst = min(ratio[i] for i in encoder)
    return {"signal": "vanishing_gradients", "step": since, "depths": vanished, "ratio": float(worst),
            "finding": f"vanishing gradients from step {since}: encoder blocks {', '.join(vanished)} fell to "
                       f"{worst:.1g}x their early gradient norm{head_note}"}


def loss_plateau(run: RunRecords) -> dict | None:
    """The training loss over the last 10% of the steps seen, against ln C."""
    plateau = _series(run, catalogue.LOSS_PLATEAU)
    if plateau is not None and plateau.steps.size >= 4:
        steps, ratio = plateau.steps, plateau.column("loss_over_ln_c")
        ln_c = float(plateau.attrs.get("ln_c", math.log(2)))
    else:
        train = _series(run, catalogue.TRAIN)
        if train is None or train.steps.size < 4:
            return None
        ln_c = math.log(int(run.meta.get("config", {}).get("num_labels", 2) or 2))
        steps, ratio = train.steps, train.column("loss") / ln_c
    late = steps >= steps.max() - max(2, steps.max() // 10)
    level = float(np.nanmedian(ratio[late]))
    if abs(level - 1) > PLATEAU:
        return None
    return {"signal": "loss_plateau", "step": int(steps[late][0]), "loss_over_ln_c": level,
            "finding": f"training loss flat at ln C: {level * ln_c:.3f} against ln C = {ln_c:.3f} over steps "
                       f"{int(steps[late][0])}-{int(steps.max())}, what predicting the class prior costs"}


def prediction_collapse(run: RunRecords) -> dict | None:
    """The head predicting one class for (nearly) every training example late in what was seen, and the dev
    metric at the majority baseline."""
    found = []
    predictions = _series(run, catalogue.PREDICTION_COLLAPSE)
    if predictions is not None and predictions.steps.size >= 4:
        late = predictions.steps >= predictions.steps.max() - max(2, predictions.steps.max() // 10)
        share = float(np.nanmean(predictions.column("majority_share")[late]))
        if share >= 0.99:
            found.append(f"the head predicts one class for {100 * share:.0f}% of the training examples")
    evals = _series(run, catalogue.EVAL)
    majority = run.summary.get("majority")
    if evals is not None and evals.steps.size and majority is not None:
        at_baseline = np.asarray(evals.values[:, 0]) <= float(majority) + 1e-9
        tail = int(np.argmin(at_baseline[::-1])) if not at_baseline.all() else len(at_baseline)
        if tail:
            found.append(f"the dev metric sat at the majority baseline ({float(majority):.3f}) for the last {tail} "
                         f"of {len(at_baseline)} evaluations")
    if not found:
        return None
    return {"signal": "prediction_collapse", "step": int(predictions.steps.max()) if predictions is not None else None,
            "finding": "prediction collapse: " + "; ".join(found)}


def optimiser(run: RunRecords) -> dict | None:
    """Adam without bias correction, from the run's recipe or the optimiser audit in its metadata."""
    recipe = (run.meta.get("config", {}) or {}).get("resolved_recipe", {}) or {}
    audit = run.meta.get("optimizer_audit", {}) or {}
    if recipe.get("correct_bias") is False or audit.get("bias_correction") is False:
        return {"signal": "no_bias_correction", "step": 0,
                "finding": "Adam without bias correction (BERTAdam): its first updates are ~30x larger than "
                           "bias-corrected Adam's, the cause of failed runs in Mosbach et al. (2020)"}
    return None


def forgetting(run: RunRecords) -> dict | None:
    """Where the forgetting sits: how many top blocks must be reset to come within 10% of the pre-trained
    perplexity."""
    grids = run.grids(catalogue.FORGETTING.kind)
    if not grids:
        return None
    name, grid = sorted(grids.items())[-1]
    perplexity, k = grid.fields["perplexity"], grid.axes["k"]
    reference = float(grid.attrs.get("pretrained_perplexity", perplexity[-1]))
    recovered = [int(kk) for kk, p in zip(k, perplexity) if np.isfinite(p) and p <= 1.1 * reference]
    depth = int(k.max())
    at = recovered[0] if recovered else depth
    return {"signal": "forgetting", "step": None, "blocks": at,
            "finding": f"forgetting ({name}): MLM perplexity {perplexity[0]:.0f} against {reference:.0f} "
                       f"pre-trained; it comes back within 10% once the top {at} of {depth} blocks are reset"
                       + (" (localised in the top layers)" if at <= depth // 2 else " (spread through the model)")}


# ---------------------------------------------------------------- advice


def advise(evidence: list[dict], outcome: str, predicted: float | None, reinitialised: bool = False) -> list[dict]:
    """Advice ranked by the evidence, after the papers; never what the run already does (bias correction only
    where it is off, re-initialising the top blocks only where the run did not)."""
    signals = {item["signal"] for item in evidence}
    # Every run starts on the ln C plateau predicting one class: early on, only the predictor and vanishing
    # gradients say a run is failing.
    symptoms = {"vanishing_gradients"} if outcome == "too early" else \
        {"vanishing_gradients", "loss_plateau", "prediction_collapse"}
    failing = outcome == "failed" or (predicted is not None and predicted >= FLAG_AT) or bool(signals & symptoms)
    advice = []
    if outcome == "too early" and not failing:
        advice.append({"action": "too early to tell: look again later (the predictor decides from 5% of the steps "
                                 "on, best from 20-30%)", "why": "every run starts on the ln C plateau"})
    if "no_bias_correction" in signals and failing:
        advice.append({"action": "use bias-corrected Adam (torch.optim.AdamW; --correct-bias true or --recipe "
                                 "mosbach)", "why": "no bias correction is the main cause of failed runs "
                                                     "(Mosbach et al. 2020)"})
    if failing:
        advice.append({"action": "lower the learning rate (e.g. halve it)",
                       "why": "vanishing gradients and the ln C plateau follow too large early updates"})
        advice.append({"action": "lengthen the warm-up, and train longer (Mosbach et al.: 20 epochs instead of 3)",
                       "why": "a longer run lets a slow start recover"})
        if not reinitialised:
            advice.append({"action": "re-initialise the top encoder blocks and the pooler (--recipe zhang, "
                                     "--reinit-layers 1..6)", "why": "Zhang et al. (2020): the top layers' "
                                                                      "pre-trained weights are a poor start for the "
                                                                      "new task"})
    if "forgetting" in signals and not failing:
        advice.append({"action": "re-initialise or re-train the top blocks if forgetting matters to you",
                       "why": "the forgetting is localised in the top layers"})
    if not failing and outcome != "too early":
        advice.append({"action": "nothing to fix in the optimisation; compare seeds and select on dev",
                       "why": "what remains between successful seeds is generalisation variance"})
    return advice


# ---------------------------------------------------------------- the command


def diagnose(path: Path, until: float | None = None, predictor: Path = MODEL_FILE) -> Diagnosis:
    """The diagnosis of the run at ``path`` (a run folder or records file), optionally as at ``until``, with the
    predictor file ``predictor``."""
    records_path = path / "run.h5" if path.is_dir() else path
    if not records_path.is_file():
        raise RecordsError(f"{records_path} not found; pass a run folder (holding run.h5) or a records file")
    predictors = PredictorFile.load(predictor)
    run = whole = open_run(records_path)
    total = total_steps(run)
    profile = run_profile(run)
    if until is not None:
        if total is None:
            raise RecordsError(f"{records_path} does not say how many steps the run takes, so --until has nothing "
                               "to take a share of; drop --until")
        run = cut(run, window_end(total, until))
    finished = "final_dev_metric" in run.summary
    outcome = ("failed" if run.summary.get("failed") else "succeeded") if finished else "too early"
    seen = int(run.summary.get("steps", 0)) if finished else seen_steps(run)
    if not total:
        last_step = None
    elif until is not None or finished:  # a share given, or a finished run judged as at LAST_FRACTION
        last_step = window_end(total, until if until is not None else LAST_FRACTION)
    else:  # a run still going: as far as its records reach
        last_step = seen - 1
    verdict = judge(predictors, profile, last_step, lambda fraction: features_at(run, fraction, total))
    verdict = replace(verdict, dev=dev_so_far(predictors, profile, last_evaluation(whole, last_step),
                                              majority_of(whole)))
    evidence = [found for found in (optimiser(run), vanishing_gradients(run), loss_plateau(run),
                                    prediction_collapse(run), forgetting(run)) if found is not None]
    final = float(run.summary["final_dev_metric"]) if finished else None
    reinitialised = bool(((run.meta.get("config", {}) or {}).get("resolved_recipe", {}) or {}).get("reinit_layers"))
    return Diagnosis(str(path), outcome, verdict.probability, seen, total, final, verdict, evidence,
                     advise(evidence, outcome, verdict.probability, reinitialised))


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m diagnostics.diagnose", description=summary(__doc__))
    parser.add_argument("run", type=Path, help="a run folder (holding run.h5) or a records file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--until", type=float, help="judge from the first share F of the run's steps only (0 < F <= 1)")
    parser.add_argument("--predictor", type=Path, default=MODEL_FILE, metavar="PATH",
                        help="predictor file (python -m diagnostics.seed_bank --fit CSV --predictor-out PATH; "
                             "default: the shipped one, fitted on the seed bank)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.until is not None and not 0 < args.until <= 1:
            raise RecordsError(f"--until {args.until} must lie in (0, 1]: the share of the run's steps to judge from")
        if not args.run.exists():
            raise RecordsError(f"{args.run} does not exist; pass a run folder or a records file")
        result = diagnose(args.run, args.until, args.predictor)
    except RecordsError as error:
        return fail(error)
    print(json.dumps(result.as_json(), indent=1) if args.json else result.text(), end="\n" if args.json else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fine-tune one seed of one recipe on one task, recording everything the diagnostics need.

    python -m diagnostics.finetune --task wordnet-entail --recipe default --seed 3 --out runs/
    python -m diagnostics.finetune --task hedge --recipe zhang --seed 0 --out runs/ --lr 5e-4 --epochs 4

Writes ``OUT/<task>-<recipe>-s<seed>/``:

* ``step0/``: the model right after the seed's head initialisation (and Zhang's re-initialisation), before any
  update, with its tokenizer: the loss-surface diagnostic needs the pre-trained encoder plus this head;
* ``final/``: the fine-tuned model and tokenizer;
* ``run.h5``: the records (``probes.records``): series ``train`` (loss, lr, gradient norms per optimiser step,
  from the probes' :class:`~probes.RunScalars`), the probes' per-layer series, ``eval`` (dev metric and dev loss,
  ``--evals`` times evenly and at the end), the predicted label of every dev example at each evaluation
  (``predictions/dev``) and the final model's [CLS] representations of the dev examples (``predictions/dev_cls``,
  for ``diagnostics.instability``), and a summary (final dev metric, majority baseline, failed flag = final
  metric at or below the majority baseline, Dodge et al. 2020). ``--stop-early dodge|predictor``
  (:mod:`diagnostics.stop_early`) may end a doomed run early: its summary then says where and why, with no
  outcome, and no ``final/`` is saved.

The seed sets the classifier (and pooler) initialisation, dropout and the data order. Re-running a finished run
prints "already finished, skipping" and exits 0 (seed sweeps rely on this); a folder holding an unfinished run, or
a finished one with other recipe settings, is refused: settings live in the records, not in the folder name, so
give each learning rate or recipe variant its own --out. Recipes are in ``diagnostics.recipes``; any recipe field can be overridden here.

The run computes on a GPU when torch sees one and in bf16 autocast only where the hardware has native bf16
(``diagnostics.hardware``; ``--device``, ``--precision`` override); the choice is printed and stored in the
records' config. Training batches are grouped by length (as Hugging Face's ``group_by_length``) and dev batches
sorted by length, so little of each batch is padding; the order is drawn from the seed, so a run is reproducible.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from probes import catalogue, records
from diagnostics.bert_adam import BertAdam
from diagnostics import interrupt
from diagnostics.checkpoints import CheckpointError, checkpoint_folder, load_tokenizer
from diagnostics.checkpoints import load_model as load_model_folder
from diagnostics.command import CommandParser, fail
from diagnostics.embedded import DEFAULT_MODEL
from diagnostics.hardware import DEVICES, PRECISIONS, Hardware, HardwareError, choose_hardware
from diagnostics.quiet import quiet_transformers, warnings_as_log_lines
from diagnostics.recipes import RECIPES, Recipe, RecipeError, get_recipe, linear_schedule, parameter_groups, reinit_top
from diagnostics.stop_early import StopRule, StopRuleError, Stopper
from diagnostics.tasks import Example, Task, TaskError, encode, load_task, majority_baseline, metric

EVAL_BATCH = 64
EARLY_WARNING_FRACTION = 0.15  # the early warning decides after this share of the steps
SAME_DATA = ("max_length", "train_examples", "dev_examples")  # a finished run is reused only if these agree
INTERPOLATION_EXAMPLES = 64  # the held sample of the interpolation probe: the first training examples

# Probes: called with (model, optimizer, writer) and entered before the records start, so it can declare its series
# and attach its hooks; entering gives the probe session (`probes.attach(...)`), which records loss and lr; exited
# (hooks removed) when training ends, before `final/` is saved.
Probes = Callable[[nn.Module, torch.optim.Optimizer, records.RunWriter], contextlib.AbstractContextManager]


class FinetuneError(ValueError):
    """Bad input or an output folder that cannot be used; the message is one line naming the fix."""


@dataclass
class FinetuneConfig:
    """One run. Recipe fields left as None take the recipe's value (see `resolved_recipe`)."""

    task: str
    recipe: str
    seed: int
    out: Path
    model: Path = DEFAULT_MODEL
    max_length: int = 128
    evals: int = 10
    threads: int | None = None
    device: str = "auto"
    precision: str = "auto"
    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    warmup_ratio: float | None = None
    weight_decay: float | None = None
    max_grad_norm: float | None = None
    correct_bias: bool | None = None
    reinit_layers: int | None = None
    layerwise_lr_decay: float | None = None
    train_examples: int | None = None
    dev_examples: int | None = None
    probes: bool = True
    interpolations: int | None = None  # loss-line probes per run: None = one per dev evaluation, 0 = none
    stop_early: str | None = None  # a rule of diagnostics.stop_early, e.g. "dodge"; None runs to the end

    def resolved_recipe(self) -> Recipe:
        overrides = {f.name: getattr(self, f.name) for f in fields(Recipe) if hasattr(self, f.name)
                     and f.name != "name"}
        return get_recipe(self.recipe).replace(**overrides)

    def run_dir(self, task_name: str) -> Path:
        return Path(self.out) / f"{task_name}-{self.recipe}-s{self.seed}"


@dataclass(frozen=True)
class FinetuneResult:
    """What a run ended with (`skipped` when it had finished before). A run stopped early says why in `stopped`;
    its `final_dev_metric` is the last evaluation and `failed` is False (its outcome is unknown)."""

    run_dir: Path
    skipped: bool
    final_dev_metric: float
    metric: str
    majority: float
    failed: bool
    steps: int
    seconds: float
    stopped: str | None = None


# ---------------------------------------------------------------- model set-up


def load_model(path: Path, num_labels: int, seed: int):
    """The pre-trained encoder with a fresh classification head drawn from `seed`, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()  # "newly initialized weights" is exactly what we want here
    folder = checkpoint_folder(path, "--model")
    torch.manual_seed(seed)
    model = load_model_folder(AutoModelForSequenceClassification, folder, "--model", fresh_head=True,
                              num_labels=num_labels)
    return model, load_tokenizer([folder], model.config.vocab_size)


# ---------------------------------------------------------------- training and evaluation


def token_lengths(examples: list[Example], tokenizer, max_length: int) -> list[int]:
    """Each example's length in tokens after truncation to `max_length` (what its row of a batch costs)."""
    pairs = [e.text_pair for e in examples]
    encoded = tokenizer([e.text for e in examples], pairs if pairs[0] is not None else None, truncation=True,
                        max_length=max_length)
    return [len(ids) for ids in encoded["input_ids"]]


def batches(examples: list[Example], lengths: list[int], size: int,
            generator: torch.Generator) -> Iterator[list[Example]]:
    """One epoch of length-grouped batches drawn from `generator`, as Hugging Face's ``group_by_length``: a random
    order cut into chunks of up to 50 batches, each chunk sorted by length (longest first) and cut into batches,
    so a batch pads to little more than its own examples; then the batches are shuffled. The last may be smaller."""
    order = torch.randperm(len(examples), generator=generator).tolist()
    chunk = size * max(1, min(len(order) // (size * 4), 50))
    grouped = []
    for start in range(0, len(order), chunk):
        by_length = sorted(order[start:start + chunk], key=lambda i: -lengths[i])
        grouped += [by_length[i:i + size] for i in range(0, len(by_length), size)]
    for b in torch.randperm(len(grouped), generator=generator).tolist():
        yield [examples[i] for i in grouped[b]]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


@torch.inference_mode()
def evaluate(model: nn.Module, tokenizer, task: Task, max_length: int,
             hardware: Hardware | None = None) -> tuple[float, float, list[int]]:
    """(dev metric, mean dev loss, the predicted label of every dev example in the task's order), over dev batches
    sorted by length (so each pads to little more than itself)."""
    device = hardware.device if hardware else torch.device("cpu")
    model.eval()
    lengths = token_lengths(task.dev, tokenizer, max_length)
    order = sorted(range(len(task.dev)), key=lambda i: -lengths[i])
    dev = [task.dev[i] for i in order]
    predictions, total_loss = [], torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(dev), EVAL_BATCH):
        batch = to_device(encode(dev[start:start + EVAL_BATCH], tokenizer, max_length), device)
        with hardware.autocast() if hardware else contextlib.nullcontext():
            out = model(**batch)
        total_loss += out.loss.double() * len(batch["labels"])
        predictions.append(out.logits.argmax(-1))
    model.train()
    predicted = [0] * len(dev)
    for index, label in zip(order, torch.cat(predictions).tolist()):
        predicted[index] = label
    return metric(task.metric, predicted, [e.label for e in task.dev]), float(total_loss) / len(dev), predicted


@torch.inference_mode()
def dev_representations(model: nn.Module, tokenizer, task: Task, max_length: int,
                        hardware: Hardware | None = None) -> np.ndarray:
    """The last layer's hidden state at the first token ([CLS]) of every dev example, (examples, hidden), fp32."""
    device = hardware.device if hardware else torch.device("cpu")
    model.eval()
    rows = []
    for start in range(0, len(task.dev), EVAL_BATCH):
        batch = to_device(encode(task.dev[start:start + EVAL_BATCH], tokenizer, max_length), device)
        with hardware.autocast() if hardware else contextlib.nullcontext():
            rows.append(model(**batch, output_hidden_states=True).hidden_states[-1][:, 0].float().cpu())
    model.train()
    return torch.cat(rows).numpy()


def eval_steps(total: int, evals: int) -> set[int]:
    """`evals` optimiser steps spread evenly over the run, the last one included."""
    return {round(total * k / evals) for k in range(1, evals + 1)} | {total}


def total_steps(task: Task, recipe: Recipe) -> int:
    """Optimiser steps of a run: batches per epoch times epochs."""
    return -(-len(task.train) // recipe.batch_size) * recipe.epochs


def planned_steps(configs: list[FinetuneConfig]) -> dict[int, int]:
    """The optimiser steps of each run (by its index in ``configs``), 0 for a finished one: what is left to do."""
    planned = {}
    for index, one in enumerate(configs):
        task = subset(load_task(one.task), one.train_examples, one.dev_examples)
        planned[index] = 0 if finished_run(one.run_dir(task.name)) else total_steps(task, one.resolved_recipe())
    return planned


def signal_probes(until: int | None = None) -> list:
    """The probes this runner records besides its loss and learning rate: per-layer and per-matrix gradient norms,
    per-depth activation gradients, prediction collapse and the loss plateau at every step (``diagnose`` reads
    them to the end), and the signals only the early-failure features read (head-to-encoder ratio, Adam's second
    moment and sign-like steps, parameter norms and update ratios, [CLS] collapse) up to step ``until``, the end of
    the features' last window (they cost about half a training step on a CPU: ``bench/probe_overhead.py``)."""
    import probes

    early = [probes.HeadEncoderRatio(), probes.AdamSecondMoment(), probes.ParameterNorms(), probes.AdamSignShare(),
             probes.ClsCollapse()]
    for probe in early:
        probe.until = until
    return [probes.GradientNorms(), probes.ActivationGradients(), probes.PredictionCollapse(), probes.LossPlateau(),
            *early]


def standard_probes(total: int, enabled: bool = True, sample: list[dict] | None = None,
                    autocast: torch.dtype | None = None, times: int = 10) -> Probes:
    """What every run of this runner records at every step: loss, learning rate and total gradient norms
    (:class:`~probes.RunScalars`, always); unless ``enabled`` is False, per-layer and per-matrix gradient norms,
    per-depth activation gradients, the early-failure signals (prediction collapse, loss plateau, head-to-encoder
    ratio, Adam's second moment; parameter norms and update ratios, sign-like Adam steps, [CLS] collapse; the last
    five only over the first 30% of the steps, all the early-failure features read), the early warning (the seed
    bank's predictor) over the first 15% of steps (runs of 30 steps or more) and, given a held ``sample``, loss and accuracy on the line from the start to the current weights ``times`` times per run
    (64 examples at 7 points: the forward passes of 28 training batches of 16 each time, so the runner ties
    ``times`` to its dev evaluations, ``--evals``)."""
    import probes
    from probes.early_failure import signals as early_signals
    from probes.early_failure.benchmark import FRACTIONS

    def attach(model: nn.Module, optimizer: torch.optim.Optimizer, writer: records.RunWriter):
        chosen = signal_probes(early_signals.window_end(total, FRACTIONS[-1])) if enabled else []
        window_end = early_signals.window_end(total, EARLY_WARNING_FRACTION)
        if enabled and window_end >= 4:
            chosen.append(probes.EarlyWarning(window_end, total_steps=total))
        if sample:
            chosen.append(probes.Interpolation(sample, total_steps=total, autocast=autocast, times=times))
        return probes.attach(model, optimizer, writer, probes=chosen, schedule=probes.Schedule(every=1))

    return attach


def held_sample(task: Task, tokenizer, model: nn.Module, max_length: int) -> list[dict]:
    """The interpolation probe's sample: the first training examples, length-sorted batches as the surface uses."""
    from diagnostics.evaluation import prepare_batches

    if not task.train:  # nothing to hold; the run itself refuses a task without training steps
        return []
    batches = prepare_batches(task.train[:INTERPOLATION_EXAMPLES], tokenizer, model, max_length=max_length,
                              batch_size=32, device=torch.device("cpu"))
    return [{**inputs, "labels": labels} for inputs, labels in batches]


def subset(task: Task, train_examples: int | None, dev_examples: int | None) -> Task:
    """The task cut to its first examples (the splits are stored shuffled); the majority baseline follows the dev
    subset."""
    if train_examples is None and dev_examples is None:
        return task
    dev = task.dev[:dev_examples]
    return replace(task, train=task.train[:train_examples], dev=dev,
                   majority_baseline=majority_baseline(task.metric, dev))


def evaluated(model, tokenizer, task: Task, config: FinetuneConfig, hardware: Hardware, run: records.RunWriter,
              step: int) -> tuple[float, float]:
    """Evaluate on the dev set after ``step`` updates, append the `eval` and `predictions/dev` rows; returns the dev
    metric and dev loss."""
    dev_metric, dev_loss, predictions = evaluate(model, tokenizer, task, config.max_length, hardware)
    run.append(catalogue.EVAL.name, step, [dev_metric, dev_loss])
    run.append(catalogue.DEV_PREDICTIONS.name, step, predictions)
    return dev_metric, dev_loss


def train(model, tokenizer, task: Task, recipe: Recipe, config: FinetuneConfig, run: records.RunWriter,
          probes: Probes, hardware: Hardware | None = None,
          on_step: Callable[[], None] | None = None) -> tuple[int, float, float, str | None]:
    """The training loop on `hardware` (default: CPU, fp32) under ``probes`` (they record the `train` rows, at the
    0-based step of each update); appends `eval` rows (after that many updates); calls `on_step` after each update
    (then it shows no progress bar of its own); stops early where ``config.stop_early``'s rule says so; returns
    (optimiser steps, last dev metric, mean training loss of the last 10% of steps, why it stopped early or None)."""
    hardware = hardware or choose_hardware("cpu", "fp32")
    model.to(hardware.device)
    optimizer = BertAdam(parameter_groups(model, recipe), lr=recipe.lr, betas=recipe.adam_betas,
                         eps=recipe.adam_eps, correct_bias=recipe.correct_bias)
    total = total_steps(task, recipe)
    if total == 0:
        raise FinetuneError(f"task {task.name} gives zero training steps; give it examples and --epochs >= 1")
    warmup = max(1, round(recipe.warmup_ratio * total))
    last_losses: list[float] = []
    scheduled = eval_steps(total, config.evals)
    stopper, stopped = None, None
    if config.stop_early:
        rule = StopRule.parse(config.stop_early)
        stopper = Stopper(rule, config.run_dir(task.name), total)
        scheduled |= {rule.decision_step(total)} - {None}
    generator = torch.Generator().manual_seed(config.seed)
    lengths = token_lengths(task.train, tokenizer, config.max_length)
    with probes(model, optimizer, run) as session, tqdm(total=total, desc=config.run_dir(task.name).name,
                                                        unit="step",
                                                        disable=on_step is not None or not sys.stderr.isatty()) as bar:
        run.start()
        step = 0
        model.train()
        for examples in (batch for _ in range(recipe.epochs)
                         for batch in batches(task.train, lengths, recipe.batch_size, generator)):
            lr_scale = linear_schedule(step, total, warmup)
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * group["lr_scale"] * lr_scale
            with hardware.autocast():
                loss = model(**to_device(encode(examples, tokenizer, config.max_length), hardware.device)).loss
            session.log_scalars(lr=recipe.lr * lr_scale)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            last_losses = (last_losses + [float(loss.detach())])[-max(1, total // 10):]
            step += 1
            if step in scheduled:
                dev_metric, dev_loss = evaluated(model, tokenizer, task, config, hardware, run, step)
            bar.update()
            if on_step is not None:
                on_step()
            stopped = stopper and stopper.after_step(step, session,
                                                     (dev_metric, dev_loss) if step in scheduled else None)
            if stopped:
                if step not in scheduled:  # the predictor stops between evaluations: where the run stood
                    dev_metric, dev_loss = evaluated(model, tokenizer, task, config, hardware, run, step)
                break
    return step, dev_metric, sum(last_losses) / len(last_losses), stopped


# ---------------------------------------------------------------- the run and its folder


def finished_run(run_dir: Path) -> records.RunRecords | None:
    """The records of a finished run in `run_dir` (one with a summary: run to the end or stopped early), None if
    there is none."""
    path = run_dir / "run.h5"
    if not path.is_file():
        return None
    try:
        done = records.open_run(path)
    except (records.RecordsError, OSError):
        return None
    return done if "final_dev_metric" in done.summary or "stopped_at" in done.summary else None


def skipped_result(run_dir: Path, done: records.RunRecords, recipe: Recipe,
                   config: FinetuneConfig | None = None) -> FinetuneResult:
    """The result of a finished run, if it was run with the same recipe settings, and the same data and precision
    as `config` asks for (else a FinetuneError)."""
    before_config = done.meta.get("config", {})
    before = before_config.get("resolved_recipe", {})
    changed = sorted(k for k, v in _plain(asdict(recipe)).items() if before.get(k) != v)
    if config is not None:
        changed += [k for k in SAME_DATA if k in before_config and before_config[k] != getattr(config, k)]
        ran_in = before_config.get("hardware", {}).get("precision")
        if config.precision != "auto" and ran_in not in (None, config.precision):
            changed.append("precision")
    if changed:
        raise FinetuneError(f"{run_dir} holds a finished run with other settings ({', '.join(changed)}); "
                            "pick another --out")
    summary = done.summary
    if "stopped_at" in summary:
        return FinetuneResult(run_dir, True, float(summary["dev_metric_at_stop"]), str(summary["metric"]),
                              float(summary["majority"]), False, int(summary["steps"]), 0.0, str(summary["stop_rule"]))
    return FinetuneResult(run_dir, True, float(summary["final_dev_metric"]), str(summary["metric"]),
                          float(summary["majority"]), bool(summary["failed"]), int(summary["steps"]), 0.0)


def run(config: FinetuneConfig, probes: Probes | None = None, hardware: Hardware | None = None,
        on_step: Callable[[], None] | None = None, announce: bool = False) -> FinetuneResult:
    """Fine-tune one seed (or skip a finished run) and return how it ended; `probes` see the whole loop. The run
    computes on `hardware`, else on what ``config.device`` and ``config.precision`` choose (said on stderr with
    `announce`)."""
    started = time.monotonic()
    task = subset(load_task(config.task), config.train_examples, config.dev_examples)
    recipe = config.resolved_recipe()
    run_dir = config.run_dir(task.name)
    done = finished_run(run_dir)
    if done is not None:
        return skipped_result(run_dir, done, recipe, config)
    if run_dir.exists():
        raise FinetuneError(f"{run_dir} holds an unfinished run; delete it or pick another --out")
    if config.threads:
        torch.set_num_threads(config.threads)
    hardware = hardware or choose_hardware(config.device, config.precision, announce)
    model, tokenizer = load_model(Path(config.model), task.num_labels, config.seed)
    reinit_top(model, recipe.reinit_layers, recipe.reinit_pooler)
    run_dir.mkdir(parents=True)
    save(model, tokenizer, run_dir / "step0")
    meta = records.RunMeta(model=str(config.model), seed=config.seed, task=task.name, recipe=recipe.name,
                           config={**_plain(asdict(config)), "resolved_recipe": _plain(asdict(recipe)),
                                   "hardware": hardware.as_meta()},
                           argv=list(sys.argv))
    with records.RunWriter.create(run_dir / "run.h5", meta) as rw:
        rw.add_series(catalogue.EVAL.name, [task.metric, "loss"], kind=catalogue.EVAL.kind)
        rw.add_series(catalogue.DEV_PREDICTIONS.name, [str(i) for i in range(len(task.dev))],
                      kind=catalogue.DEV_PREDICTIONS.kind)
        if probes is None:
            times = config.evals if config.interpolations is None else config.interpolations
            sample = held_sample(task, tokenizer, model, config.max_length) if config.probes and times else None
            probes = standard_probes(total_steps(task, recipe), config.probes, sample,
                                     torch.bfloat16 if hardware.bf16 else None, times=times)
        steps, final, final_loss, stopped = train(model, tokenizer, task, recipe, config, rw, probes, hardware,
                                                  on_step)
    if stopped:
        return stopped_result(run_dir, task, final, (steps, total_steps(task, recipe)), time.monotonic() - started,
                              f"{StopRule.parse(config.stop_early)}: {stopped}")
    save(model, tokenizer, run_dir / "final")
    cls = dev_representations(model, tokenizer, task, config.max_length, hardware)
    records.write_grid(run_dir / "run.h5", catalogue.DEV_CLS.name,
                       {"example": np.arange(cls.shape[0]), "unit": np.arange(cls.shape[1])}, {"cls": cls},
                       kind=catalogue.DEV_CLS.kind, attrs={"layer": "last", "token": 0, "split": "dev"})
    result = FinetuneResult(run_dir, False, float(final), task.metric, task.majority_baseline,
                            bool(final <= task.majority_baseline + 1e-9), steps, time.monotonic() - started)
    records.write_summary(run_dir / "run.h5", {
        "final_dev_metric": result.final_dev_metric, "metric": result.metric, "majority": result.majority,
        "failed": result.failed, "steps": steps, "final_train_loss": final_loss,
        "seconds": round(result.seconds, 1)})
    return result


def stopped_result(run_dir: Path, task: Task, dev_metric: float, steps: tuple[int, int], seconds: float,
                   why: str) -> FinetuneResult:
    """Record a run stopped early after ``steps`` = (run, planned) optimiser steps: the summary says where and
    why, with no ``final_dev_metric`` and no ``failed`` flag (its outcome is unknown), so reports of finished runs
    leave it out; no ``final/`` model is saved."""
    steps, planned = steps
    records.write_summary(run_dir / "run.h5", {
        "stopped_at": steps, "stop_rule": why, "dev_metric_at_stop": float(dev_metric), "metric": task.metric,
        "majority": task.majority_baseline, "steps": steps, "planned_steps": planned, "seconds": round(seconds, 1)})
    return FinetuneResult(run_dir, False, float(dev_metric), task.metric, task.majority_baseline, False, steps,
                          seconds, why)


def save(model: nn.Module, tokenizer, folder: Path) -> None:
    """`save_pretrained` the model and its tokenizer into `folder`."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _plain(values: dict) -> dict:
    """A config dict with paths as strings and tuples as lists (what the records' attributes hold)."""
    return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in values.items()}


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m diagnostics.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="task name (see diagnostics.tasks.task_names) or folder")
    parser.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="runs go to OUT/<task>-<recipe>-s<seed>/")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="pre-trained checkpoint folder")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--evals", type=int, default=10, help="dev evaluations per run (the last at the end)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (1 for parallel seed sweeps)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA if torch sees a GPU")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast where the hardware has native bf16, else fp32")
    parser.add_argument("--train-examples", type=int, help="use only the first N training examples")
    parser.add_argument("--dev-examples", type=int, help="use only the first N dev examples")
    parser.add_argument("--no-probes", dest="probes", action="store_false",
                        help="record only loss, lr, total gradient norms and the dev metric (no per-layer probes)")
    parser.add_argument("--stop-early", metavar="RULE",
                        help="dodge or predictor (diagnostics.stop_early): stop the run early if it looks doomed")
    overrides = parser.add_argument_group("recipe overrides (default: the recipe's value)")
    overrides.add_argument("--lr", type=float)
    overrides.add_argument("--epochs", type=int)
    overrides.add_argument("--batch-size", type=int)
    overrides.add_argument("--warmup-ratio", type=float)
    overrides.add_argument("--weight-decay", type=float)
    overrides.add_argument("--max-grad-norm", type=float)
    overrides.add_argument("--correct-bias", type=lambda s: s.lower() in ("1", "true", "yes"),
                           help="true/false: switch Adam's bias correction")
    overrides.add_argument("--reinit-layers", type=int, help="re-initialise the top N encoder blocks")
    overrides.add_argument("--layerwise-lr-decay", type=float, help="lr x decay^(L+1-depth) per encoder block")
    return parser


def kept(config: FinetuneConfig) -> str:
    """What an interrupted run left, and what running the same command again does (it refuses the folder)."""
    try:
        run_dir = config.run_dir(load_task(config.task).name)
    except (TaskError, OSError):
        return f"see {config.out}"
    if not run_dir.exists():
        return "nothing was written"
    again = "running the same command again refuses the unfinished folder: delete it or pick another --out"
    try:
        steps = records.open_run(run_dir / "run.h5").series("train").steps.size
    except records.RecordsError:
        return f"{run_dir} holds no records yet; {again}"
    return f"{run_dir / 'run.h5'} keeps {steps} training steps; {again}"


def check(config: FinetuneConfig) -> None:
    """Reject impossible values before any work is done."""
    checkpoint_folder(config.model, "--model")
    existing = next(p for p in (Path(config.out), *Path(config.out).parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise FinetuneError(f"cannot write runs under {config.out}: {existing} is "
                            f"{'not a folder' if not existing.is_dir() else 'not writable'}; pass a writable --out")
    positive = {"evals": config.evals, "max_length": config.max_length, "epochs": config.epochs,
                "batch_size": config.batch_size, "lr": config.lr, "train_examples": config.train_examples,
                "dev_examples": config.dev_examples}
    bad = [k for k, v in positive.items() if v is not None and v <= 0]
    if bad:
        raise FinetuneError(f"{', '.join('--' + k.replace('_', '-') for k in bad)} must be positive")
    if config.stop_early:
        StopRule.parse(config.stop_early)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = FinetuneConfig(**vars(args))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        check(config)
        # warnings and the early warning print as lines above the progress bar
        with interrupt.stop_on_signals(), logging_redirect_tqdm(), warnings_as_log_lines():
            result = run(config, announce=True)
    except (FinetuneError, RecipeError, CheckpointError, records.RecordsError, TaskError, HardwareError,
            StopRuleError) as error:
        return fail(error)
    except KeyboardInterrupt as stop:
        print(f"interrupted by {interrupt.describe(stop)}: {kept(config)}", file=sys.stderr)
        return interrupt.exit_status(stop)
    if result.skipped:
        print(f"{result.run_dir}: already finished, skipping")
    elif result.stopped:
        print(f"{result.run_dir}: stopped early after {result.steps} steps ({result.stopped})")
    else:
        print(f"{result.run_dir}: dev {result.metric} {result.final_dev_metric:.4f} (majority "
              f"{result.majority:.4f}){' FAILED' if result.failed else ''}, {result.steps} steps, "
              f"{result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

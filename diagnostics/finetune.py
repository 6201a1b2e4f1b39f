"""Fine-tune one seed of one recipe on one task, recording everything the diagnostics need.

    python -m diagnostics.finetune --task wordnet-entail --recipe default --seed 3 --out runs/
    python -m diagnostics.finetune --task hedge --recipe zhang --seed 0 --out runs/ --lr 5e-4 --epochs 4

Writes ``OUT/<task>-<recipe>-s<seed>/``:

* ``step0/``: the model right after the seed's head initialisation (and Zhang's re-initialisation), before any
  update, with its tokenizer: the loss-surface diagnostic needs the pre-trained encoder plus this head;
* ``final/``: the fine-tuned model and tokenizer;
* ``run.h5``: the records (``probes.records``): series ``train`` (loss, lr per optimiser step) and ``eval``
  (dev metric and dev loss, ``--evals`` times evenly and at the end), and a summary (final dev metric, majority
  baseline, failed flag = final metric at or below the majority baseline, Dodge et al. 2020).

The seed sets the classifier (and pooler) initialisation, dropout and the data order. Re-running a finished run
prints "already finished, skipping" and exits 0 (seed sweeps rely on this); a folder holding an unfinished run, or
a finished one with other recipe settings, is refused: settings live in the records, not in the folder name, so
give each learning rate or recipe variant its own --out. Recipes are in ``diagnostics.recipes``; any recipe field can be overridden here.
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

import torch
from torch import nn
from tqdm import tqdm

from probes import records
from diagnostics.bert_adam import BertAdam
from diagnostics.embedded import DEFAULT_MODEL
from diagnostics.quiet import quiet_transformers
from diagnostics.recipes import RECIPES, Recipe, get_recipe
from diagnostics.tasks import Example, Task, TaskError, encode, load_task, majority_baseline, metric
from probes.model.layers import find_layers

REINIT_STD = 0.02  # Zhang et al.: N(0, 0.02) for re-initialised weights
EVAL_BATCH = 64
EARLY_WARNING_FRACTION = 0.15  # the early warning decides after this share of the steps

# Probes: called with (model, optimizer, writer) and entered before the records start, so it can declare its series
# and attach its hooks; exited (hooks removed) when training ends, before `final/` is saved.
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
    bf16: bool = True
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

    def resolved_recipe(self) -> Recipe:
        overrides = {f.name: getattr(self, f.name) for f in fields(Recipe) if hasattr(self, f.name)
                     and f.name != "name"}
        return get_recipe(self.recipe).replace(**overrides)

    def run_dir(self, task_name: str) -> Path:
        return Path(self.out) / f"{task_name}-{self.recipe}-s{self.seed}"


@dataclass(frozen=True)
class FinetuneResult:
    """What a run ended with (`skipped` when it had finished before)."""

    run_dir: Path
    skipped: bool
    final_dev_metric: float
    metric: str
    majority: float
    failed: bool
    steps: int
    seconds: float


# ---------------------------------------------------------------- model set-up


def load_model(path: Path, num_labels: int, seed: int):
    """The pre-trained encoder with a fresh classification head drawn from `seed`, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()  # "newly initialized weights" is exactly what we want here
    torch.manual_seed(seed)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
        return model, AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:  # what transformers raises for a folder it cannot load
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise FinetuneError(f"cannot load {path} ({reason}); pass --model a save_pretrained folder") from None


def reinit_(module: nn.Module) -> None:
    """Zhang et al.'s re-initialisation: Linear/Embedding weights N(0, 0.02), biases 0, LayerNorm 1 and 0."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            nn.init.normal_(sub.weight, 0.0, REINIT_STD)
        if isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
        if isinstance(getattr(sub, "bias", None), nn.Parameter):
            nn.init.zeros_(sub.bias)


def reinit_top(model: nn.Module, layers: int, pooler: bool) -> None:
    """Re-initialise the top `layers` encoder blocks and, if asked, the pooler."""
    layer_map = find_layers(model)
    if layers and layer_map.shared:
        raise FinetuneError("this model shares one block across depths (ALBERT): re-initialising its top blocks "
                            "would reset them all; use --reinit-layers 0")
    if layers > layer_map.depth:
        raise FinetuneError(f"cannot re-initialise {layers} blocks of a {layer_map.depth}-block model")
    for block in layer_map.blocks[layer_map.depth - layers:]:
        reinit_(block)
    if pooler and layer_map.pooler_prefix:
        reinit_(model.get_submodule(layer_map.pooler_prefix))


def parameter_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """BERT's groups: no weight decay on biases and LayerNorm weights; lr scaled by depth if layer-wise decay."""
    layer_map = find_layers(model)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        no_decay = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        depth = _depth(layer_map.group_of(name))
        scale = 1.0 if depth is None else recipe.layerwise_lr_decay ** (layer_map.depth + 1 - depth)
        key = (0.0 if no_decay else recipe.weight_decay, scale)
        groups.setdefault(key, []).append(param)
    return [{"params": params, "weight_decay": decay, "lr": recipe.lr * scale, "lr_scale": scale}
            for (decay, scale), params in groups.items()]


def _depth(group: str) -> int | None:
    """0 for the embeddings, d for encoder block d, None for the rest (head, pooler, ALBERT's shared block)."""
    if group == "embeddings":
        return 0
    suffix = group.removeprefix("encoder.")
    return int(suffix) if suffix.isdigit() else None


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """The lr multiplier: linear warm-up over `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


# ---------------------------------------------------------------- training and evaluation


def batches(examples: list[Example], size: int, generator: torch.Generator) -> Iterator[list[Example]]:
    """One epoch in a random order drawn from `generator` (the last batch may be smaller)."""
    order = torch.randperm(len(examples), generator=generator).tolist()
    for start in range(0, len(order), size):
        yield [examples[i] for i in order[start:start + size]]


@torch.inference_mode()
def evaluate(model: nn.Module, tokenizer, task: Task, max_length: int, bf16: bool) -> tuple[float, float]:
    """(dev metric, mean dev loss)."""
    model.eval()
    predictions, total_loss = [], 0.0
    for start in range(0, len(task.dev), EVAL_BATCH):
        batch = encode(task.dev[start:start + EVAL_BATCH], tokenizer, max_length)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(**batch)
        total_loss += float(out.loss) * len(batch["labels"])
        predictions += out.logits.argmax(-1).tolist()
    model.train()
    return metric(task.metric, predictions, [e.label for e in task.dev]), total_loss / len(task.dev)


def eval_steps(total: int, evals: int) -> set[int]:
    """`evals` optimiser steps spread evenly over the run, the last one included."""
    return {round(total * k / evals) for k in range(1, evals + 1)} | {total}


def total_steps(task: Task, recipe: Recipe) -> int:
    """Optimiser steps of a run: batches per epoch times epochs."""
    return -(-len(task.train) // recipe.batch_size) * recipe.epochs


def standard_probes(total: int) -> Probes:
    """What every run of this runner records: per-layer and per-matrix gradient norms and per-depth activation
    gradients at every step, the early-failure signals (prediction collapse, loss plateau, head-to-encoder ratio,
    Adam's second moment), and the early warning (the seed bank's predictor) over the first 15% of steps (runs of 30
    steps or more)."""
    import probes
    from probes import early_signals

    def attach(model: nn.Module, optimizer: torch.optim.Optimizer, writer: records.RunWriter):
        chosen = [probes.GradientNorms(), probes.ActivationGradients(), probes.PredictionCollapse(),
                  probes.LossPlateau(), probes.HeadEncoderRatio(), probes.AdamSecondMoment()]
        window_end = early_signals.window_end(total, EARLY_WARNING_FRACTION)
        if window_end >= 4:
            chosen.append(probes.EarlyWarning(window_end, total_steps=total))
        return probes.attach(model, optimizer, writer, probes=chosen, schedule=probes.Schedule(every=1))

    return attach


def subset(task: Task, train_examples: int | None, dev_examples: int | None) -> Task:
    """The task cut to its first examples (the splits are stored shuffled); the majority baseline follows the dev
    subset."""
    if train_examples is None and dev_examples is None:
        return task
    dev = task.dev[:dev_examples]
    return replace(task, train=task.train[:train_examples], dev=dev,
                   majority_baseline=majority_baseline(task.metric, dev))


def train(model, tokenizer, task: Task, recipe: Recipe, config: FinetuneConfig, run: records.RunWriter,
          probes: Probes | None = None) -> tuple[int, float, float]:
    """The training loop; appends `train` rows (at the 0-based step of each update) and `eval` rows (after that
    many updates); returns (optimiser steps, final dev metric, mean training loss of the last 10% of steps)."""
    optimizer = BertAdam(parameter_groups(model, recipe), lr=recipe.lr, betas=recipe.adam_betas,
                         eps=recipe.adam_eps, correct_bias=recipe.correct_bias)
    total = total_steps(task, recipe)
    if total == 0:
        raise FinetuneError(f"task {task.name} gives zero training steps; give it examples and --epochs >= 1")
    warmup = max(1, round(recipe.warmup_ratio * total))
    last_losses: list[float] = []
    scheduled = eval_steps(total, config.evals)
    generator = torch.Generator().manual_seed(config.seed)
    attached = probes(model, optimizer, run) if probes else contextlib.nullcontext()
    with attached, tqdm(total=total, desc=config.run_dir(task.name).name, disable=not sys.stderr.isatty()) as bar:
        run.start()
        step = 0
        model.train()
        for _ in range(recipe.epochs):
            for examples in batches(task.train, recipe.batch_size, generator):
                lr_scale = linear_schedule(step, total, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * group["lr_scale"] * lr_scale
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                    loss = model(**encode(examples, tokenizer, config.max_length)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                last_losses = (last_losses + [float(loss.detach())])[-max(1, total // 10):]
                run.append("train", step, [last_losses[-1], recipe.lr * lr_scale])
                step += 1
                if step in scheduled:
                    dev_metric, dev_loss = evaluate(model, tokenizer, task, config.max_length, config.bf16)
                    run.append("eval", step, [dev_metric, dev_loss])
                bar.update()
    return total, dev_metric, sum(last_losses) / len(last_losses)


# ---------------------------------------------------------------- the run and its folder


def finished_run(run_dir: Path) -> records.RunRecords | None:
    """The records of a finished run in `run_dir` (one with a summary), None if there is none."""
    path = run_dir / "run.h5"
    if not path.is_file():
        return None
    try:
        done = records.open_run(path)
    except (records.RecordsError, OSError):
        return None
    return done if "final_dev_metric" in done.summary else None


def skipped_result(run_dir: Path, done: records.RunRecords, recipe: Recipe) -> FinetuneResult:
    """The result of a finished run, if it was run with the same recipe settings (else a FinetuneError)."""
    before = done.meta.get("config", {}).get("resolved_recipe", {})
    changed = sorted(k for k, v in _plain(asdict(recipe)).items() if before.get(k) != v)
    if changed:
        raise FinetuneError(f"{run_dir} holds a finished run with other settings ({', '.join(changed)}); "
                            "pick another --out")
    summary = done.summary
    return FinetuneResult(run_dir, True, float(summary["final_dev_metric"]), str(summary["metric"]),
                          float(summary["majority"]), bool(summary["failed"]), int(summary["steps"]), 0.0)


def run(config: FinetuneConfig, probes: Probes | None = None) -> FinetuneResult:
    """Fine-tune one seed (or skip a finished run) and return how it ended; `probes` see the whole loop."""
    started = time.monotonic()
    task = subset(load_task(config.task), config.train_examples, config.dev_examples)
    recipe = config.resolved_recipe()
    run_dir = config.run_dir(task.name)
    done = finished_run(run_dir)
    if done is not None:
        return skipped_result(run_dir, done, recipe)
    if run_dir.exists():
        raise FinetuneError(f"{run_dir} holds an unfinished run; delete it or pick another --out")
    if config.threads:
        torch.set_num_threads(config.threads)
    model, tokenizer = load_model(Path(config.model), task.num_labels, config.seed)
    reinit_top(model, recipe.reinit_layers, recipe.reinit_pooler)
    run_dir.mkdir(parents=True)
    save(model, tokenizer, run_dir / "step0")
    meta = records.RunMeta(model=str(config.model), seed=config.seed, task=task.name, recipe=recipe.name,
                           config={**_plain(asdict(config)), "resolved_recipe": _plain(asdict(recipe))},
                           argv=list(sys.argv))
    with records.RunWriter.create(run_dir / "run.h5", meta, flush_every_steps=50, flush_every_seconds=30.0) as rw:
        rw.add_series("train", ["loss", "lr"], kind="scalars")
        rw.add_series("eval", [task.metric, "loss"], kind="scalars")
        if probes is None and config.probes:
            probes = standard_probes(total_steps(task, recipe))
        steps, final, final_loss = train(model, tokenizer, task, recipe, config, rw, probes)
    save(model, tokenizer, run_dir / "final")
    result = FinetuneResult(run_dir, False, float(final), task.metric, task.majority_baseline,
                            bool(final <= task.majority_baseline + 1e-9), steps, time.monotonic() - started)
    records.write_summary(run_dir / "run.h5", {
        "final_dev_metric": result.final_dev_metric, "metric": result.metric, "majority": result.majority,
        "failed": result.failed, "steps": steps, "final_train_loss": final_loss,
        "seconds": round(result.seconds, 1)})
    return result


def save(model: nn.Module, tokenizer, folder: Path) -> None:
    """`save_pretrained` the model and its tokenizer into `folder`."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _plain(values: dict) -> dict:
    """A config dict with paths as strings and tuples as lists (what the records' attributes hold)."""
    return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in values.items()}


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diagnostics.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="task name (see diagnostics.tasks.task_names) or folder")
    parser.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="runs go to OUT/<task>-<recipe>-s<seed>/")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="pre-trained checkpoint folder")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--evals", type=int, default=10, help="dev evaluations per run (the last at the end)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (1 for parallel seed sweeps)")
    parser.add_argument("--fp32", dest="bf16", action="store_false", help="no bf16 autocast (the default uses it)")
    parser.add_argument("--train-examples", type=int, help="use only the first N training examples")
    parser.add_argument("--dev-examples", type=int, help="use only the first N dev examples")
    parser.add_argument("--no-probes", dest="probes", action="store_false",
                        help="record only loss, lr and the dev metric (no gradient probes)")
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


def check(config: FinetuneConfig) -> None:
    """Reject impossible values before any work is done."""
    if not Path(config.model).is_dir():
        raise FinetuneError(f"model folder {config.model} not found; build it (data/README.md) or pass --model")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = FinetuneConfig(**vars(args))
    logging.basicConfig(level=logging.WARNING)
    try:
        check(config)
        result = run(config)
    except (FinetuneError, records.RecordsError, TaskError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if result.skipped:
        print(f"{result.run_dir}: already finished, skipping")
    else:
        print(f"{result.run_dir}: dev {result.metric} {result.final_dev_metric:.4f} (majority "
              f"{result.majority:.4f}){' FAILED' if result.failed else ''}, {result.steps} steps, "
              f"{result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

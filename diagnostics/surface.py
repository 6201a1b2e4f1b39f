"""Loss surfaces: training loss and accuracy on the line through two checkpoints or the plane through three.

    python -m diagnostics.surface --plane RUN_A/step0 RUN_A/final RUN_B/final --task wordnet-entail --out s.h5
    python -m diagnostics.surface --line RUN_A/final RUN_B/final --task wordnet-entail --json
    torchrun --nproc_per_node 2 -m diagnostics.surface --plane P F S --task wordnet-entail --out s.h5
    python -m diagnostics.surface --barriers RUN_A RUN_B RUN_C --task wordnet-entail --out s.h5

``--barriers`` computes the line between every pair of runs and its loss barrier (``diagnostics.barriers``).

The plane is theta_p + a (theta_f - theta_p) + b (theta_s - theta_p) (Mosbach et al. 2020, Fig. 7): P the
pre-trained model, F a failed and S a successful fine-tuning run; a and b span ``--range`` (default -1.5 .. 1.5)
in ``--grid`` points each, raw differences, neither normalised nor orthogonalised. A classifier's pre-trained point
needs a head: the fine-tuning runs of this toolkit save their step-0 checkpoint (the pre-trained encoder with the
seed's initial head) as ``<run>/step0/``, and that folder is P. The line is theta_a + a (theta_b - theta_a),
``--range`` -0.5 .. 1.5 by default. ``--random C`` is the plane of Li et al. (2018) around one checkpoint: two
Gaussian directions drawn from ``--seed``, each filter scaled to the norm of C's filter, biases and LayerNorm
left still (``--range`` -1 .. 1). Every checkpoint is a ``save_pretrained`` folder of a sequence classification
model, all of the same architecture and size; the tokenizer is read from the first folder that holds one.

Each point is the mean cross-entropy and the accuracy over the first ``--max-examples`` examples of the task's
``--split``, tokenised once. Under torchrun the points are shared out over the ranks and rank 0 writes them;
with ``--out`` each point is flushed to the records file as it arrives, and running the same command again
computes only the points still missing (after Ctrl-C or a kill). The model is moved in place and its weights are
restored exactly before the command returns.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from diagnostics import barriers, interrupt
from diagnostics.checkpoints import checkpoint_folder, load_tokenizer, same_architecture
from diagnostics.command import CommandParser, fail
from diagnostics.distributed import Ranks, map_sharded, process_group
from diagnostics.evaluation import Batch, check_sizes, evaluate, load_classifier, load_examples, prepare_batches
from diagnostics.hardware import DEVICES, PRECISIONS, Hardware, choose_hardware
from diagnostics.point_grid import FIELDS, open_grid
from diagnostics.quiet import quiet_transformers
from probes.model.interpolation import Subspace, SubspaceError, grid_axis, grid_indices
from probes.records import RecordsError, RunMeta, RunWriter
DEFAULT_RANGE = {"line": (-0.5, 1.5), "plane": (-1.5, 1.5), "random": (-1.0, 1.0)}
DEFAULT_GRID = {"line": 21, "plane": 13, "random": 13}
DEFAULT_LABELS = {"line": ["start", "end"], "plane": ["pre-trained", "failed", "successful"], "random": ["centre"]}


class SurfaceError(ValueError):
    """Input the command cannot use; the message is one line naming the problem and the fix."""


@dataclass
class SurfaceConfig:
    """Everything one surface run depends on (stored with the record)."""

    checkpoints: list[str]
    task: str
    split: str = "train"
    range: list[float] | None = None
    grid: int | None = None
    max_examples: int | None = 256
    batch_size: int = 32
    max_length: int = 128
    out: str | None = None
    name: str | None = None
    labels: list[str] | None = None
    device: str = "auto"
    precision: str = "fp32"  # the command's --precision defaults to auto: bf16 where native
    seed: int = 0

    @property
    def kind(self) -> str:
        return {1: "random", 2: "line", 3: "plane"}[len(self.checkpoints)]


@dataclass(frozen=True)
class Surface:
    """The grid: ``loss[i, j]`` and ``accuracy[i, j]`` at ``axes["a"][i]``, ``axes["b"][j]`` (a line has only a)."""

    name: str
    axes: dict[str, np.ndarray]
    loss: np.ndarray
    accuracy: np.ndarray
    attrs: dict[str, Any]
    computed: int = 0
    seconds: float = 0.0
    out: str | None = None

    def to_json(self) -> dict[str, Any]:
        plain = {axis: values.tolist() for axis, values in self.axes.items()}
        for name, values in (("loss", self.loss), ("accuracy", self.accuracy)):
            plain[name] = np.where(np.isnan(values), None, values).tolist()
        return {"name": self.name, **self.attrs, **plain, "computed": self.computed,
                "seconds": round(self.seconds, 3), "out": self.out}


# ----------------------------------------------------------------------------------------------- inputs


def load_subspace(folders: Sequence[str], labels: Sequence[str], device: torch.device,
                  seed: int = 0) -> tuple[nn.Module, Subspace]:
    """The first checkpoint as the model to move, and the line or plane through all of them (one checkpoint: the
    plane along two filter-normalised random directions drawn from ``seed``)."""
    for folder in folders:
        checkpoint_folder(folder, "checkpoint")
    same_architecture(list(zip(labels, map(Path, folders))))
    models = [load_classifier(folder) for folder in folders]
    if len(models) == 1:
        model = models[0].to(device)
        return model, Subspace.around(model, seed)
    models = [m.to(device) for m in models]
    try:
        space = Subspace.from_models(models, labels)
    except SubspaceError as error:
        raise SurfaceError(str(error)) from None
    return models[0], space


# ----------------------------------------------------------------------------------------------- the command


def resolve(config: SurfaceConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The grid's axes and the attributes that identify it (a resumed run must match them)."""
    kind = config.kind
    check_sizes(config.max_examples, config.batch_size, config.max_length)
    if config.split not in ("train", "dev"):
        raise SurfaceError(f"unknown split {config.split!r}; pass --split train or --split dev")
    lo, hi = config.range or DEFAULT_RANGE[kind]
    points = config.grid if config.grid is not None else DEFAULT_GRID[kind]
    try:
        axis = grid_axis(lo, hi, points)
    except ValueError as error:
        raise SurfaceError(str(error)) from None
    labels = list(config.labels or DEFAULT_LABELS[kind])
    if len(labels) != len(config.checkpoints):
        raise SurfaceError(f"--labels names {len(labels)} checkpoints but the {kind} has "
                           f"{len(config.checkpoints)}; give one label per checkpoint")
    attrs = {"kind": kind, "checkpoints": [str(Path(c).resolve()) for c in config.checkpoints], "labels": labels,
             "split": config.split, "max_examples": config.max_examples, "max_length": config.max_length,
             "range": [float(lo), float(hi)], "grid": int(points)}
    if kind == "random":
        attrs["seed"] = int(config.seed)
    return ({"a": axis} if kind == "line" else {"a": axis, "b": axis}), attrs


def missing_points(values: dict[str, np.ndarray]) -> list[tuple[int, ...]]:
    """The grid indices not filled in every field."""
    return [i for i in grid_indices(values["loss"].shape) if any(np.isnan(values[f][i]) for f in FIELDS)]


def run(config: SurfaceConfig, announce: bool = False) -> Surface | None:
    """Compute the missing points of the surface (all of them without ``--out``); returns it on rank 0. The device
    and precision are what ``config.device`` and ``config.precision`` choose (said on stderr with `announce`)."""
    axes, attrs = resolve(config)
    name = config.name or config.kind
    task_name, examples = load_examples(config.task, config.split, config.max_examples)
    attrs["task"] = task_name
    hardware = choose_hardware(config.device, config.precision)
    meta = RunMeta(model=config.checkpoints[0], task=task_name, recipe=f"surface-{config.kind}",
                   config={**asdict(config), "hardware": hardware.as_meta()})
    with process_group(prefer_cuda=hardware.device.type == "cuda") as ranks:
        model, space = load_subspace(config.checkpoints, attrs["labels"], ranks.device, config.seed)
        tokenizer = load_tokenizer([Path(c) for c in config.checkpoints], model.config.vocab_size)
        batches = prepare_batches(examples, tokenizer, model,
                                  max_length=config.max_length, batch_size=config.batch_size, device=ranks.device)
        with open_grid(ranks, config.out, name, axes, attrs, meta, missing_points) as (writer, values, missing):
            if announce and ranks.is_main:
                print(f"hardware: {hardware.describe()}", file=sys.stderr)
            started = time.perf_counter()
            computed = _fill(model, space, batches, axes, missing, values, writer, name, ranks, hardware)
    if not ranks.is_main:
        return None
    seconds = time.perf_counter() - started
    return Surface(name, axes, values["loss"], values["accuracy"], attrs, computed, seconds, config.out)


def _fill(model: nn.Module, space: Subspace, batches: list[Batch], axes: dict[str, np.ndarray],
          missing: list[tuple[int, ...]], values: dict[str, np.ndarray], writer: RunWriter | None, name: str,
          ranks: Ranks, hardware: Hardware | None = None) -> int:
    """Compute ``missing`` points over the ranks; rank 0 stores (and flushes) each one as it arrives."""
    axis_values = list(axes.values())
    total = values["loss"].size
    computed = 0
    with space.moving(model) as move_to, tqdm(total=total, initial=total - len(missing), unit="point",
                                               disable=not ranks.is_main, desc=f"surface {name}") as bar:
        def compute(index: tuple[int, ...]) -> tuple[float, float]:
            move_to([float(axis[i]) for axis, i in zip(axis_values, index)])
            return evaluate(model, batches, hardware)

        for index, (loss, accuracy) in map_sharded(missing, compute, ranks):
            values["loss"][index], values["accuracy"][index] = loss, accuracy
            if writer is not None:
                writer.write_point(name, index, {"loss": loss, "accuracy": accuracy})
            computed += 1
            bar.update()
    return computed


# ----------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m diagnostics.surface",
                           description="Loss and accuracy on the line or plane through fine-tuning checkpoints, "
                                       "or the loss barriers between every pair of runs.")
    through = parser.add_mutually_exclusive_group(required=True)
    through.add_argument("--line", nargs=2, metavar=("A", "B"), help="two checkpoint folders")
    through.add_argument("--plane", nargs=3, metavar=("P", "F", "S"),
                         help="pre-trained (a run's step0/), failed and successful checkpoint folders")
    through.add_argument("--random", nargs=1, metavar="C",
                         help="one checkpoint folder: the plane along two filter-normalised random directions")
    through.add_argument("--barriers", nargs="+", metavar="RUN",
                         help="run folders (or checkpoints): the line between every pair and its loss barrier")
    parser.add_argument("--task", required=True, help="task name (data/tasks) or task folder")
    parser.add_argument("--split", choices=("train", "dev"), default="train")
    parser.add_argument("--range", nargs=2, type=float, metavar=("LO", "HI"),
                        help="axis range (default -0.5 1.5 line, -1.5 1.5 plane, -1 1 random)")
    parser.add_argument("--grid", type=int,
                        help="points per axis, LO and HI included (default 21 line, 13 plane and random, "
                             "5 per line for --barriers)")
    parser.add_argument("--max-examples", type=int, default=256, help="first N examples of the split (default 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128, help="truncate examples to this many tokens")
    parser.add_argument("--out", help="records file (.h5) to write to, or to resume")
    parser.add_argument("--name", help="grid name in the records file (default: line, plane, random or barriers)")
    parser.add_argument("--labels", nargs="+", help="one label per checkpoint (default: pre-trained failed successful)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --random directions (default 0)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA if torch sees a GPU")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast where the hardware has native bf16, else fp32")
    parser.add_argument("--json", action="store_true", help="print the grid as JSON on stdout")
    return parser


def config_from_args(args: argparse.Namespace) -> SurfaceConfig:
    return SurfaceConfig(checkpoints=list(args.plane or args.line or args.random), task=args.task, split=args.split,
                         range=list(args.range) if args.range else None, grid=args.grid,
                         max_examples=args.max_examples, batch_size=args.batch_size, max_length=args.max_length,
                         out=args.out, name=args.name, labels=args.labels, device=args.device,
                         precision=args.precision, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = os.environ.get("RANK", "0") != "0"
    quiet_transformers()
    try:
        with interrupt.stop_on_signals():
            surface = run_barriers(args) if args.barriers else run(config_from_args(args), announce=True)
    except (SurfaceError, RecordsError, ValueError) as error:
        return 1 if quiet else fail(error)
    except KeyboardInterrupt as stop:
        if not quiet:
            saved = f" in {args.out}" if args.out else " (none: no --out)"
            print(f"interrupted by {interrupt.describe(stop)}; every finished point is saved{saved}, run the same "
                  "command to resume", file=sys.stderr)
        return interrupt.exit_status(stop)
    if surface is None:
        return 0
    if args.json:
        print(json.dumps(surface.to_json()))
    else:
        print(surface.table() if args.barriers else _table(surface))
    return 0


def run_barriers(args: argparse.Namespace) -> barriers.Barriers | None:
    """``--barriers``: the loss-barrier matrix of ``diagnostics.barriers`` (no --range, --labels or --seed)."""
    for flag, value in (("--range", args.range), ("--labels", args.labels), ("--seed", args.seed or None)):
        if value is not None:
            raise SurfaceError(f"{flag} does not apply to --barriers (each line runs from one run, a=0, to the "
                               "other, a=1); leave it out")
    return barriers.run(barriers.BarriersConfig(
        runs=list(args.barriers), task=args.task, split=args.split,
        grid=barriers.DEFAULT_GRID if args.grid is None else args.grid, max_examples=args.max_examples,
        batch_size=args.batch_size, max_length=args.max_length, out=args.out, name=args.name or barriers.SPEC.name,
        device=args.device))


def _table(surface: Surface) -> str:
    """The loss grid as text: one row per a (and one column per b for a plane)."""
    a = surface.axes["a"]
    lines = [f"{surface.attrs['kind']} {surface.name}: loss (accuracy) on {surface.attrs['task']} "
             f"{surface.attrs['split']}" + (f", stored in {surface.out}" if surface.out else "")]
    if "b" in surface.axes:
        lines.append("a \\ b " + " ".join(f"{b:>7.2f}" for b in surface.axes["b"]))
        for i, value in enumerate(a):
            lines.append(f"{value:>5.2f} " + " ".join(f"{x:>7.4f}" for x in surface.loss[i]))
    else:
        lines += [f"a={value:>6.2f}  loss {surface.loss[i]:.4f}  accuracy {surface.accuracy[i]:.3f}"
                  for i, value in enumerate(a)]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

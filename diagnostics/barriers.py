"""Loss barriers between every pair of fine-tuned runs: are the seeds one solution or several?

    python -m diagnostics.surface --barriers runs/hedge-mosbach-s0 runs/hedge-mosbach-s1 runs/hedge-mosbach-s2 \
        --task hedge --out runs/barriers.h5
    torchrun --nproc_per_node 2 -m diagnostics.surface --barriers RUN... --task hedge --out runs/barriers.h5

For every pair of runs (i, j) the training loss and accuracy along the straight line (1 - a) theta_i + a theta_j
at ``--grid`` points a from 0 to 1, and the barrier height: the highest loss on the line minus the mean of its two
ends (``probes.model.barriers``). Seeds in one basin are linearly connected (barrier near 0); seeds in different
basins have a ridge between them (Juneja et al. 2022). A RUN is a fine-tuning run folder (its ``final/`` is used,
its ``run.h5`` says whether it failed and its dev metric) or a checkpoint folder.

Each run's own loss is computed once and shared by every line it ends; the points inside the lines are dealt out
over the torchrun ranks like the plane's. With ``--out`` the grid ``surfaces/<name>`` (axes ``first``,
``second``, ``a``; fields ``loss``, ``accuracy``; ``loss[i, j]`` the line from run i to run j, ``loss[j, i]`` the
same line backwards, ``loss[i, i]`` run i's constant line) is flushed point by point, and the same command run
again computes only what is missing. The cost (evaluations and forward passes) is printed before the first
point, and the minutes it will take once the first point is timed.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from diagnostics.checkpoints import load_tokenizer
from diagnostics.distributed import map_sharded, process_group
from diagnostics.evaluation import (EvaluationError, check_sizes, evaluate, load_classifier, load_examples,
                                    prepare_batches)
from diagnostics.point_grid import FIELDS, open_grid
from probes import catalogue
from probes.model.barriers import barrier_matrix
from probes.model.interpolation import Subspace, SubspaceError, floating_parameters, grid_axis
from probes.records import RecordsError, RunMeta, RunWriter, open_run

DEFAULT_GRID = 5
SPEC = catalogue.SURFACE_BARRIERS  # the grid surfaces/<name>: axes first, second, a; fields loss, accuracy

Item = tuple[int, ...]  # (r,) the loss of run r itself; (i, j, k) point k inside the line from run i to run j


@dataclass
class BarriersConfig:
    """Everything a barrier matrix depends on (stored with the record)."""

    runs: list[str]
    task: str
    split: str = "train"
    grid: int = DEFAULT_GRID
    max_examples: int | None = 256
    batch_size: int = 32
    max_length: int = 128
    out: str | None = None
    name: str = SPEC.name
    device: str = "auto"


@dataclass(frozen=True)
class RunPoint:
    """One run of the matrix: its label, checkpoint folder and, from its records, how it ended."""

    label: str
    checkpoint: str
    failed: bool | None
    dev_metric: float | None
    metric: str | None


@dataclass(frozen=True)
class Barriers:
    """``loss[i, j, k]`` and ``accuracy[i, j, k]`` at ``a[k]`` on the line from run i to run j."""

    name: str
    labels: list[str]
    a: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    attrs: dict[str, Any]
    computed: int = 0
    seconds: float = 0.0
    out: str | None = None

    @property
    def loss_barriers(self) -> np.ndarray:
        return barrier_matrix(self.loss)

    @property
    def accuracy_barriers(self) -> np.ndarray:
        return barrier_matrix(self.accuracy, higher_is_worse=False)

    def to_json(self) -> dict[str, Any]:
        def plain(values: np.ndarray) -> list:
            return np.where(np.isnan(values), None, values).tolist()

        return {"name": self.name, **self.attrs, "a": self.a.tolist(), "loss": plain(self.loss),
                "accuracy": plain(self.accuracy), "loss_barrier": plain(self.loss_barriers),
                "accuracy_barrier": plain(self.accuracy_barriers), "computed": self.computed,
                "seconds": round(self.seconds, 3), "out": self.out}

    def table(self) -> str:
        """The loss-barrier matrix as text, with each run's own loss and dev metric."""
        return table(self)


# ----------------------------------------------------------------------------------------------- inputs


def run_point(given: str) -> RunPoint:
    """A run folder (``final/`` inside) or a checkpoint folder, with the verdict of the run that made it."""
    path = Path(given)
    if (path / "final" / "config.json").is_file():
        checkpoint, records, label = path / "final", path / "run.h5", path.name
    else:
        checkpoint, records = path, path.parent / "run.h5"
        label = path.parent.name if path.name == "final" else path.name
    summary: dict[str, Any] = {}
    if records.is_file():
        try:
            summary = open_run(records).summary
        except RecordsError:
            pass
    failed = bool(summary["failed"]) if "failed" in summary else None
    dev_metric = float(summary["final_dev_metric"]) if "final_dev_metric" in summary else None
    return RunPoint(label, str(checkpoint.resolve()), failed, dev_metric, summary.get("metric"))


def resolve(config: BarriersConfig) -> tuple[list[RunPoint], np.ndarray, dict[str, Any]]:
    """The runs, the line's axis and the attributes that identify the grid (a resumed run must match them)."""
    if len(config.runs) < 2:
        raise EvaluationError(f"--barriers needs at least two runs, got {len(config.runs)}; "
                              "pass two or more run folders")
    if config.grid < 3:
        raise EvaluationError(f"--grid {config.grid} leaves no point between the two ends of a line; "
                              "pass --grid 3 or more")
    check_sizes(config.max_examples, config.batch_size, config.max_length)
    runs = [run_point(given) for given in config.runs]
    seen: dict[str, str] = {}
    for given, run in zip(config.runs, runs):
        if run.checkpoint in seen:
            raise EvaluationError(f"{given} and {seen[run.checkpoint]} are the same checkpoint; pass each run once")
        seen[run.checkpoint] = given
    metric_names = {r.metric for r in runs if r.metric is not None}
    attrs = {"kind": SPEC.name, "checkpoints": [r.checkpoint for r in runs], "labels": [r.label for r in runs],
             "failed": [r.failed for r in runs], "dev_metric": [r.dev_metric for r in runs],
             "metric": metric_names.pop() if len(metric_names) == 1 else None, "split": config.split,
             "max_examples": config.max_examples, "max_length": config.max_length, "range": [0.0, 1.0],
             "grid": int(config.grid)}
    return runs, grid_axis(0.0, 1.0, config.grid), attrs


def load_space(checkpoints: Sequence[str], labels: Sequence[str],
               device: torch.device) -> tuple[torch.nn.Module, Subspace]:
    """The first checkpoint as the model to move, and every checkpoint's floating parameters as anchors."""
    models = [load_classifier(folder) for folder in checkpoints]
    types = [m.config.model_type for m in models]
    for label, kind in zip(labels[1:], types[1:]):
        if kind != types[0]:
            raise EvaluationError(f"{labels[0]} is a {types[0]} model but {label} is a {kind} model; "
                                  "pass runs of the same architecture")
    try:
        space = Subspace.from_models([m.to(device) for m in models], labels)
    except SubspaceError as error:
        raise EvaluationError(str(error)) from None
    return models[0], space


# ----------------------------------------------------------------------------------------------- the work


def work_items(runs: int, points: int) -> list[Item]:
    """Every evaluation of the matrix: each run once, then the inner points of each pair's line (i < j)."""
    ends: list[Item] = [(r,) for r in range(runs)]
    inner: list[Item] = [(i, j, k) for i in range(runs) for j in range(i + 1, runs) for k in range(1, points - 1)]
    return ends + inner


def cells(item: Item, runs: int, points: int) -> list[tuple[int, int, int]]:
    """The grid cells an item's value fills; the last one marks the item done (written last, read to resume)."""
    if len(item) == 1:
        (r,) = item
        ends = [(r, j, 0) for j in range(runs) if j != r] + [(i, r, points - 1) for i in range(runs) if i != r]
        return ends + [(r, r, k) for k in range(points - 1, -1, -1)]
    i, j, k = item
    return [(j, i, points - 1 - k), (i, j, k)]


def missing_items(values: dict[str, np.ndarray], points: int) -> list[Item]:
    """The items whose marking cell is not filled in every field."""
    runs = values["loss"].shape[0]
    return [item for item in work_items(runs, points)
            if any(np.isnan(values[f][cells(item, runs, points)[-1]]) for f in FIELDS)]


def run(config: BarriersConfig) -> Barriers | None:
    """Compute the missing points of the barrier matrix; returns it on rank 0 (None on the other ranks)."""
    runs, a, attrs = resolve(config)
    task_name, examples = load_examples(config.task, config.split, config.max_examples)
    attrs["task"] = task_name
    labels = [r.label for r in runs]
    count = len(runs)
    first, second, along = SPEC.axes
    axes = {first: np.arange(count, dtype="f8"), second: np.arange(count, dtype="f8"), along: a}
    meta = RunMeta(model=attrs["checkpoints"][0], task=task_name, recipe="surface-barriers", config=asdict(config))
    with process_group(prefer_cuda=config.device != "cpu") as ranks:
        if config.device == "cuda" and ranks.device.type != "cuda":
            raise EvaluationError("--device cuda but torch sees no GPU; pass --device cpu")
        model, space = load_space([r.checkpoint for r in runs], labels, ranks.device)
        batches = prepare_batches(examples, load_tokenizer([r.checkpoint for r in runs]), model,
                                  max_length=config.max_length, batch_size=config.batch_size, device=ranks.device)
        with open_grid(ranks, config.out, config.name, axes, attrs, meta,
                       lambda values: missing_items(values, len(a))) as (writer, values, missing):
            if ranks.is_main:
                print(cost_line(count, len(a), len(missing), len(batches), len(examples), ranks.world),
                      file=sys.stderr)
            started = time.perf_counter()
            computed = _fill(model, space, batches, a, missing, values, writer, config.name, ranks)
    if not ranks.is_main:
        return None
    return Barriers(config.name, labels, a, values["loss"], values["accuracy"], attrs, computed,
                    time.perf_counter() - started, config.out)


def cost_line(runs: int, points: int, todo: int, batches: int, examples: int, world: int) -> str:
    """What the matrix costs: evaluations (each a pass over the examples) and forward passes."""
    total = len(work_items(runs, points))
    pairs = runs * (runs - 1) // 2
    return (f"barriers: {runs} runs, {pairs} pairs, {points} points a line: {todo} of {total} evaluations to do, "
            f"each {batches} forward passes over {examples} examples ({todo * batches} in all, on {world} "
            f"rank{'s' if world > 1 else ''})")


def _fill(model: torch.nn.Module, space: Subspace, batches: list, a: np.ndarray, missing: list[Item],
          values: dict[str, np.ndarray], writer: RunWriter | None, name: str, ranks) -> int:
    """Compute ``missing`` over the ranks; rank 0 stores (and flushes) each item's cells as it arrives, and
    prints the estimated time after the first one."""
    count, points = values["loss"].shape[0], len(a)
    total = len(work_items(count, points))
    own = floating_parameters(model)
    params = [own[n] for n in space.names]
    computed, started = 0, time.perf_counter()

    def compute(item: Item) -> tuple[float, float]:
        i, j, k = (item[0], item[0], 0) if len(item) == 1 else item
        Subspace(space.names, [space.anchors[i], space.anchors[j]]).move(params, (float(a[k]),))
        return evaluate(model, batches)

    with space.moving(model), tqdm(total=total, initial=total - len(missing), unit="point",
                                   disable=not ranks.is_main, desc=f"barriers {name}") as bar:
        for item, (loss, accuracy) in map_sharded(missing, compute, ranks):
            for cell in cells(item, count, points):
                values["loss"][cell], values["accuracy"][cell] = loss, accuracy
                if writer is not None:
                    writer.write_point(name, cell, {"loss": loss, "accuracy": accuracy})
            computed += 1
            if computed == 1:
                seconds = time.perf_counter() - started
                rounds = -(-len(missing) // ranks.world)
                bar.write(f"barriers: the first point took {seconds:.1f} s: about {rounds * seconds / 60:.1f} "
                          "minutes in all", file=sys.stderr)
            bar.update()
    return computed


def table(barriers: Barriers) -> str:
    """The loss-barrier matrix as text, with each run's own loss and dev metric."""
    width = max(8, *(len(label) for label in barriers.labels))
    matrix = barriers.loss_barriers
    metric = barriers.attrs.get("metric") or "dev"
    lines = [f"loss barriers on {barriers.attrs['task']} {barriers.attrs['split']} ({len(barriers.a)} points a line)"
             + (f", stored in {barriers.out}" if barriers.out else ""),
             " " * width + " " + " ".join(f"{k:>7d}" for k in range(len(barriers.labels)))
             + f"  {'own loss':>8} {metric:>8}"]
    for i, label in enumerate(barriers.labels):
        dev = barriers.attrs["dev_metric"][i]
        failed = " FAILED" if barriers.attrs["failed"][i] else ""
        lines.append(f"{label:>{width}} " + " ".join(f"{x:>7.4f}" for x in matrix[i])
                     + f"  {barriers.loss[i, i, 0]:>8.4f} {'-' if dev is None else f'{dev:.4f}':>8}{failed}")
    lines.append("columns follow the rows' order; barrier = highest loss on the line minus the mean of its ends")
    lines.append(summary(barriers))
    return "\n".join(lines)


def summary(barriers: Barriers) -> str:
    """One line: the pairwise barriers against the runs' own losses, and whether the pairs far apart in loss
    are also far apart in dev metric (Spearman over pairs)."""
    from scipy.stats import spearmanr

    count = len(barriers.labels)
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    heights = np.array([barriers.loss_barriers[i, j] for i, j in pairs])
    own = np.diag(barriers.loss[:, :, 0])
    text = (f"over {len(pairs)} pairs: barrier mean {np.nanmean(heights):.4f}, max {np.nanmax(heights):.4f}; "
            f"the runs' own losses {own.min():.4f} .. {own.max():.4f}")
    dev = barriers.attrs["dev_metric"]
    known = [(h, abs(dev[i] - dev[j])) for h, (i, j) in zip(heights, pairs)
             if dev[i] is not None and dev[j] is not None and np.isfinite(h)]
    if len(known) >= 3 and np.ptp([d for _, d in known]) > 0 and np.ptp([h for h, _ in known]) > 0:
        rho, p_value = spearmanr(*zip(*known))
        text += (f"; Spearman correlation of barrier and dev-metric difference over pairs: {rho:.2f} "
                 f"(p = {p_value:.2g})")
    return text

"""Build the seed bank: many small fine-tuning runs of the embedded default whose outcomes train and test the
early-failure predictor (README "Verdicts").

    python -m diagnostics.seed_bank --out runs/bank --workers 1              # build or continue the bank
    python -m diagnostics.seed_bank --out runs/bank --features data/seed_bank/features.csv
    python -m diagnostics.seed_bank --benchmark data/seed_bank/features.csv  # held-out precision/recall/AUC
    python -m diagnostics.seed_bank --fit data/seed_bank/features.csv        # the predictor the probe ships

The grid: every task x learning rate (``--lrs``) with ``--seeds`` seeds for the ``default`` recipe (AdamW without
bias correction), and every task x ``--corrected-lrs`` with ``--corrected-seeds`` seeds for the bias-corrected
``mosbach`` recipe, run at the default's number of epochs so both see the same steps. Runs are small (``--train-examples``, ``--max-length``, ``--evals``) so ~100 fit
in two hours of one core. Runs go to ``OUT/lr<LR>/<task>-<recipe>-s<seed>/`` in seed order (seed 0 of every cell
first), so a bank stopped early is still balanced. Re-running the same command skips finished runs and redoes an
interrupted one (its folder is kept as ``<run>.interrupted-N``); Ctrl-C or SIGTERM stops cleanly. ``--features`` writes the
compact per-run features and outcomes (:mod:`diagnostics.early_features`) with a provenance JSON beside them.

``--engine ray|slurm`` builds the bank on a cluster (docs/many-machines.md). ``--stop-early dodge|predictor``
stops doomed seeds early and writes ``OUT/stop-early.md``: the compute saved and, given ``--against`` a bank of
the same grid run to the end, the good runs lost. Stopped runs have no outcome, so ``--features`` leaves them out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from diagnostics import engines, interrupt
from diagnostics.command import CommandParser, fail
from diagnostics.finetune import FinetuneConfig, FinetuneError, FinetuneResult, finished_run, planned_steps
from diagnostics.stop_early import StopRule
from diagnostics.stop_early_report import savings
from probes import records
from probes.early_benchmark import FRACTIONS
from probes.early_signals import FEATURES
from probes.predictor import MODEL_FILE, Predictor


@dataclass
class BankConfig:
    """The grid and the size of each run."""

    out: Path
    tasks: list[str] = field(default_factory=lambda: ["hedge", "polarity"])
    lrs: list[float] = field(default_factory=lambda: [1e-4, 2e-4, 3e-4])
    corrected_lrs: list[float] = field(default_factory=lambda: [2e-4])
    seeds: int = 20
    corrected_seeds: int = 10
    workers: int = 1
    epochs: int = 3
    max_length: int = 32
    train_examples: int = 320
    dev_examples: int = 200
    evals: int = 2
    engine: engines.Engine = field(default_factory=engines.Engine)  # its workers: ``workers``
    stop_early: str | None = None  # a rule of diagnostics.stop_early; None runs every seed to the end

    def runs(self) -> list[FinetuneConfig]:
        """Every run of the bank in the order they are built: seed by seed, the default cells of a seed followed
        by its bias-corrected ones, so a bank stopped early is still balanced."""
        keyed = [(seed, "default") for seed in range(self.seeds)]
        keyed += [(seed, "mosbach") for seed in range(self.corrected_seeds)]
        chosen = []
        for seed, recipe in sorted(keyed):
            chosen += [FinetuneConfig(
                task=task, recipe=recipe, seed=seed, out=Path(self.out) / f"lr{lr:g}", lr=lr, epochs=self.epochs,
                max_length=self.max_length, train_examples=self.train_examples, dev_examples=self.dev_examples,
                evals=self.evals, threads=1, precision="fp32", stop_early=self.stop_early)
                for lr in (self.lrs if recipe == "default" else self.corrected_lrs) for task in self.tasks]
        return chosen


def build(config: BankConfig) -> int | None:
    """Run every unfinished run of the bank on its engine, ``workers`` at a time, with one progress bar over the
    optimiser steps of those runs; returns how many were run now (None: submitted without waiting)."""
    todo = [one for one in config.runs() if finished_run(one.run_dir(one.task)) is None]
    with tqdm(total=sum(planned_steps(todo).values()), desc="seed bank", unit="step", smoothing=0.05) as bar:
        def report(result: FinetuneResult) -> None:
            verdict = f"stopped early ({result.stopped})" if result.stopped else "FAILED" if result.failed else "ok"
            bar.write(f"{result.run_dir.parent.name}/{result.run_dir.name}: {result.metric} "
                      f"{result.final_dev_metric:.3f} {verdict}, {result.seconds:.0f} s")

        done = engines.finetune_all(todo, replace(config.engine, workers=config.workers), report, bar.update)
    return None if done is None else len(done)


def stop_report(config: BankConfig, against: Path | None) -> str:
    """``OUT/stop-early.md``: what ``--stop-early`` saved on the bank and, ``against`` a bank of the same grid run
    to the end, the good runs it lost; returns its table."""
    if against is not None and not against.is_dir():
        raise FinetuneError(f"--against {against} is not a folder; pass a bank of the same grid run to the end")
    table = savings(config.out, against).markdown()
    (config.out / "stop-early.md").write_text(
        f"# Stopping doomed seeds early\n\n`--stop-early {StopRule.parse(config.stop_early)}` on the bank in "
        f"{config.out}" + (f", against {against} run to the end" if against else "") + f".\n\n{table}")
    return table


def provenance(config: BankConfig) -> dict:
    """What a committed feature table needs to be rebuilt: commit, hardware, the grid and the command."""
    import torch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    return {"commit": commit, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu,
            "cores": os.cpu_count(),
            "torch": torch.__version__, "config": {k: str(v) if isinstance(v, Path) else v
                                                   for k, v in asdict(config).items()},
            "argv": sys.argv}


def from_table(path: Path, fit: bool) -> int:
    """Print the benchmark of a features CSV, or fit and save the shipped predictor from it."""
    from diagnostics.early_features import read_table
    from diagnostics.early_warning_report import from_rows

    if not path.is_file():
        raise FinetuneError(f"{path} not found; write it with --out RUNS --features {path}")
    rows = read_table(path)
    if not fit:
        print(from_rows(rows).markdown(), end="")
        return 0
    models = {}
    for fraction in FRACTIONS:
        at = [row for row in rows if row["fraction"] == fraction]
        x = np.array([[row[name] for name in FEATURES] for row in at], dtype="f8")
        failed = np.array([row["failed"] for row in at], dtype=bool)
        models[f"{fraction:g}"] = asdict(Predictor.fit(x, failed, FEATURES, fraction=fraction))
    source = {"table": str(path), "runs": len({row["run"] for row in rows}),
              "failed": len({row["run"] for row in rows if row["failed"]})}
    MODEL_FILE.write_text(json.dumps({"fitted_on": source, "models": models}, indent=1) + "\n")
    print(f"{MODEL_FILE}: {len(models)} models fitted on {source['runs']} runs ({source['failed']} failed)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m diagnostics.seed_bank", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="runs go to OUT/lr<LR>/<task>-<recipe>-s<seed>/")
    parser.add_argument("--tasks", default="hedge,polarity", help="comma-separated task names")
    parser.add_argument("--lrs", default="1e-4,2e-4,3e-4", help="learning rates of the default recipe")
    parser.add_argument("--corrected-lrs", default="2e-4", help="learning rates of the bias-corrected recipe")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per cell of the default recipe")
    parser.add_argument("--corrected-seeds", type=int, default=10, help="seeds per cell of the bias-corrected one")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (one thread each)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every run")
    parser.add_argument("--train-examples", type=int, default=320, help="the first N training examples of each task")
    parser.add_argument("--stop-early", metavar="RULE",
                        help="dodge or predictor: stop doomed seeds early; writes OUT/stop-early.md")
    parser.add_argument("--against", type=Path, metavar="BANK",
                        help="with --stop-early: a bank of the same grid run to the end, to count the good runs lost")
    parser.add_argument("--features", type=Path, help="write the per-run features to this CSV instead of building")
    parser.add_argument("--benchmark", type=Path, metavar="CSV",
                        help="print the held-out benchmark of a features CSV (what report --early prints for runs)")
    parser.add_argument("--fit", type=Path, metavar="CSV",
                        help="fit the predictor on every run of a features CSV, one model per fraction, into "
                             "probes/early_warning_model.json (what EarlyWarning and diagnose use)")
    engines.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        lrs = [float(value) for value in args.lrs.split(",")]
        corrected_lrs = [float(value) for value in args.corrected_lrs.split(",")]
    except ValueError:
        print("error: --lrs and --corrected-lrs must be comma-separated numbers, e.g. 2e-4,3e-4", file=sys.stderr)
        return 1
    if args.out is None and not (args.benchmark or args.fit):
        print("error: pass --out RUNS (or --benchmark/--fit CSV)", file=sys.stderr)
        return 1
    if args.workers < 1 or args.seeds < 1 or args.corrected_seeds < 0 or args.epochs < 1 or args.train_examples < 1:
        print("error: --workers, --seeds, --epochs and --train-examples must be >= 1, --corrected-seeds >= 0",
              file=sys.stderr)
        return 1
    try:
        config = BankConfig(out=args.out, tasks=args.tasks.split(","), lrs=lrs, corrected_lrs=corrected_lrs,
                            seeds=args.seeds, corrected_seeds=args.corrected_seeds, workers=args.workers,
                            epochs=args.epochs, train_examples=args.train_examples, engine=engines.from_args(args),
                            stop_early=args.stop_early)
        if args.stop_early:
            StopRule.parse(args.stop_early)
        elif args.against:
            raise FinetuneError("--against compares a bank built with --stop-early: add --stop-early RULE")
        if args.benchmark or args.fit:
            return from_table(args.benchmark or args.fit, fit=bool(args.fit))
        if args.features:
            from diagnostics.early_features import write_table

            rows = write_table(config.out, args.features)
            args.features.with_suffix(".provenance.json").write_text(json.dumps(provenance(config), indent=1))
            print(f"{args.features}: {rows} runs")
            return 0
        engines.check(config.engine, config.out)
        with interrupt.stop_on_signals():
            done = build(config)
        if done is None:
            return 0
        print(f"{done} runs done; the bank is in {config.out}")
        if config.stop_early:
            print(stop_report(config, args.against), end="")
    except (ValueError, records.RecordsError) as error:
        return fail(error)
    except KeyboardInterrupt as stop:
        print(f"interrupted by {interrupt.describe(stop)}: finished runs are kept; run the same command to go on",
              file=sys.stderr)
        return interrupt.exit_status(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

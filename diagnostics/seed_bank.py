"""Build the seed bank: many small fine-tuning runs of the embedded default whose outcomes train and test the
early-failure predictor (docs/verdicts.md).

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
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from diagnostics import interrupt
from diagnostics.command import CommandParser, fail, summary
from diagnostics.finetune import FinetuneConfig, FinetuneError, FinetuneResult, finished_run
from diagnostics.worker_pool import finetune_in_workers, set_aside_unfinished
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
    evals: int = 20  # a dev evaluation every 5% of the steps: Dodge et al.'s rule reads the one at each fraction

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
                evals=self.evals, threads=1, precision="fp32", interpolations=0)
                for lr in (self.lrs if recipe == "default" else self.corrected_lrs) for task in self.tasks]
        return chosen


def build(config: BankConfig) -> int:
    """Run every unfinished run of the bank, ``workers`` at a time; returns how many were run now."""
    todo = [one for one in config.runs() if finished_run(one.run_dir(one.task)) is None]
    for one in todo:
        set_aside_unfinished(one)
    with tqdm(total=len(todo), desc="seed bank", unit="run") as bar:
        def report(result: FinetuneResult) -> None:
            bar.write(f"{result.run_dir.parent.name}/{result.run_dir.name}: {result.metric} "
                      f"{result.final_dev_metric:.3f} {'FAILED' if result.failed else 'ok'}, {result.seconds:.0f} s")
            bar.update()

        return len(finetune_in_workers(todo, config.workers, report))


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
    from diagnostics.early_warning_report import protocol_markdown
    from probes.early_protocol import evaluate

    if not path.is_file():
        raise FinetuneError(f"{path} not found; write it with --out RUNS --features {path}")
    rows = read_table(path)
    if not fit:
        print(protocol_markdown(evaluate(rows, FRACTIONS)), end="")
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
    parser = CommandParser(prog="python -m diagnostics.seed_bank", description=summary(__doc__))
    parser.add_argument("--out", type=Path, help="runs go to OUT/lr<LR>/<task>-<recipe>-s<seed>/")
    parser.add_argument("--tasks", default="hedge,polarity", help="comma-separated task names")
    parser.add_argument("--lrs", default="1e-4,2e-4,3e-4", help="learning rates of the default recipe")
    parser.add_argument("--corrected-lrs", default="2e-4", help="learning rates of the bias-corrected recipe")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per cell of the default recipe")
    parser.add_argument("--corrected-seeds", type=int, default=10, help="seeds per cell of the bias-corrected one")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (one thread each)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every run (steps = epochs x examples / 16)")
    parser.add_argument("--train-examples", type=int, default=320, help="training examples of every run")
    parser.add_argument("--evals", type=int, default=20, help="dev evaluations per run, evenly spaced")
    parser.add_argument("--features", type=Path, help="write the per-run features to this CSV instead of building")
    parser.add_argument("--benchmark", type=Path, metavar="CSV",
                        help="print the held-out benchmark of a features CSV (what report --early prints for runs)")
    parser.add_argument("--fit", type=Path, metavar="CSV",
                        help="fit the predictor on every run of a features CSV, one model per fraction, into "
                             "probes/early_warning_model.json (what EarlyWarning and diagnose use)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        lrs = [float(value) for value in args.lrs.split(",")]
        corrected_lrs = [float(value) for value in args.corrected_lrs.split(",")]
    except ValueError:
        return fail(ValueError("--lrs and --corrected-lrs must be comma-separated numbers, e.g. 2e-4,3e-4"))
    if args.out is None and not (args.benchmark or args.fit):
        return fail(ValueError("pass --out RUNS (or --benchmark/--fit CSV)"))
    config = BankConfig(out=args.out, tasks=args.tasks.split(","), lrs=lrs, corrected_lrs=corrected_lrs, seeds=args.seeds,
                        corrected_seeds=args.corrected_seeds, workers=args.workers, epochs=args.epochs,
                        train_examples=args.train_examples, evals=args.evals)
    if config.workers < 1 or config.seeds < 1 or config.corrected_seeds < 0:
        return fail(ValueError("--workers and --seeds must be >= 1, --corrected-seeds >= 0"))
    try:
        if args.benchmark or args.fit:
            return from_table(args.benchmark or args.fit, fit=bool(args.fit))
        if args.features:
            from diagnostics.early_features import write_table

            rows = write_table(config.out, args.features)
            args.features.with_suffix(".provenance.json").write_text(json.dumps(provenance(config), indent=1))
            print(f"{args.features}: {rows} runs")
            return 0
        with interrupt.stop_on_signals():
            print(f"{build(config)} runs done; the bank is in {config.out}")
    except FinetuneError as error:
        return fail(error)
    except KeyboardInterrupt as stop:
        print(f"interrupted by {interrupt.describe(stop)}: finished runs are kept; run the same command to go on",
              file=sys.stderr)
        return interrupt.exit_status(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

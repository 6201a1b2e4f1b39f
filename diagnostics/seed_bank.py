"""Build the seed bank: many small fine-tuning runs of the embedded default whose outcomes train and test the
early-failure predictor (docs/verdicts.md).

    python -m diagnostics.seed_bank --out runs/bank --workers 1              # build or continue the bank
    python -m diagnostics.seed_bank --out runs/bank --features data/seed_bank/features.csv
    python -m diagnostics.seed_bank --benchmark data/seed_bank/*.csv         # the early-failure protocol
    python -m diagnostics.seed_bank --fit data/seed_bank/*.csv               # the predictor the probe ships
    python -m diagnostics.seed_bank --model my-model --task my-task --out runs/mine --lrs 1e-5,3e-5
    python -m diagnostics.seed_bank --fit runs/mine.csv --predictor-out mine.json   # diagnose --predictor mine.json

The bank is built on ``--model`` (default: the embedded model) and ``--task`` (task names or task folders), so
a predictor can be calibrated on the user's own model: a predictor file knows the domain it was fitted on, and
``diagnose`` and the early warning give no P(fail) outside it. The grid: every task x learning rate (``--lrs``)
with ``--seeds`` seeds for the ``default`` recipe (AdamW without bias correction), and every task x ``--corrected-lrs`` with ``--corrected-seeds`` seeds for the bias-corrected
``mosbach`` recipe, run at the default's number of epochs so both see the same steps. Runs are small (``--train-examples``, ``--max-length``, ``--evals``) so ~100 fit
in two hours of one core. Runs go to ``OUT/lr<LR>/<task>-<recipe>-s<seed>/`` in seed order (seed 0 of every cell
first), so a bank stopped early is still balanced. Re-running the same command skips finished runs and redoes an
interrupted one (its folder is kept as ``<run>.interrupted-N``); Ctrl-C or SIGTERM stops cleanly. ``--features`` writes the
compact per-run features and outcomes (:mod:`diagnostics.early_features`) with a provenance JSON beside them;
``--fit`` writes a predictor file from them (:mod:`diagnostics.predictor_fit`).

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

from tqdm import tqdm

from diagnostics import engines, interrupt
from diagnostics.checkpoints import CheckpointError, checkpoint_folder
from diagnostics.command import CommandParser, fail, summary
from diagnostics.embedded import DEFAULT_MODEL
from diagnostics.finetune import FinetuneConfig, FinetuneError, FinetuneResult, finished_run, planned_steps
from diagnostics.stop_early import StopRule
from diagnostics.stop_early_report import savings
from diagnostics.tasks import TaskError, load_task
from probes import records
from probes.early_failure.benchmark import FRACTIONS
from probes.early_failure.predictor_file import MODEL_FILE


@dataclass
class BankConfig:
    """The grid and the size of each run."""

    out: Path
    model: Path = DEFAULT_MODEL
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
                task=task, recipe=recipe, seed=seed, out=Path(self.out) / f"lr{lr:g}", model=Path(self.model),
                lr=lr, epochs=self.epochs,
                max_length=self.max_length, train_examples=self.train_examples, dev_examples=self.dev_examples,
                evals=self.evals, threads=1, precision="fp32", interpolations=0, stop_early=self.stop_early)
                for lr in (self.lrs if recipe == "default" else self.corrected_lrs) for task in self.tasks]
        return chosen


def build(config: BankConfig) -> int | None:
    """Run every unfinished run of the bank on its engine, ``workers`` at a time, with one progress bar over the
    optimiser steps of those runs; returns how many were run now (None: submitted without waiting)."""
    names = {task: load_task(task).name for task in config.tasks}  # a task folder's runs are named by its task
    todo = [one for one in config.runs() if finished_run(one.run_dir(names[one.task])) is None]
    with tqdm(total=sum(planned_steps(todo).values()), desc="seed bank", unit="step", smoothing=0.05) as bar:
        def report(result: FinetuneResult) -> None:
            verdict = f"stopped early ({result.stopped})" if result.stopped else "FAILED" if result.failed else "ok"
            bar.write(f"{result.run_dir.parent.name}/{result.run_dir.name}: {result.metric} "
                      f"{result.final_dev_metric:.3f} {verdict}, {result.seconds:.0f} s")

        done = engines.finetune_all(todo, replace(config.engine, workers=config.workers), report, bar.update, bar.write)
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


def from_table(paths: list[Path], fit: bool, predictor_out: Path = MODEL_FILE) -> int:
    """Print the benchmark of one or more features CSVs (banks of the same model, read as one), or fit a predictor
    file from them into ``predictor_out``."""
    from diagnostics.early_features import read_table
    from diagnostics.early_warning_report import protocol_markdown
    from diagnostics.predictor_fit import backfill
    from diagnostics.predictor_fit import fit as fit_file
    from probes.early_failure.protocol import evaluate

    for path in paths:
        if not path.is_file():
            raise FinetuneError(f"{path} not found; write it with --out RUNS --features {path}")
    tables = [(path, read_table(path)) for path in paths]
    rows = [row for _, table in tables for row in table]
    if not fit:
        print(protocol_markdown(evaluate(rows, FRACTIONS)), end="")
        return 0
    source = {"table": ", ".join(map(str, paths)), "runs": len({row["run"] for row in rows}),
              "failed": len({row["run"] for row in rows if row["failed"]})}
    fitted = fit_file([row for path, table in tables for row in backfill(table, path)], source)
    try:
        predictor_out.write_text(fitted.to_json())
    except OSError as error:
        raise FinetuneError(f"cannot write {predictor_out} ({error.strerror}); pass a writable --predictor-out")
    print(f"{predictor_out}: {len(fitted.models)} models fitted on {source['runs']} runs ({source['failed']} failed); "
          f"domain: {fitted.domain.describe()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m diagnostics.seed_bank", description=summary(__doc__))
    parser.add_argument("--out", type=Path, help="runs go to OUT/lr<LR>/<task>-<recipe>-s<seed>/")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="pre-trained checkpoint folder to build the bank on (default: the embedded model)")
    parser.add_argument("--tasks", "--task", default="hedge,polarity",
                        help="comma-separated task names or task folders")
    parser.add_argument("--lrs", default="1e-4,2e-4,3e-4", help="learning rates of the default recipe")
    parser.add_argument("--corrected-lrs", default="2e-4", help="learning rates of the bias-corrected recipe")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per cell of the default recipe")
    parser.add_argument("--corrected-seeds", type=int, default=10, help="seeds per cell of the bias-corrected one")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (one thread each)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every run (steps = epochs x examples / 16)")
    parser.add_argument("--train-examples", type=int, default=320, help="training examples of every run")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per example of every run")
    parser.add_argument("--evals", type=int, default=20, help="dev evaluations per run, evenly spaced")
    parser.add_argument("--features", type=Path, help="write the per-run features to this CSV instead of building")
    parser.add_argument("--benchmark", type=Path, nargs="+", metavar="CSV",
                        help="print the early-failure protocol of one or more features CSVs (read as one bank)")
    parser.add_argument("--fit", type=Path, nargs="+", metavar="CSV",
                        help="fit a predictor file on every run of one or more features CSVs: one model per fraction, the "
                             "bank's domain, each configuration's prior and the measured within-cell AUC")
    parser.add_argument("--predictor-out", type=Path, default=MODEL_FILE, metavar="PATH",
                        help="where --fit writes the predictor file (default: the shipped "
                             "probes/early_failure/model.json); pass it to diagnose --predictor PATH")
    parser.add_argument("--stop-early", metavar="RULE",
                        help="dodge or predictor: stop doomed seeds early; writes OUT/stop-early.md")
    parser.add_argument("--against", type=Path, metavar="BANK",
                        help="with --stop-early: a bank of the same grid run to the end, to count the good runs lost")
    engines.add_arguments(parser)
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
    if args.workers < 1 or args.seeds < 1 or args.corrected_seeds < 0 or args.epochs < 1 or args.train_examples < 1:
        return fail(ValueError("--workers, --seeds, --epochs and --train-examples must be >= 1, --corrected-seeds >= 0"))
    try:
        config = BankConfig(out=args.out, model=args.model, tasks=args.tasks.split(","), lrs=lrs,
                            corrected_lrs=corrected_lrs, seeds=args.seeds, corrected_seeds=args.corrected_seeds,
                            workers=args.workers, epochs=args.epochs, train_examples=args.train_examples,
                            max_length=args.max_length, evals=args.evals, engine=engines.from_args(args),
                            stop_early=args.stop_early)
        if args.stop_early:
            StopRule.parse(args.stop_early)
        elif args.against:
            raise FinetuneError("--against compares a bank built with --stop-early: add --stop-early RULE")
        if args.benchmark or args.fit:
            return from_table(args.benchmark or args.fit, fit=bool(args.fit), predictor_out=args.predictor_out)
        if args.features:
            from diagnostics.early_features import write_table

            rows = write_table(config.out, args.features)
            args.features.with_suffix(".provenance.json").write_text(json.dumps(provenance(config), indent=1))
            print(f"{args.features}: {rows} runs")
            return 0
        checkpoint_folder(config.model, "--model")
        engines.check(config.engine, config.out)
        with interrupt.stop_on_signals():
            done = build(config)
        if done is None:
            return 0
        print(f"{done} runs done; the bank is in {config.out}")
        if config.stop_early:
            print(stop_report(config, args.against), end="")
    except (ValueError, CheckpointError, TaskError, records.RecordsError) as error:
        return fail(error)
    except KeyboardInterrupt as stop:
        print(f"interrupted by {interrupt.describe(stop)}: finished runs are kept; run the same command to go on",
              file=sys.stderr)
        return interrupt.exit_status(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

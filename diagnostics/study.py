"""The miniature stability study: many seeds of the papers' recipes on the embedded default, diagnosed end to end.

    python -m diagnostics.study --out runs/study            # the default study (about 15 minutes on 2 cores)
    python -m diagnostics.study --out runs/full --full      # full size: all 1,000 examples, 10 dev evaluations
    python -m diagnostics.study --out runs/quick --quick    # a one-minute smoke run
    python -m diagnostics.study --out runs/study --seeds 0-9 --recipes default,mosbach,zhang --tasks hedge

What it does, in order, everything into OUT:

1. fine-tunes every (task, recipe, seed) with the probes attached (``python -m diagnostics.finetune`` does one),
   two runs at a time on one thread each; a finished run is skipped, so re-running the same command resumes;
2. measures forgetting (MLM perplexity under top-k layer resetting) on a failed and a successful
   run of the first task (``forgetting_runs`` of each), into each run's ``run.h5``;
3. computes the loss plane through the failed run's step-0 checkpoint, its final model and a successful run's
   final model, and the line from the failed to the successful model, into ``surfaces.h5`` (resumable);
4. computes the loss barrier between every pair of successful runs of the recipe with the most of them (up to
   three runs, five points a line; all its runs when fewer than two succeeded), into ``surfaces.h5``
   (resumable): one basin or several;
5. writes ``report.md`` (failed runs, spread, disagreement and CKA between seeds, Levene's test, the barrier
   matrix, the early warning's precision and recall, where the records came from), draws every figure into
   ``OUT/figures/`` and writes ``report.html`` (one self-contained page: the tables, each run's verdict, every
   figure inline, links to the records).
``--engine ray|slurm`` runs the seeds on a Ray cluster or as a SLURM job array, and ``--stop-early dodge|predictor``
stops doomed seeds early (docs/many-machines.md); the records and the report do not depend on the engine.
``report.md`` and the figures are derived from the records and are redrawn on every run; records are never
overwritten. Every run of a study computes in one precision, fp32 unless ``--precision bf16`` (faster where bf16 is
native, and labelled so in the report), on the GPU when torch sees one (``--device``), so the report does not
depend on the machine's bf16 support. The default size (the first 500 training examples, 3 dev evaluations per
run) aims at 15 minutes on 2 cores of an AVX2-only CPU; docs/study.md gives the evidence. Ctrl-C stops cleanly: finished runs and points stay, an interrupted run's folder is set aside as
``<run>.interrupted-N`` (kept, never deleted) and redone next time.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from probes import records
from diagnostics import engines, interrupt
from diagnostics.command import CommandParser, fail
from diagnostics.finetune import FinetuneConfig, FinetuneError, FinetuneResult, finished_run, planned_steps
from diagnostics.hardware import DEVICES, Hardware, choose_hardware
from diagnostics.quiet import quiet_transformers
from diagnostics.stop_early import StopRule
from diagnostics.stop_early_report import savings
from diagnostics.html_report import write_html
from diagnostics.report import ReportConfig
from diagnostics.report import run as report_run

QUICK = dict(seeds=[0, 1], recipes=["default", "mosbach"], train_examples=48, dev_examples=48, epochs=1,
             grid=3, surface_examples=16, forgetting_tokens=2048, forgetting_runs=1, barrier_runs=2, barrier_grid=3)
FULL = dict(train_examples=None, evals=10, surface_examples=128)  # every training example, as a single run does


@dataclass
class StudyConfig:
    """One study. ``epochs`` / ``train_examples`` / ``dev_examples`` of None keep the recipe's and task's own."""

    out: Path
    tasks: list[str] = field(default_factory=lambda: ["hedge"])
    recipes: list[str] = field(default_factory=lambda: ["default", "mosbach"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    workers: int = 2
    max_length: int = 64
    epochs: int | None = None
    train_examples: int | None = 500
    dev_examples: int | None = None
    evals: int = 3  # also the interpolation probe's evaluations; neither changes a run's outcome
    device: str = "auto"
    precision: str = "fp32"
    grid: int = 7
    surface_examples: int = 64
    forgetting_tokens: int = 8192
    forgetting_runs: int = 1  # failed and successful runs each: the forgetting figure needs one of both
    barrier_runs: int = 3
    barrier_grid: int = 5
    engine: engines.Engine = field(default_factory=engines.Engine)  # its workers: ``workers``
    stop_early: str | None = None  # a rule of diagnostics.stop_early; None runs every seed to the end

    def finetune_configs(self) -> list[FinetuneConfig]:
        return [FinetuneConfig(task=task, recipe=recipe, seed=seed, out=self.out, max_length=self.max_length,
                               threads=1, epochs=self.epochs, train_examples=self.train_examples,
                               dev_examples=self.dev_examples, evals=self.evals, device=self.device,
                               precision=self.precision, stop_early=self.stop_early)
                for task in self.tasks for recipe in self.recipes for seed in self.seeds]


@dataclass
class StudyResult:
    runs: list[FinetuneResult]  # the stopped ones included
    report: Path
    figures: Path
    skipped_figures: dict[str, str]
    seconds: float


def fine_tune_all(config: StudyConfig) -> list[FinetuneResult] | None:
    """Every run of the study on its engine, ``workers`` at a time, with one progress bar over the optimiser steps
    of all runs still to do: its time estimate comes from the steps measured so far, all workers together. None
    when the runs were submitted without waiting for them."""
    configs = config.finetune_configs()
    planned = planned_steps(configs)
    with tqdm(total=sum(planned.values()), desc="fine-tuning", unit="step", smoothing=0.05) as bar:
        def report(result: FinetuneResult) -> None:
            state = "skipped (finished before)" if result.skipped else f"{result.seconds:.0f} s"
            verdict = f"stopped early ({result.stopped})" if result.stopped else "FAILED" if result.failed else "ok"
            bar.write(f"{result.run_dir.name}: dev {result.metric} {result.final_dev_metric:.3f} {verdict}, {state}")

        results = engines.finetune_all(configs, replace(config.engine, workers=config.workers), report, bar.update,
                                       bar.write)
    return None if results is None else sorted(results, key=lambda r: r.run_dir.name)


def pick_runs(results: list[FinetuneResult], task: str, count: int) -> tuple[list[Path], list[Path]]:
    """Up to ``count`` failed and ``count`` successful run folders of ``task`` (default recipe first)."""
    of_task = [r for r in results if r.run_dir.name.startswith(f"{task}-")]
    of_task.sort(key=lambda r: (not r.run_dir.name.startswith(f"{task}-default-"), r.run_dir.name))
    failed = [r.run_dir for r in of_task if r.failed][:count]
    successful = [r.run_dir for r in of_task if not r.failed][:count]
    return failed, successful


def measure_forgetting(run_dirs: list[Path], max_tokens: int, hardware: Hardware) -> None:
    """The top-k reset sweep on each run's final model, added to its records (skipped where already there)."""
    from diagnostics.forgetting import ForgettingConfig
    from diagnostics.forgetting import run as forgetting_run

    for run_dir in tqdm(run_dirs, desc="forgetting", unit="run"):
        if records.open_run(run_dir / "run.h5").names("forgetting"):
            continue
        forgetting_run(ForgettingConfig(checkpoint=run_dir / "final", out=run_dir / "run.h5", max_tokens=max_tokens,
                                        device=hardware.device.type, precision=hardware.precision), hardware)


def measure_surfaces(config: StudyConfig, failed: Path, successful: Path, task: str) -> Path:
    """The plane through pre-trained (the failed seed's step 0), failed and successful models, and the line from
    failed to successful, into ``surfaces.h5`` (resumed if interrupted)."""
    from diagnostics.surface import SurfaceConfig
    from diagnostics.surface import run as surface_run

    out = config.out / "surfaces.h5"
    common = dict(task=task, split="train", max_examples=config.surface_examples, max_length=config.max_length,
                  out=str(out), device=config.device, precision=config.precision)
    surface_run(SurfaceConfig(checkpoints=[str(failed / "step0"), str(failed / "final"), str(successful / "final")],
                              grid=config.grid, name="plane", labels=["pre-trained", "failed", "successful"],
                              **common))
    surface_run(SurfaceConfig(checkpoints=[str(failed / "final"), str(successful / "final")],
                              grid=2 * config.grid + 1, name="line", labels=["failed", "successful"], **common))
    return out


def pick_basin_runs(results: list[FinetuneResult], task: str) -> tuple[str | None, list[Path]]:
    """The successful runs of the recipe of ``task`` with the most of them (the first in name order on a tie); when
    no recipe has two, every run of that recipe (failed ones too: the smoke run still draws a matrix)."""
    by_recipe: dict[str, list[FinetuneResult]] = {}
    for result in sorted(results, key=lambda r: r.run_dir.name):
        if result.run_dir.name.startswith(f"{task}-"):
            by_recipe.setdefault(result.run_dir.name[len(task) + 1:].rsplit("-s", 1)[0], []).append(result)
    if not by_recipe:
        return None, []
    recipe, runs = max(by_recipe.items(), key=lambda item: (sum(not r.failed for r in item[1]), len(item[1])))
    successful = [r.run_dir for r in runs if not r.failed]
    return recipe, successful if len(successful) >= 2 else [r.run_dir for r in runs]


def measure_barriers(config: StudyConfig, results: list[FinetuneResult], task: str):
    """The loss barrier between every pair of up to ``barrier_runs`` runs picked by :func:`pick_basin_runs`, into
    ``surfaces.h5`` (resumed if interrupted); None if there are not two runs."""
    from diagnostics.barriers import BarriersConfig
    from diagnostics.barriers import run as barriers_run

    recipe, run_dirs = pick_basin_runs(results, task)
    if len(run_dirs) < 2:
        print(f"fewer than two runs of any recipe on {task}: no loss barriers", file=sys.stderr)
        return None
    return barriers_run(BarriersConfig(runs=[str(d) for d in run_dirs[:config.barrier_runs]], task=task,
                                       grid=config.barrier_grid, max_examples=config.surface_examples,
                                       max_length=config.max_length, out=str(config.out / "surfaces.h5"),
                                       name=f"barriers-{recipe}"))


def write_report(config: StudyConfig, results: list[FinetuneResult], barriers=None, report=None) -> Path:
    """``report.md``: what was run, in which precision, the multi-seed table, the loss barriers between successful
    seeds, the early warning's held-out precision and recall (``report``: that analysis if already made), and
    where the measured runs forgot."""
    report = report or report_run(ReportConfig(runs=[str(r.run_dir / "run.h5") for r in results], early=True))
    size = "every training example" if config.train_examples is None else \
        f"the first {config.train_examples} training examples"
    precision = "fp32" if config.precision == "fp32" else \
        f"{config.precision} autocast (faster where native; outcomes may differ from the fp32 study)"
    path = config.out / "report.md"
    basins = f"## Loss barriers between seeds\n\n```\n{barriers.table()}\n```\n\n" if barriers else ""
    stopped, stop_table = stop_section(config)
    path.write_text("# Stability study\n\n"
                    f"{len(results)} runs{stopped}: tasks {', '.join(config.tasks)}; "
                    f"recipes {', '.join(config.recipes)}; "
                    f"seeds {', '.join(map(str, config.seeds))}; {size}, max length {config.max_length}, "
                    f"{config.evals} dev evaluations per run; precision **{precision}**; command "
                    f"`python -m diagnostics.study {' '.join(sys.argv[1:])}`.\n\n"
                    "## Seeds\n\n" + report.markdown() + ("\n" + basins if basins else "")
                    + forgetting_section([r.run_dir for r in results]) + stop_table)
    return path


def stop_section(config: StudyConfig) -> tuple[str, str]:
    """With ``--stop-early``: what to add after the number of runs, and a section of what it saved (the stopped
    runs are left out of every other table: their outcome is unknown)."""
    if not config.stop_early:
        return "", ""
    saved = savings(config.out)
    rule = StopRule.parse(config.stop_early)
    return (f" run to the end ({saved.stopped} more stopped early by `--stop-early {rule}`)",
            f"\n## Stopped early\n\n{saved.markdown()}")


def forgetting_section(run_dirs: list[Path]) -> str:
    """A markdown table of where each measured run forgot (runs without a forgetting record are left out):
    perplexity at k = 0 and with only the embeddings reset (x pre-trained), the fewest top blocks whose reset brings
    it within 10% of the pre-trained model, block 1 alone fine-tuned, weight change and CKA over the blocks."""
    rows = []
    for run_dir in run_dirs:
        run = records.open_run(run_dir / "run.h5")
        curves, profiles = run.grids("forgetting"), run.grids("forgetting_profile")
        name = next((n for n, g in curves.items() if g.attrs.get("direction") == "top" and n in profiles), None)
        if name is None:
            continue
        curve, profile = curves[name], profiles[name]
        pre = float(curve.attrs["pretrained_perplexity"])
        perplexity = curve.fields["perplexity"]
        recovered = next(int(k) for k, value in zip(curve.axes["k"], perplexity) if value <= 1.1 * pre)
        change, cka = profile.fields["weight_change"][1:], profile.fields["cka"]
        rows.append(f"| {run_dir.name} | {'yes' if run.summary.get('failed') else 'no'} | {perplexity[0] / pre:.1f} "
                    f"| {curve.attrs['embeddings_only_reset'] / pre:.1f} | {recovered} of {len(perplexity) - 1} "
                    f"| {profile.fields['alone'][1] / pre:.1f} | {change.min():.3f}-{change.max():.3f} "
                    f"| {cka[1]:.2f} / {cka[-1]:.2f} |")
    if not rows:
        return ""
    return ("\n## Forgetting\n\nMLM perplexity of the held-out text as a multiple of the pre-trained model's "
            f"({pre:.1f}); `python -m diagnostics.forgetting RUN/final` prints the whole curve and profile.\n\n"
            "| run | failed | fine-tuned | embeddings reset | top blocks reset to recover (10%) | block 1 alone "
            "| weight change of the blocks | CKA after block 1 / top |\n|---|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def figure_records(config: StudyConfig, results: list[FinetuneResult]) -> list[Path]:
    """What the figures are drawn from: the records of the runs run to the end and the surfaces, not the folders
    set aside as ``<run>.interrupted-N`` (a worker killed outright may have left one unreadable) nor stopped runs."""
    surfaces = config.out / "surfaces.h5"
    return sorted([r.run_dir / "run.h5" for r in results] + ([surfaces] if surfaces.is_file() else []))


def draw(config: StudyConfig, records: list[Path]):
    from plots.batch import draw_figures
    from plots.registry import FIGURES

    folder = config.out / "figures"
    folder.mkdir(exist_ok=True)
    drawn = draw_figures({name: folder / f"{name}.pdf" for name in FIGURES}, records, overwrite=True, strict=False)
    # PNGs at 200 dpi (1,400 px across a page-wide figure) for a README or a report page
    draw_figures({name: folder / f"{name}.png" for name in drawn.drawn}, records, overwrite=True, strict=False)
    return folder, drawn


def run(config: StudyConfig) -> StudyResult | None:
    """The whole study; None when its runs were submitted to SLURM without waiting (``--no-wait``)."""
    started = time.monotonic()
    hardware = choose_hardware(config.device, config.precision, announce=True)
    config = replace(config, device=hardware.device.type)
    config.out.mkdir(parents=True, exist_ok=True)
    everything = fine_tune_all(config)
    if everything is None:
        return None
    results = [result for result in everything if not result.stopped]
    failed, successful = pick_runs(results, config.tasks[0], config.forgetting_runs)
    measure_forgetting(failed + successful, config.forgetting_tokens, hardware)
    if failed and successful:
        measure_surfaces(config, failed[0], successful[0], config.tasks[0])
    else:
        print(f"no {'failed' if not failed else 'successful'} run on {config.tasks[0]}: no loss surface drawn "
              "(add seeds, or a recipe that fails more often)", file=sys.stderr)
    barriers = measure_barriers(config, results, config.tasks[0])
    analysis = report_run(ReportConfig(runs=[str(r.run_dir / "run.h5") for r in results], early=True))
    report = write_report(config, results, barriers, analysis)
    figures, drawn = draw(config, figure_records(config, results))
    write_html(analysis, [r.run_dir / "run.h5" for r in results], config.out / "report.html",
               figure_records=figure_records(config, results),
               intro=f"{len(results)} runs of python -m diagnostics.study {' '.join(sys.argv[1:])}")
    return StudyResult(everything, report, figures, drawn.skipped, time.monotonic() - started)


def kept(config: StudyConfig) -> str:
    """What an interrupted study keeps, and what running the same command again does."""
    runs = [path.parent for path in config.out.glob("*/run.h5")]
    finished = sum(finished_run(run_dir) is not None for run_dir in runs)
    return (f"{finished} finished runs and every finished surface point are kept in {config.out}; running the "
            f"same command again sets the {len(runs) - finished} unfinished runs aside as <run>.interrupted-N "
            "(their records kept) and redoes them")


def check(config: StudyConfig) -> None:
    """Refuse a missing model, an --out that cannot be a writable folder, unknown recipes or tasks, before any work
    is done (one-line errors, as each run would give them)."""
    from diagnostics.finetune import check as check_run
    from diagnostics.tasks import load_task

    for one in config.finetune_configs():
        check_run(one)
        one.resolved_recipe()
    for task in config.tasks:
        load_task(task)
    engines.check(config.engine, config.out)


def _seeds(text: str) -> list[int]:
    """``0-4`` or ``0,3,7``."""
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(part) for part in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m diagnostics.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for runs, records, report and figures")
    parser.add_argument("--tasks", default="hedge", help="comma-separated task names (the first is diagnosed)")
    parser.add_argument("--recipes", default="default,mosbach", help="comma-separated recipes")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2, 3, 4], help="e.g. 0-4 or 0,3,7")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA if torch sees a GPU")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="one precision for every run (bf16: faster where native, labelled in the report)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true",
                      help="full size: every training example and 10 dev evaluations per run (about 3x longer)")
    size.add_argument("--quick", action="store_true",
                      help="a one-minute smoke run: seeds 0-1, default and mosbach, tiny subsets, 1 epoch")
    parser.add_argument("--stop-early", metavar="RULE",
                        help="dodge or predictor: stop doomed seeds early (docs/many-machines.md)")
    engines.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_transformers()
    try:
        config = StudyConfig(out=args.out, tasks=args.tasks.split(","), recipes=args.recipes.split(","),
                             seeds=args.seeds, workers=args.workers, device=args.device, precision=args.precision,
                             engine=engines.from_args(args), stop_early=args.stop_early)
        config = replace(config, **QUICK) if args.quick else replace(config, **FULL) if args.full else config
        if config.workers < 1 or not config.seeds:
            raise FinetuneError("--workers must be >= 1 and --seeds non-empty")
        check(config)
        with interrupt.stop_on_signals():
            result = run(config)
    except (ValueError, records.RecordsError) as error:
        return fail(error)
    except KeyboardInterrupt as stop:
        print(f"interrupted by {interrupt.describe(stop)}: {kept(config)}", file=sys.stderr)
        return interrupt.exit_status(stop)
    if result is None:
        return 0
    print(f"{len(result.runs)} runs, report {result.report}, figures in {result.figures} "
          f"({result.seconds / 60:.1f} min)")
    for name, why in result.skipped_figures.items():
        print(f"figure {name} skipped: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

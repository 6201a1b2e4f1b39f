"""The miniature stability study: many seeds of the papers' recipes on the embedded default, diagnosed end to end.

    python -m diagnostics.study --out runs/study            # the default study (about 15 minutes on 2 cores)
    python -m diagnostics.study --out runs/quick --quick    # a one-minute smoke run
    python -m diagnostics.study --out runs/study --seeds 0-9 --recipes default,mosbach,zhang --tasks hedge

What it does, in order, everything into OUT:

1. fine-tunes every (task, recipe, seed) with the probes attached (``python -m diagnostics.finetune`` does one),
   two runs at a time on one thread each; a finished run is skipped, so re-running the same command resumes;
2. measures forgetting (MLM perplexity under top-k layer resetting) on up to three failed and three successful
   runs of the first task, into each run's ``run.h5``;
3. computes the loss plane through the failed run's step-0 checkpoint, its final model and a successful run's
   final model, and the line from the failed to the successful model, into ``surfaces.h5`` (resumable);
4. writes ``report.md`` (failed runs, spread, Levene's test, the early warning's precision and recall, where
   the records came from) and draws every figure into ``OUT/figures/``.
``report.md`` and the figures are derived from the records and are redrawn on every run; records are never
overwritten. Ctrl-C stops cleanly: finished runs and points stay, an interrupted run's folder is set aside as
``<run>.interrupted-N`` (kept, never deleted) and redone next time.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from probes import records
from diagnostics.finetune import FinetuneConfig, FinetuneError, FinetuneResult, finished_run
from diagnostics.quiet import quiet_transformers
from diagnostics.report import ReportConfig
from diagnostics.report import run as report_run

QUICK = dict(seeds=[0, 1], recipes=["default", "mosbach"], train_examples=48, dev_examples=48, epochs=1,
             grid=3, surface_examples=16, forgetting_tokens=2048, forgetting_runs=1)


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
    train_examples: int | None = None
    dev_examples: int | None = None
    grid: int = 7
    surface_examples: int = 128
    forgetting_tokens: int = 8192
    forgetting_runs: int = 3

    def finetune_configs(self) -> list[FinetuneConfig]:
        return [FinetuneConfig(task=task, recipe=recipe, seed=seed, out=self.out, max_length=self.max_length,
                               threads=1, epochs=self.epochs, train_examples=self.train_examples,
                               dev_examples=self.dev_examples)
                for task in self.tasks for recipe in self.recipes for seed in self.seeds]


@dataclass
class StudyResult:
    runs: list[FinetuneResult]
    report: Path
    figures: Path
    skipped_figures: dict[str, str]
    seconds: float


def _finetune_one(config: FinetuneConfig) -> FinetuneResult:
    """One run in a worker process (the runner attaches the standard probes)."""
    from diagnostics.finetune import run

    quiet_transformers()
    return run(config)


def set_aside_unfinished(config: FinetuneConfig) -> None:
    """Move an interrupted run's folder to ``<run>.interrupted-N`` so it is redone (its records are kept)."""
    from diagnostics.tasks import load_task

    run_dir = config.run_dir(load_task(config.task).name)
    if run_dir.exists() and finished_run(run_dir) is None:
        number = 1
        while run_dir.with_name(f"{run_dir.name}.interrupted-{number}").exists():
            number += 1
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.interrupted-{number}"))


def fine_tune_all(config: StudyConfig) -> list[FinetuneResult]:
    """Every run of the study, ``workers`` at a time, with a progress bar over runs."""
    configs = config.finetune_configs()
    for one in configs:
        set_aside_unfinished(one)
    results: list[FinetuneResult] = []
    context = get_context("spawn")  # fresh interpreters: no forked torch thread pools
    with ProcessPoolExecutor(max_workers=config.workers, mp_context=context) as pool, \
            tqdm(total=len(configs), desc="fine-tuning", unit="run") as bar:
        pending = {pool.submit(_finetune_one, one) for one in configs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    results.append(result)
                    state = "skipped (finished before)" if result.skipped else f"{result.seconds:.0f} s"
                    verdict = "FAILED" if result.failed else "ok"
                    bar.write(f"{result.run_dir.name}: dev {result.metric} {result.final_dev_metric:.3f} "
                              f"{verdict}, {state}")
                    bar.update()
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return sorted(results, key=lambda r: r.run_dir.name)


def pick_runs(results: list[FinetuneResult], task: str, count: int) -> tuple[list[Path], list[Path]]:
    """Up to ``count`` failed and ``count`` successful run folders of ``task`` (default recipe first)."""
    of_task = [r for r in results if r.run_dir.name.startswith(f"{task}-")]
    of_task.sort(key=lambda r: (not r.run_dir.name.startswith(f"{task}-default-"), r.run_dir.name))
    failed = [r.run_dir for r in of_task if r.failed][:count]
    successful = [r.run_dir for r in of_task if not r.failed][:count]
    return failed, successful


def measure_forgetting(run_dirs: list[Path], max_tokens: int) -> None:
    """The top-k reset sweep on each run's final model, added to its records (skipped where already there)."""
    from diagnostics.forgetting import ForgettingConfig
    from diagnostics.forgetting import run as forgetting_run

    for run_dir in tqdm(run_dirs, desc="forgetting", unit="run"):
        if records.open_run(run_dir / "run.h5").names("forgetting"):
            continue
        forgetting_run(ForgettingConfig(checkpoint=run_dir / "final", out=run_dir / "run.h5", max_tokens=max_tokens))


def measure_surfaces(config: StudyConfig, failed: Path, successful: Path, task: str) -> Path:
    """The plane through pre-trained (the failed seed's step 0), failed and successful models, and the line from
    failed to successful, into ``surfaces.h5`` (resumed if interrupted)."""
    from diagnostics.surface import SurfaceConfig
    from diagnostics.surface import run as surface_run

    out = config.out / "surfaces.h5"
    common = dict(task=task, split="train", max_examples=config.surface_examples, max_length=config.max_length,
                  out=str(out))
    surface_run(SurfaceConfig(checkpoints=[str(failed / "step0"), str(failed / "final"), str(successful / "final")],
                              grid=config.grid, name="plane", labels=["pre-trained", "failed", "successful"],
                              **common))
    surface_run(SurfaceConfig(checkpoints=[str(failed / "final"), str(successful / "final")],
                              grid=2 * config.grid + 1, name="line", labels=["failed", "successful"], **common))
    return out


def write_report(config: StudyConfig, results: list[FinetuneResult]) -> Path:
    """``report.md``: what was run, the multi-seed table, the early warning's held-out precision and recall, and
    where the measured runs forgot."""
    report = report_run(ReportConfig(runs=[str(r.run_dir / "run.h5") for r in results], early=True))
    path = config.out / "report.md"
    path.write_text("# Stability study\n\n"
                    f"{len(results)} runs: tasks {', '.join(config.tasks)}; recipes {', '.join(config.recipes)}; "
                    f"seeds {', '.join(map(str, config.seeds))}; command `python -m diagnostics.study "
                    f"{' '.join(sys.argv[1:])}`.\n\n"
                    "## Seeds\n\n" + report.markdown() + forgetting_section([r.run_dir for r in results]))
    return path


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


def draw(config: StudyConfig):
    from plots.batch import draw_figures
    from plots.registry import FIGURES

    folder = config.out / "figures"
    folder.mkdir(exist_ok=True)
    drawn = draw_figures({name: folder / f"{name}.pdf" for name in FIGURES}, [config.out], overwrite=True,
                         strict=False)
    # PNGs at 200 dpi (1,400 px across a page-wide figure) for a README or a report page
    draw_figures({name: folder / f"{name}.png" for name in drawn.drawn}, [config.out], overwrite=True, strict=False)
    return folder, drawn


def run(config: StudyConfig) -> StudyResult:
    started = time.monotonic()
    config.out.mkdir(parents=True, exist_ok=True)
    results = fine_tune_all(config)
    failed, successful = pick_runs(results, config.tasks[0], config.forgetting_runs)
    measure_forgetting(failed + successful, config.forgetting_tokens)
    if failed and successful:
        measure_surfaces(config, failed[0], successful[0], config.tasks[0])
    else:
        print(f"no {'failed' if not failed else 'successful'} run on {config.tasks[0]}: no loss surface drawn "
              "(add seeds, or a recipe that fails more often)", file=sys.stderr)
    report = write_report(config, results)
    figures, drawn = draw(config)
    return StudyResult(results, report, figures, drawn.skipped, time.monotonic() - started)


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


def _seeds(text: str) -> list[int]:
    """``0-4`` or ``0,3,7``."""
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(part) for part in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diagnostics.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for runs, records, report and figures")
    parser.add_argument("--tasks", default="hedge", help="comma-separated task names (the first is diagnosed)")
    parser.add_argument("--recipes", default="default,mosbach", help="comma-separated recipes")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2, 3, 4], help="e.g. 0-4 or 0,3,7")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--quick", action="store_true",
                        help="a one-minute smoke run: seeds 0-1, default and mosbach, tiny subsets, 1 epoch")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_transformers()
    config = StudyConfig(out=args.out, tasks=args.tasks.split(","), recipes=args.recipes.split(","),
                         seeds=args.seeds, workers=args.workers)
    config = replace(config, **QUICK) if args.quick else config
    try:
        if config.workers < 1 or not config.seeds:
            raise FinetuneError("--workers must be >= 1 and --seeds non-empty")
        check(config)
        result = run(config)
    except (ValueError, records.RecordsError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished runs and points are kept; run the same command to go on", file=sys.stderr)
        return 130
    print(f"{len(result.runs)} runs, report {result.report}, figures in {result.figures} "
          f"({result.seconds / 60:.1f} min)")
    for name, why in result.skipped_figures.items():
        print(f"figure {name} skipped: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the interpolation probe costs a fine-tuning run: its share of the run's time, measured inside one run.

    python3 bench/interpolation_cost.py --out runs/interp --task hedge --recipe default --seed 0 [--fp32] [--lr 1e-3]

Runs ``diagnostics.finetune`` exactly as the command does (every standard probe attached, the interpolation probe
included: 64 held examples, 7 points, 10 times per run) and times the probe's evaluations with the process's CPU
time and the wall clock; prints both as a share of the whole run (model loading to the final save). Measuring
both parts in the same process keeps the ratio honest on a shared machine. The run folder is a normal run: its
``run.h5`` and checkpoints can be drawn (``python -m plots interpolation``) and checked against
``python -m diagnostics.surface --line RUN/step0 RUN/final``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from diagnostics.finetune import FinetuneConfig, run  # noqa: E402
from probes.interpolation import Interpolation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--task", default="hedge")
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, help="override the recipe's learning rate")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (the runner's default uses it)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spent = {"cpu": 0.0, "wall": 0.0}
    evaluate = Interpolation.after_step

    def timed(self, session, row):  # the probe's own work, nothing else, on the steps it evaluates
        cpu, wall = time.process_time(), time.perf_counter()
        evaluate(self, session, row)
        spent["cpu"] += time.process_time() - cpu
        spent["wall"] += time.perf_counter() - wall

    Interpolation.after_step = timed
    cpu, wall = time.process_time(), time.perf_counter()
    result = run(FinetuneConfig(task=args.task, recipe=args.recipe, seed=args.seed, out=args.out, threads=1,
                                bf16=not args.fp32, lr=args.lr, epochs=args.epochs))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{result.run_dir}: dev {result.metric} {result.final_dev_metric:.4f}, failed={result.failed}, "
          f"{result.steps} steps, {'fp32' if args.fp32 else 'bf16 autocast'}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"run: {cpu:.1f} s CPU, {wall:.1f} s wall; interpolation probe: {spent['cpu']:.1f} s CPU "
          f"({spent['cpu'] / cpu:.1%}), {spent['wall']:.1f} s wall ({spent['wall'] / wall:.1%})")


if __name__ == "__main__":
    main()

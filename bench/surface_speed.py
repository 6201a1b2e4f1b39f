"""Speed of the loss surfaces, measured side by side in one run (prints ratios; asserts nothing).

    python3 bench/surface_speed.py                      # the embedded default model if built, else its shape
    python3 bench/surface_speed.py --examples 64 --steps 3 --threads 1

Three comparisons on the same three checkpoints and the same examples:

1. one grid point of ``diagnostics.surface`` (moving the weights in place, then evaluating: what the command does
   per point) against one plain eval pass of a separate copy of P, the two measured alternately (target <= 1.05x);
2. the same plane against the ``loss-landscapes`` package (``pip install -e ".[bench]"``): its
   ``planar_interpolation(P, F, S, metric, steps)`` walks P + (i/steps) (F - P) + (j/steps) (S - P) with in-place
   additions (raw directions, no normalisation, the same plane as ours; its odd rows are shifted by one step, which
   the comparison maps). Its ``Loss(loss_fn, inputs, target)`` metric takes one batch, so it gets every example in
   one padded batch; a second row gives it our batched evaluation as a custom Metric, to separate the walk from the
   evaluation. Losses must agree to 1e-4 (target: ours >= 3x faster than the package as documented);
3. ``torchrun --nproc_per_node 2`` against 1 rank (gloo, one thread per rank), and 1 rank with 2 threads.

The checkpoints: the embedded default encoder (``data/model``) with three seeds' heads and, for F and S, a small
random perturbation of every weight; without the built model, a random BERT of the same shape with the tests'
tiny tokenizer. Timings on a shared machine are noisy: the load average is printed with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diagnostics.embedded import DEFAULT_MODEL  # noqa: E402
from diagnostics.surface import (SurfaceConfig, evaluate, load_classifier, load_examples,  # noqa: E402
                                 load_subspace, load_tokenizer, prepare_batches, resolve)
from diagnostics.tasks import encode  # noqa: E402


def make_checkpoints(folder: Path, model_dir: Path) -> list[Path]:
    """P, F, S: the encoder with three seeds' heads; F and S also get every weight perturbed (std 1e-2)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    if (model_dir / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        load = lambda: AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)  # noqa: E731
        source = str(model_dir)
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        import tiny

        tokenizer = tiny.tokenizer()
        config = BertConfig(vocab_size=len(tokenizer) + 1, hidden_size=384, num_hidden_layers=6,
                            num_attention_heads=12, intermediate_size=1536, num_labels=2)
        load = lambda: AutoModelForSequenceClassification.from_config(config)  # noqa: E731
        source = "random BERT 6x384 (data/model not built)"
    paths = []
    for seed, name in enumerate(("p", "f", "s")):
        torch.manual_seed(seed)
        model = load()
        if seed:
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(torch.randn_like(param), alpha=1e-2)
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
        paths.append(folder / name)
    print(f"model: {source}")
    return paths


def timed(function) -> float:
    """Seconds one call of ``function`` takes."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def ours(config: SurfaceConfig):
    """What the command builds: the model to move, the subspace, the batches; plus a plain copy of P."""
    axes, attrs = resolve(config)
    _, examples = load_examples(config.task, config.split, config.max_examples)
    device = torch.device("cpu")
    model, space = load_subspace(config.checkpoints, attrs["labels"], device)
    batches = prepare_batches(examples, load_tokenizer(config.checkpoints), model, max_length=config.max_length,
                              batch_size=config.batch_size, device=device)
    return model, load_classifier(config.checkpoints[0]), space, batches, examples, axes


def interleaved(model, plain_model, space, batches, axes) -> tuple[float, float, float, np.ndarray]:
    """Medians of a plain eval pass, a grid point (move + evaluate, as the command does each point) and the move
    alone, measured alternately because the machine's load drifts; and the grid's losses."""
    shape = tuple(len(v) for v in axes.values())
    losses = np.full(shape, np.nan)
    plain, point, move = [], [], []
    with space.moving(model) as move_to:
        for index in np.ndindex(*shape):
            plain.append(timed(lambda: evaluate(plain_model, batches)))
            start = time.perf_counter()
            move_to([float(axis[i]) for axis, i in zip(axes.values(), index)])
            moved = time.perf_counter()
            losses[index] = evaluate(model, batches)[0]
            point.append(time.perf_counter() - start)
            move.append(moved - start)
    return statistics.median(plain), statistics.median(point), statistics.median(move), losses


def loss_landscapes_plane(checkpoints, examples, tokenizer, max_length: int, steps: int, batches=None):
    """The package's planar_interpolation on fresh copies of P, F, S; its Loss metric or our batched one."""
    from loss_landscapes import planar_interpolation
    from loss_landscapes.metrics import Loss, Metric
    from loss_landscapes.model_interface.model_wrapper import GeneralModelWrapper
    from transformers import AutoModelForSequenceClassification

    models = [AutoModelForSequenceClassification.from_pretrained(c).eval() for c in checkpoints]
    wrap = [GeneralModelWrapper(m, [m], lambda model, x: model(**x).logits) for m in models]
    if batches is None:
        encoded = encode(examples, tokenizer, max_length)
        labels = encoded.pop("labels")
        metric = Loss(F.cross_entropy, encoded, labels)
    else:
        class Batched(Metric):
            def __call__(self, wrapper) -> float:
                return evaluate(wrapper.model, batches)[0]

        metric = Batched()
    start = time.perf_counter()
    grid = planar_interpolation(wrap[0], wrap[1], wrap[2], metric, steps=steps)
    return grid, (time.perf_counter() - start) / steps ** 2


def matching_points(ours_loss: np.ndarray, theirs: np.ndarray) -> float:
    """Largest |difference| between the package's grid and ours on [0, 1] with steps+1 points per axis.

    Its row i sits at a = i/steps; even rows hold b = (j+1)/steps, odd rows b = j/steps (it walks back and forth).
    """
    steps = theirs.shape[0]
    worst = 0.0
    for i in range(steps):
        for j in range(steps):
            b = j + 1 if i % 2 == 0 else j
            worst = max(worst, abs(float(theirs[i, j]) - float(ours_loss[i, b])))
    return worst


def torchrun_seconds(checkpoints, config: SurfaceConfig, ranks: int, threads: int) -> tuple[float, float]:
    """(compute seconds the command reports, wall seconds) of the plane under torchrun."""
    command = ["torchrun", "--standalone", "--nproc_per_node", str(ranks), "-m", "diagnostics.surface", "--plane",
               *map(str, checkpoints), "--task", config.task, "--grid", str(config.grid), "--max-examples",
               str(config.max_examples), "--batch-size", str(config.batch_size), "--json", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"torchrun failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout)["seconds"], wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--task", default="wordnet-entail")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="loss-landscapes steps; our grid has steps+1 per axis")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = make_checkpoints(Path(tmp), args.model)
        config = SurfaceConfig(checkpoints=[str(c) for c in checkpoints], task=args.task, range=[0.0, 1.0],
                               grid=args.steps + 1, max_examples=args.examples, batch_size=args.batch_size)
        model, plain_model, space, batches, examples, axes = ours(config)
        points = len(axes["a"]) * len(axes["b"])
        print(f"load average {os.getloadavg()[0]:.1f}; {args.threads} thread(s); {len(examples)} examples of "
              f"{args.task} train; {points} grid points")

        plain, per_point, move, losses = interleaved(model, plain_model, space, batches, axes)
        print(f"plain eval pass           {plain * 1e3:9.1f} ms   (medians, measured alternately)")
        print(f"surface, per grid point   {per_point * 1e3:9.1f} ms   {per_point / plain:.3f}x the plain pass "
              f"(target <= 1.05x); moving the weights {move * 1e3:.1f} ms of it")

        tokenizer = load_tokenizer(config.checkpoints)
        theirs, their_point = loss_landscapes_plane(checkpoints, examples, tokenizer, config.max_length, args.steps)
        print(f"loss-landscapes, Loss     {their_point * 1e3:9.1f} ms   ours {their_point / per_point:.2f}x faster "
              f"(target >= 3x); max |loss difference| {matching_points(losses, theirs):.1e} (<= 1e-4)")
        theirs_b, their_point_b = loss_landscapes_plane(checkpoints, examples, tokenizer, config.max_length,
                                                        args.steps, batches)
        print(f"loss-landscapes, batched  {their_point_b * 1e3:9.1f} ms   ours {their_point_b / per_point:.2f}x "
              f"faster; max |loss difference| {matching_points(losses, theirs_b):.1e}")

        one = torchrun_seconds(checkpoints, config, 1, 1)
        two = torchrun_seconds(checkpoints, config, 2, 1)
        wide = torchrun_seconds(checkpoints, config, 1, 2)
        print(f"torchrun 1 rank x 1 thread  compute {one[0]:7.1f} s  wall {one[1]:7.1f} s")
        print(f"torchrun 2 ranks x 1 thread compute {two[0]:7.1f} s  wall {two[1]:7.1f} s   "
              f"speed-up {one[0] / two[0]:.2f}x compute, {one[1] / two[1]:.2f}x wall")
        print(f"torchrun 1 rank x 2 threads compute {wide[0]:7.1f} s  wall {wide[1]:7.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

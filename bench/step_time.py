"""Step time of the fine-tuning runner in fp32 and bf16, random and length-grouped batches, side by side in one run.

    python3 bench/step_time.py                                   # hedge, batch 16, max length 64, 1 thread
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python3 bench/step_time.py   # imitate an AVX2-only CPU
    python3 bench/step_time.py --device cuda --max-length 128

One training step of ``diagnostics.finetune`` (forward, backward, clipping at 1.0, BertAdam over the recipe's
parameter groups; no probes) on the embedded default model, for each of: fp32 or bf16 autocast, and batches drawn
at random (padded to the longest of 16 random examples) or length-grouped (the runner's ``batches``). Blocks of
``--steps`` steps are interleaved round-robin to cancel drift; the table gives each variant's median seconds per
step in CPU time of this process (with one thread: the work done, steady when other jobs share the machine) and in
wall time, and the ratio to fp32 with grouped batches (what the runner does where bf16 is not native). The first
line states the hardware (``torch.backends.cpu.get_cpu_capability()``, the CPU model) and what ``--precision auto``
would pick. Asserts nothing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics.bert_adam import BertAdam  # noqa: E402
from diagnostics.embedded import DEFAULT_MODEL  # noqa: E402
from diagnostics.finetune import batches, load_model, to_device, token_lengths  # noqa: E402
from diagnostics.hardware import choose_hardware  # noqa: E402
from diagnostics.recipes import get_recipe, parameter_groups  # noqa: E402
from diagnostics.tasks import encode, load_task  # noqa: E402


def random_batches(count: int, size: int, generator: torch.Generator) -> list[list[int]]:
    """Indices of batches drawn at random, as the runner drew them before grouping by length."""
    order = torch.randperm(count, generator=generator).tolist()
    return [order[i:i + size] for i in range(0, count - size + 1, size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="hedge")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="steps per block (bf16 on AVX2 takes ~15x fp32)")
    parser.add_argument("--repeats", type=int, default=3, help="blocks per variant, interleaved")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated, fp32 first")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    auto = choose_hardware(args.device, "auto")
    print(f"hardware: {auto.describe()}; --precision auto picks {auto.precision}; {args.threads} thread(s)")
    task = load_task(args.task)
    model, tokenizer = load_model(args.model, task.num_labels, seed=0)
    model.to(auto.device).train()
    recipe = get_recipe("default")
    optimizer = BertAdam(parameter_groups(model, recipe), lr=recipe.lr, eps=recipe.adam_eps, correct_bias=False)
    lengths = token_lengths(task.train, tokenizer, args.max_length)
    generator = torch.Generator().manual_seed(0)
    examples = task.train
    grouped = [list(b) for b in batches(list(range(len(examples))), lengths, args.batch_size, generator)]
    drawn = {"random": random_batches(len(examples), args.batch_size, generator), "grouped": grouped}
    variants = [(precision, order) for precision in args.precisions.split(",") for order in ("grouped", "random")]
    hardware = {p: choose_hardware(args.device, p) for p in ("fp32", "bf16")}
    cpu: dict[tuple, list[float]] = {v: [] for v in variants}
    wall: dict[tuple, list[float]] = {v: [] for v in variants}
    tokens: dict[tuple, list[int]] = {v: [] for v in variants}
    cursor = 0
    for repeat in range(args.repeats):
        for precision, order in variants[repeat % len(variants):] + variants[:repeat % len(variants)]:
            for _ in range(args.steps):
                rows = drawn[order][cursor % len(drawn[order])]
                cursor += 1
                batch = to_device(encode([examples[i] for i in rows], tokenizer, args.max_length), auto.device)
                started_cpu, started = time.process_time(), time.perf_counter()
                with hardware[precision].autocast():
                    loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if auto.device.type == "cuda":
                    torch.cuda.synchronize()
                cpu[(precision, order)].append(time.process_time() - started_cpu)
                wall[(precision, order)].append(time.perf_counter() - started)
                tokens[(precision, order)].append(int(batch["input_ids"].numel()))
            print(f"  {precision} {order}: block {repeat + 1} done", file=sys.stderr)
    base = ("fp32", "grouped")
    print(f"{args.task}, batch {args.batch_size}, max length {args.max_length}; median of "
          f"{args.steps * args.repeats} steps per variant")
    print(f"{'precision':>9} {'batches':>8} {'tokens/batch':>12} {'CPU s/step':>11} {'wall s/step':>12} "
          f"{'CPU ratio':>10} {'wall ratio':>11}")
    for variant in variants:
        c, w = statistics.median(cpu[variant]), statistics.median(wall[variant])
        print(f"{variant[0]:>9} {variant[1]:>8} {statistics.mean(tokens[variant]):>12.0f} {c:>11.3f} {w:>12.3f} "
              f"{c / statistics.median(cpu[base]):>10.2f} {w / statistics.median(wall[base]):>11.2f}")


if __name__ == "__main__":
    main()

"""A long probed run: memory, file growth and flush latency over 10,000 steps, and a reader polling beside it.

    python3 bench/long_run.py                     # 10,000 steps, every step recorded, a reader polling every second
    python3 bench/long_run.py --steps 2000 --sample-every 200

Trains a tiny real BERT classifier (2 blocks, 32 wide, batches of 4 x 16 tokens) with the default probes (gradient
norms per layer and per matrix, activation gradients, run scalars) recording every step and flushing every 50
(``tests/long_run.py`` holds the loop and the reader). Prints a row per sample (resident memory, Python
allocations held, file size, median flush time), then the trends: memory slope over the second half, bytes per
recorded step (fitted over the whole run, with the largest deviation from the line), flush time at the start and at
the end, and what the polling reader saw. One torch thread.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import long_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        result = long_run.train(Path(folder) / "run.h5", args.steps, args.sample_every, args.poll_seconds,
                                echo=True)
    samples = result["samples"]
    print(f"{args.steps} steps in {result['seconds']:.0f} s ({1e3 * result['seconds'] / args.steps:.1f} ms a step), "
          f"every step recorded, flush every 50; torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}, {platform.processor() or platform.machine()}, 1 thread")
    print(f"{'step':>6} {'RSS MB':>8} {'traced MB':>10} {'file MB':>8} {'flush ms':>9}")
    for s in samples:
        print(f"{s['step']:6d} {s['rss_mb']:8.1f} {s['traced_mb']:10.2f} {s['file_mb']:8.2f} {s['flush_ms']:9.2f}")
    half = samples[len(samples) // 2:]
    steps = [s["step"] for s in samples]
    sizes = [s["file_mb"] * 2 ** 20 for s in samples]
    rate = long_run.slope(steps, sizes)
    fitted = [sizes[0] + rate * (x - steps[0]) for x in steps]
    deviation = max(abs(a - b) for a, b in zip(sizes, fitted))
    flushes = result["flush_ms"]
    tenth = max(1, len(flushes) // 10)
    print(f"RSS slope over the second half: {1e3 * long_run.slope([s['step'] for s in half], [s['rss_mb'] for s in half]):.3f} "
          f"MB per 1,000 steps; Python allocations: {1e3 * long_run.slope([s['step'] for s in half], [s['traced_mb'] for s in half]):.4f} MB per 1,000 steps")
    print(f"file: {result['file_bytes'] / 2 ** 20:.2f} MB at the end, {rate:.0f} bytes per recorded step "
          f"(largest deviation from the line {deviation / 2 ** 10:.0f} KiB)")
    print(f"flush: median {sorted(flushes[:tenth])[tenth // 2]:.2f} ms over the first tenth of the flushes, "
          f"{sorted(flushes[-tenth:])[tenth // 2]:.2f} ms over the last tenth ({len(flushes)} flushes)")
    reader = result["reader"]
    print(f"reader: {reader['polls']} polls, up to {reader.get('steps_seen', 0)} steps seen, "
          f"{len(reader['problems'])} problems" + "".join(f"\n  {p}" for p in reader["problems"][:10]))
    return 1 if reader["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

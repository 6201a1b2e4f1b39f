"""Fuzz every records reader with seeded mutants of real records files: ``python3 bench/fuzz_records.py``.

Writes one records file per producer (``tests/records_fuzz.py``: the probes on a tiny model, the same killed
before closing, fine-tuning runs with a forgetting curve, a loss plane and line), makes ``--mutants`` mutants of
them (bytes truncated or flipped, attributes dropped or retyped, datasets reshaped, NaN/inf, steps out of order,
grid points missing) and feeds each to every reader in a watched worker process. Every verdict must be ``ok`` (a
valid result) or ``error`` (one line saying ``error:``, non-zero status) within ``--timeout`` seconds; a crash of
the interpreter, a hang, a traceback or a many-line error is listed with the mutant that caused it (kept in
``--keep``). Prints a table of verdicts per mutation and reader; exit status 1 if any mutant failed.

    python3 bench/fuzz_records.py --mutants 1000 --seed 0          # about 30 minutes on one busy core
    python3 bench/fuzz_records.py --mutants 60 --readers open_run   # a quick look
"""
from __future__ import annotations

import argparse
import collections
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import records_fuzz  # noqa: E402

FAULTS = ("crash", "hang", "traceback", "bad-error")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a reader may take on one mutant")
    parser.add_argument("--readers", default=",".join(records_fuzz.READERS), help="comma-separated subset")
    parser.add_argument("--every", type=int, default=1, help="feed only every N-th mutant (of the same seeded set)")
    parser.add_argument("--keep", type=Path, help="copy every failing mutant into this folder")
    args = parser.parse_args(argv)
    readers = args.readers.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.monotonic()
        sources = records_fuzz.seed_files(folder / "sources")
        mutants = records_fuzz.make_mutants(sources, folder / "mutants", args.mutants, args.seed)[::args.every]
        print(f"{len(mutants)} mutants of {len(sources)} sources ({', '.join(sources)}), seed {args.seed}, "
              f"made in {time.monotonic() - started:.0f} s; readers: {', '.join(readers)}", flush=True)
        worker = records_fuzz.Worker(args.timeout)
        table: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
        failures, slowest, warned, reported = [], 0.0, collections.Counter(), 0
        try:
            for number, mutant in enumerate(mutants):
                for reader in readers:
                    verdict = worker.read(reader, mutant.path, folder / "scratch")
                    outcome = records_fuzz.judge(verdict)
                    table[mutant.mutation, reader][outcome] += 1
                    slowest = max(slowest, verdict["seconds"])
                    warned.update(verdict.get("warnings", []))
                    if outcome in FAULTS:
                        failures.append((mutant, reader, outcome, verdict["stderr"].strip().splitlines()[-3:]))
                        if args.keep:
                            args.keep.mkdir(parents=True, exist_ok=True)
                            (args.keep / mutant.path.name).write_bytes(mutant.path.read_bytes())
                if (number + 1) % 50 == 0:
                    so_far = collections.Counter()
                    for counts in table.values():
                        so_far.update(counts)
                    print(f"  {number + 1} mutants, {time.monotonic() - started:.0f} s: "
                          + ", ".join(f"{so_far[o]} {o}" for o in ("ok", "error", *FAULTS)), flush=True)
                    for mutant_, reader_, outcome_, tail_ in failures[reported:]:
                        print(f"  FAIL {outcome_} {reader_} {mutant_.path.name}: {mutant_.description}: "
                              f"{tail_[-1] if tail_ else ''}", flush=True)
                    reported = len(failures)
        finally:
            worker.close()
        elapsed = time.monotonic() - started

    outcomes = ("ok", "error", *FAULTS)
    print(f"\n{'mutation':18} {'reader':15} " + " ".join(f"{o:>9}" for o in outcomes))
    for (mutation, reader), counts in sorted(table.items()):
        print(f"{mutation:18} {reader:15} " + " ".join(f"{counts[o]:9d}" for o in outcomes))
    total = collections.Counter()
    for counts in table.values():
        total.update(counts)
    print(f"{'all':34} " + " ".join(f"{total[o]:9d}" for o in outcomes))
    print(f"\n{len(mutants)} mutants x {len(readers)} readers = {sum(total.values())} reads in {elapsed:.0f} s; "
          f"slowest read {slowest:.1f} s (limit {args.timeout:.0f} s); host {platform.node()}, "
          f"{platform.processor() or platform.machine()}")
    if warned:
        print("warnings seen (not faults):")
        for message, count in warned.most_common(10):
            print(f"  {count:5d} {message}")
    for mutant, reader, outcome, tail in failures[:50]:
        print(f"FAIL {outcome:9} {reader:15} {mutant.path.name}: {mutant.description}")
        for line in tail:
            print(f"     {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

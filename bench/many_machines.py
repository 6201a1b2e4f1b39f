"""The engines side by side in one run: ``python3 bench/many_machines.py [--seeds 20] [--epochs 1]``.

On this machine, each through its command line and timed by the wall clock:

1. the quick study (``python -m diagnostics.study --quick``) under ``--engine local`` and ``--engine ray`` (a Ray
   cluster started here with ``--workers`` CPUs);
2. a seed bank of ``--seeds`` runs (hedge, learning rate 2e-4, the default recipe, ``--epochs`` epochs of the first
   320 training examples) under both engines;
3. the same bank under the local engine with ``--stop-early dodge``, against the bank run to the end: the compute it
   saved and the good runs it lost.

Ray's start-up is timed alone (``ray.init`` with the engine's options, then ``ray.shutdown``), and its cost per run
is the difference between the two engines' wall times over the runs. The records of both engines are compared
(timings aside). Prints a markdown table with the hardware, version, commit and date, and writes it as JSON to
``--json``. The machine may be shared: read the ratios, measured minutes apart, rather than the absolute times.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(args: list[str]) -> float:
    """Seconds the command took; stops the benchmark with its stderr if it fails."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def ray_start_seconds(workers: int) -> float:
    """Seconds to start and stop a Ray cluster of this machine as the engine does."""
    code = ("import logging, time, ray; from diagnostics.engines.ray_cluster import OBJECT_STORE; "
            "t = time.monotonic(); ray.init(address='local', num_cpus=%d, object_store_memory=OBJECT_STORE, "
            "include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING); "
            "print(time.monotonic() - t); ray.shutdown()" % workers)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def recorded(run_h5: Path) -> dict:
    """What a run recorded, timings aside: its summary less ``seconds``, and the bytes of every series and grid."""
    from probes.records import open_run

    run = open_run(run_h5)
    values = {key: value for key, value in run.summary.items() if key != "seconds"}
    for kind, named in run.records.items():
        for name, record in named.items():
            arrays = [record.steps, record.values] if hasattr(record, "steps") else list(record.fields.values())
            values[f"{kind}/{name}"] = [array.tobytes() for array in arrays]
    return values


def same_records(first: Path, second: Path) -> bool:
    """Every run under ``first`` recorded the same values as under ``second``, timings aside."""
    runs = sorted(p.relative_to(first) for p in first.rglob("run.h5") if ".interrupted-" not in str(p))
    return bool(runs) and all(recorded(first / run) == recorded(second / run) for run in runs)


def hardware() -> dict:
    import torch

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "version": "0.1.0", "commit": commit, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="runs of the bank")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each bank run (20 steps each)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("many_machines.json"))
    parser.add_argument("--dodge-only", action="store_true",
                        help="only part 3: the bank under the local engine, to the end and with --stop-early dodge")
    args = parser.parse_args()
    found = {"hardware": hardware(), "workers": args.workers, "bank": f"{args.seeds} runs x {args.epochs} epochs"}
    bank = ["-m", "diagnostics.seed_bank", "--tasks", "hedge", "--lrs", "2e-4", "--seeds", str(args.seeds),
            "--corrected-seeds", "0", "--epochs", str(args.epochs), "--workers", str(args.workers)]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        found["ray_start_s"] = ray_start_seconds(args.workers)
        study = ["-m", "diagnostics.study", "--quick", "--workers", str(args.workers)]
        if args.dodge_only:
            found["bank"] = {"runs": args.seeds, "local_s": timed([*bank, "--out", str(out / "bank-local")])}
        for name, command, runs in (("study", study, 4), ("bank", bank, args.seeds))[:0 if args.dodge_only else 2]:
            local = timed([*command, "--out", str(out / f"{name}-local")])
            on_ray = timed([*command, "--out", str(out / f"{name}-ray"), "--engine", "ray"])
            found[name] = {"runs": runs, "local_s": local, "ray_s": on_ray, "ratio": on_ray / local,
                           "ray_per_run_s": (on_ray - local) / runs,
                           "same_records": same_records(out / f"{name}-local", out / f"{name}-ray")}
        dodge = timed([*bank, "--out", str(out / "bank-dodge"), "--stop-early", "dodge",
                       "--against", str(out / "bank-local")])
        from diagnostics.stop_early_report import savings

        saved = savings(out / "bank-dodge", against=out / "bank-local")
        found["dodge"] = {"wall_s": dodge, "wall_ratio": dodge / found["bank"]["local_s"], "saved": saved.saved,
                          "steps_run": saved.steps_run, "steps_planned": saved.steps_planned,
                          "stopped": saved.stopped, "good_runs_lost": len(saved.lost),
                          "failures_caught": len(saved.caught), "failed_kept": saved.failed_kept}
    args.json.write_text(json.dumps(found, indent=1))
    h, s, b, d = found["hardware"], found.get("study"), found["bank"], found["dodge"]
    print(f"{h['cpu']} ({h['cpu_capability']}, {h['cores']} cores), torch {h['torch']}, {h['version']} at "
          f"{h['commit']}, {h['date']}; {args.workers} workers; Ray start-up {found['ray_start_s']:.1f} s\n")
    print("| | local | ray | ray / local | ray's cost per run | records equal |\n|---|---|---|---|---|---|")
    for name, row in (("quick study (4 runs)", s), (f"bank ({b['runs']} runs)", b))[:0 if args.dodge_only else 2]:
        print(f"| {name} | {row['local_s']:.0f} s | {row['ray_s']:.0f} s | {row['ratio']:.2f} | "
              f"{row['ray_per_run_s']:+.1f} s | {'yes' if row['same_records'] else 'NO'} |")
    print(f"\n--stop-early dodge on the bank: {d['stopped']} of {b['runs']} runs stopped, {d['steps_run']} of "
          f"{d['steps_planned']} steps run ({d['saved']:.0%} saved; wall {d['wall_s']:.0f} s, "
          f"{d['wall_ratio']:.2f} x the bank run to the end); good runs lost {d['good_runs_lost']}, failures caught "
          f"{d['failures_caught']}, runs kept that failed {d['failed_kept']}")


if __name__ == "__main__":
    main()

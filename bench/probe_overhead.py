"""Step-time overhead of the probes, measured side by side in one run: ``python3 bench/probe_overhead.py``.

On a BERT-base-sized classifier (random weights, 12 layers, 768 wide; short sequences and a small batch so it runs
in minutes on a CPU) and on the embedded default model (``data/model``, skipped with a note when absent), the
same training step (forward, backward, clipping at 1.0, AdamW) is timed with:

* no probe;
* the probes every step (with and without the post-clipping total) and every 10 steps (gradient norms, activation
  gradients, run scalars, written to HDF5), and attached but recording no step of the block (what an unrecorded
  step costs: hooks that return at once);
* a per-tensor ``p.grad.norm().item()`` loop every step (how the papers' code logged);
* the probes the fine-tuning runner records every step (``diagnostics.finetune.signal_probes``: the above plus the
  early-failure signals), the same past the early window (where the signals only the early-failure features read
  are off), and with the consecutive-gradient cosine it no longer records;
* per-tensor histograms every step (how ``wandb.watch`` logs: ``torch.histc``, 64 bins, copied to the host).

Blocks of ``--steps`` steps are interleaved round-robin (the order rotating each repetition) to cancel drift; the
table gives each variant's median step time and its ratio to no probe, in CPU time of this process (one torch
thread: the work done, steady when other jobs share the machine) and in wall time (which such jobs make noisy).
A block times its steps; the flush of its recorded rows (one host copy and the HDF5 writes, which a run pays once
per 50 recorded steps) is timed on its own and printed beside, and the records file's close (once per run) is not
timed. The operations the probes add to an unrecorded and to a recorded step are counted
(:func:`probes.op_count.probe_step_ops`) and printed above each table; on a GPU each is a kernel launch. The probes'
own work per recorded step (the two fused norm passes) is also timed alone, as a share of a step. ``--device cuda``
times the same on a GPU, each block synchronised before its time is read; compare the wall-time ratios there (the
CPU only launches kernels). ``--against DIR`` times another version of the probes (the ``probes`` package in DIR,
a checkout of another commit) beside this one in the same blocks, and counts its operations too.

``--processes 2`` adds the 2-process columns: the embedded default under torchrun on gloo (one thread per
process, the same global batch split between them), wrapped in DDP, in FSDP1 (FULL_SHARD, flat parameters,
one unit per encoder block) and, when DeepSpeed is installed, in a DeepSpeed ZeRO-2 engine (fp32, clipping at
1.0 inside its step); no probe and probes every step / every 10 steps interleaved the same way; rank 0's times are
reported (``--worker ddp|fsdp1|zero2`` is that worker).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import probes  # noqa: E402
from diagnostics.embedded import DEFAULT_MODEL  # noqa: E402
from diagnostics.finetune import signal_probes  # noqa: E402
from probes.norms import tensor_norms, total_norm  # noqa: E402
from probes.op_count import probe_step_ops  # noqa: E402

DISTRIBUTED_VARIANTS = ("no probe", "probes every step", "probes every 10 steps")
WRAPPERS = ("ddp", "fsdp1", "zero2")
UNRECORDED = "probes attached, no step recorded"
RUNNER = "the runner's probes every step (early-failure signals)"
RUNNER_LATE = "the runner's probes past the early window"
RUNNER_COSINE = "the runner's probes + gradient cosine every step"
VARIANTS = ("no probe", "probes every step", "probes every step, post_clip=False", "probes every 10 steps", UNRECORDED,
            RUNNER, RUNNER_LATE, RUNNER_COSINE, "per-tensor .norm().item()", "per-tensor histc (wandb.watch)")
AGAINST = ("probes every step", "probes every 10 steps")  # timed again with the probes of --against
FLUSH_EVERY = 50  # recorded rows per flush in a run (probes.attach's default)


@dataclass
class BenchConfig:
    batch: int = 4
    length: int = 32
    steps: int = 10
    repetitions: int = 3
    warmup: int = 2
    threads: int = 1
    embedded: Path = DEFAULT_MODEL
    models: tuple[str, ...] = ("bert-base", "embedded")
    processes: int = 1
    device: str = "cpu"
    against: Path | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = BenchConfig()
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--length", type=int, default=defaults.length, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="steps per timed block")
    parser.add_argument("--repetitions", type=int, default=defaults.repetitions)
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="torch threads (1 measures most steadily on a CPU shared with other work)")
    parser.add_argument("--models", default="bert-base,embedded", help="comma-separated: bert-base, embedded")
    parser.add_argument("--embedded", type=Path, default=defaults.embedded, help="the embedded default model folder")
    parser.add_argument("--processes", type=int, choices=(1, 2), default=defaults.processes,
                        help="2: also time the embedded default in 2 processes (DDP, FSDP1 and DeepSpeed ZeRO-2 "
                             "on gloo)")
    parser.add_argument("--device", default=defaults.device, choices=("cpu", "cuda"),
                        help="cuda: time on the GPU (compare the wall-time ratios there: the CPU only launches)")
    parser.add_argument("--against", type=Path, help="a folder holding another version's probes package (a checkout "
                        "of another commit), timed and counted beside this one")
    parser.add_argument("--worker", choices=WRAPPERS, help=argparse.SUPPRESS)
    return parser


def bert_base():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_labels=2))  # BERT-base sizes are the config's defaults


def embedded(folder: Path):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the new classifier head is expected; keep the table readable
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)


def time_model(model, config: BenchConfig, other=None) -> dict[str, tuple[float, float]]:
    """Median (CPU, wall) seconds per step of each variant (blocks interleaved), with ``other`` (another version's
    ``probes`` module) beside this one's; the flush of each probe variant's rows, timed on its own; the probes' own
    work; and the operations the probes add to an unrecorded and a recorded step."""
    device = torch.device(config.device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = {"input_ids": torch.randint(1000, 2000, (config.batch, config.length), device=device),
             "labels": torch.randint(0, 2, (config.batch,), device=device)}
    hooks = _Extras(model)
    counts = {"": _counted(model, batch, probes.attach)}
    if other is not None:
        counts[f" ({config.against})"] = _counted(model, batch, other.attach)
    for _ in range(config.warmup):
        _step(model, optimizer, batch, None)
    names = VARIANTS + tuple(f"{name} ({config.against})" for name in AGAINST if other is not None)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    flushes: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for repetition in range(config.repetitions):
            order = names[repetition % len(names):] + names[: repetition % len(names)]
            for name in order:
                session = _session(name, model, optimizer, Path(folder) / f"{name}-{repetition}.h5",
                                   other if name.endswith(f"({config.against})") else probes)
                start = time.process_time(), time.perf_counter()  # attaching is once per run: not timed
                for _ in range(config.steps):
                    _step(model, optimizer, batch, hooks.get(name))
                if device.type == "cuda":
                    torch.cuda.synchronize()  # the block's kernels have run when its time is read
                times[name].append(((time.process_time() - start[0]) / config.steps,
                                    (time.perf_counter() - start[1]) / config.steps))
                if session is not None:
                    start = time.process_time(), time.perf_counter()
                    session.flush()  # what a run pays once per 50 recorded steps: timed apart from the steps
                    flushes.setdefault(name, []).append((time.process_time() - start[0],
                                                         time.perf_counter() - start[1]))
                    session.close()  # once per run: not timed
    result = {name: (statistics.median(cpu for cpu, _ in values), statistics.median(wall for _, wall in values))
              for name, values in times.items()}
    result.update({f"flush: {name}": (statistics.median(cpu for cpu, _ in values),
                                      statistics.median(wall for _, wall in values))
                   for name, values in flushes.items()})
    result["probe work per recorded step"] = _probe_work(model)
    result["operations"] = counts
    return result


def _session(name: str, model, optimizer, path: Path, package):
    """The probe session of variant ``name`` (None for the variants without probes), from ``package``."""
    if name in (RUNNER, RUNNER_LATE, RUNNER_COSINE):
        chosen = signal_probes(-1 if name == RUNNER_LATE else None)  # until -1: past the early signals' window
        chosen += [package.GradientCosine()] if name == RUNNER_COSINE else []
        return package.attach(model, optimizer, path, probes=chosen, schedule=probes.Schedule(every=1, dense=0))
    if not name.startswith("probes"):
        return None
    every = 10 if "10 steps" in name else 1
    if name == UNRECORDED:  # steps counted from 1 and none of them a multiple of the period
        return package.attach(model, optimizer, path, schedule=probes.Schedule(every=10 ** 9, dense=0), start_step=1)
    return package.attach(model, optimizer, path, schedule=probes.Schedule(every=every, dense=0),
                          post_clip="post_clip=False" not in name)


def _counted(model, batch, attach) -> tuple[int, int]:
    """(unrecorded, recorded): the operations ``attach``'s default probes add to a step of ``model``."""
    steps = probe_step_ops(lambda: model, batch, attach_with=attach)
    return (max(step.total for step in steps if not step.recorded),
            max(step.total for step in steps if step.recorded))


def other_probes(folder: Path):
    """The ``probes`` package in ``folder`` (another version), imported beside this one: this one's modules are set
    aside while it imports, then put back, so that each keeps its own."""
    def ours() -> dict:
        return {name: module for name, module in sys.modules.items() if name == "probes" or name.startswith("probes.")}

    mine = ours()
    for name in mine:
        del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        other = importlib.import_module("probes")
        other.attach  # noqa: B018 - the package imports its names when first used: while its folder is on the path
    finally:
        sys.path.remove(str(folder))
        for name in ours():
            del sys.modules[name]
        sys.modules.update(mine)
    source = Path(inspect.getsourcefile(other.attach)).resolve()
    if (folder / "probes").resolve() not in source.parents:
        raise RuntimeError(f"--against {folder}: its attach comes from {source}")
    return other


def _step(model, optimizer, batch, extra) -> None:
    if hasattr(model, "zero_optimization"):  # a DeepSpeed engine: it reduces, clips and steps itself
        model.backward(model(**batch).loss)
        model.step()
        return
    model(**batch).loss.backward()
    if extra is not None:
        extra()
    if hasattr(model, "clip_grad_norm_"):  # FSDP1 clips over every shard with its own method
        model.clip_grad_norm_(1.0)
    else:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()


def time_distributed(wrapper: str, config: BenchConfig) -> dict[str, tuple[float, float]]:
    """In a torchrun worker: median (CPU, wall) seconds per step of each of ``DISTRIBUTED_VARIANTS`` for the
    embedded default wrapped in ``wrapper``, each process on its share of the global batch."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = embedded(config.embedded).train()
    if wrapper == "zero2":
        import deepspeed

        settings = {"train_micro_batch_size_per_gpu": config.batch // world, "gradient_clipping": 1.0,
                    "zero_optimization": {"stage": 2}, "steps_per_print": 10 ** 9}
        model, optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-5), config=settings)
    else:
        if wrapper == "ddp":
            model = torch.nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import FullyShardedDataParallel
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy

            block = type(probes.find_layers(model).blocks[0])
            model = FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({block}),
                                             device_id=torch.device("cpu"))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 2000, (config.batch, config.length), generator=generator),
             "labels": torch.randint(0, 2, (config.batch,), generator=generator)}
    batch = {key: value.chunk(world)[rank] for key, value in batch.items()}
    for _ in range(config.warmup):
        _step(model, optimizer, batch, None)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in DISTRIBUTED_VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        for repetition in range(config.repetitions):
            shift = repetition % len(DISTRIBUTED_VARIANTS)
            for name in DISTRIBUTED_VARIANTS[shift:] + DISTRIBUTED_VARIANTS[:shift]:
                every = 10 if "10 steps" in name else 1 if name.startswith("probes") else None
                session = (probes.attach(model, optimizer, Path(folder) / f"{name}-{repetition}.h5",
                                         schedule=probes.Schedule(every=every, dense=0)) if every else None)
                dist.barrier()
                start = time.process_time(), time.perf_counter()
                for _ in range(config.steps):
                    _step(model, optimizer, batch, None)
                times[name].append(((time.process_time() - start[0]) / config.steps,
                                    (time.perf_counter() - start[1]) / config.steps))
                if session is not None:
                    session.close()  # the flush's collectives and the file's close: not timed, as in one process
    dist.barrier()
    dist.destroy_process_group()
    return {name: (statistics.median(cpu for cpu, _ in values), statistics.median(wall for _, wall in values))
            for name, values in times.items()}


def run_distributed(wrapper: str, config: BenchConfig) -> dict[str, tuple[float, float]]:
    """Launch ``time_distributed`` under torchrun (2 processes); rank 0's result."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               "--worker", wrapper, "--batch", str(config.batch), "--length", str(config.length), "--steps",
               str(config.steps), "--repetitions", str(config.repetitions), "--embedded", str(config.embedded)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the 2-process {wrapper} run failed:\n{done.stderr[-2000:]}")
    return {name: tuple(value) for name, value in json.loads(lines[0][len("RESULT "):]).items()}


class _Extras:
    """The two logging habits compared against, run after backward and before clipping."""

    def __init__(self, model) -> None:
        self.named = list(model.named_parameters())

    def get(self, name: str):
        extras = {"per-tensor .norm().item()": self.norm_items, "per-tensor histc (wandb.watch)": self.histograms}
        return extras.get(name)

    def norm_items(self) -> dict[str, float]:
        return {name: param.grad.norm().item() for name, param in self.named if param.grad is not None}

    def histograms(self) -> dict[str, list]:
        return {name: torch.histc(param.grad, bins=64).cpu().tolist() for name, param in self.named
                if param.grad is not None}


def _probe_work(model, repeats: int = 5) -> tuple[float, float]:
    """(CPU, wall) seconds of the probes' fused passes of one recorded step: pre-clip norms, post-clip total."""
    device = next(model.parameters()).device
    model(input_ids=torch.randint(1000, 2000, (2, 8), device=device),
          labels=torch.tensor([0, 1], device=device)).loss.backward()
    grads = [param.grad for param in model.parameters()]
    start = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        total_norm(tensor_norms(grads, grads[0].device))
        total_norm(tensor_norms(grads, grads[0].device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    model.zero_grad()
    return (time.process_time() - start[0]) / repeats, (time.perf_counter() - start[1]) / repeats


def run(config: BenchConfig) -> dict[str, dict | str]:
    results: dict[str, dict | str] = {}
    other = other_probes(config.against) if config.against is not None else None
    if "bert-base" in config.models:
        results["BERT-base size (random weights)"] = time_model(bert_base(), config, other)
    if "embedded" in config.models and (config.embedded / "config.json").exists():
        results[f"embedded default ({config.embedded})"] = time_model(embedded(config.embedded), config, other)
    elif "embedded" in config.models:
        results["embedded default"] = f"skipped: no model at {config.embedded} yet (build it with data/build_model.py)"
    if config.processes == 2 and (config.embedded / "config.json").exists():
        for wrapper in WRAPPERS:
            name = f"embedded default, 2 processes on gloo, {wrapper.upper()}"
            if wrapper == "zero2" and importlib.util.find_spec("deepspeed") is None:
                results[name] = "skipped: DeepSpeed is not installed (pip install -e \".[deepspeed]\")"
                continue
            results[name] = run_distributed(wrapper, config)
    return results


def report(results: dict, config: BenchConfig) -> str:
    lines = [f"batch {config.batch} x {config.length} tokens, {config.steps} steps per block, {config.repetitions} "
             f"interleaved repetitions, {torch.get_num_threads()} thread(s), {config.device}; medians per step "
             f"(flush: per flush, a run's every {FLUSH_EVERY} recorded steps; share: of a step, per recorded step)",
             f"  {'':52s} {'CPU s':>8s} {'ratio':>7s} {'wall s':>8s} {'ratio':>7s}"]
    for model, timing in results.items():
        lines.append(f"\n{model}")
        if isinstance(timing, str):
            lines.append(f"  {timing}")
            continue
        for version, (unrecorded, recorded) in timing.get("operations", {}).items():
            lines.append(f"  operations the probes{version} add to a step: {unrecorded} unrecorded, {recorded} recorded")
        base_cpu, base_wall = timing["no probe"]
        for name, value in timing.items():
            if name == "operations":
                continue
            cpu, wall = value
            if name.startswith("flush: "):
                cpu, wall = cpu / FLUSH_EVERY, wall / FLUSH_EVERY
                name = name.replace("flush: ", "flush share: ")
            lines.append(f"  {name:52s} {cpu:8.4f} {cpu / base_cpu:6.3f}x {wall:8.4f} {wall / base_wall:6.3f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.batch, args.length, args.steps, args.repetitions, args.threads) < 1:
        print("--batch, --length, --steps, --repetitions and --threads must be at least 1", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no GPU here; use --device cpu", file=sys.stderr)
        return 2
    models = tuple(args.models.split(","))
    if not models or set(models) - {"bert-base", "embedded"}:
        print(f"--models {args.models!r}: use bert-base, embedded or both, comma-separated", file=sys.stderr)
        return 2
    if args.against is not None and not (args.against / "probes" / "__init__.py").exists():
        print(f"--against {args.against}: no probes package there (give the folder that holds probes/)",
              file=sys.stderr)
        return 2
    config = BenchConfig(args.batch, args.length, args.steps, args.repetitions, threads=args.threads,
                         embedded=args.embedded, models=models, processes=args.processes, device=args.device,
                         against=args.against)
    torch.set_num_threads(config.threads)
    if args.worker:
        result = time_distributed(args.worker, config)
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(result), flush=True)
        return 0
    print(report(run(config), config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

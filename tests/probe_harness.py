"""The shared probe harness: a real tiny training loop, an independent norm oracle, and a hook counter.

``run_loop(LoopConfig(...), path)`` trains a tiny real model (``tests/tiny.py``) for a few steps with or without
probes and returns the losses, final weights, RNG state and, per step, the oracle's pre-clip norms computed
straight from ``param.grad`` (float64, grouped with plain Python), so every probe test compares against the same
reference. Run as a script under torchrun it is the distributed worker of ``tests/test_probes_ddp.py``:
``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/probe_harness.py MODE[,MODE...] FOLDER``
with modes ``ddp``, ``fsdp2``, the ``FSDP1`` ones (``fsdp1-flat-full``...) and the DeepSpeed ones (``zero1``...).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import tiny  # noqa: E402
import probes  # noqa: E402
from layer_table import layer_of  # noqa: E402
from probes.records import RunRecords, open_run  # noqa: E402


@dataclass
class LoopConfig:
    """One tiny training run: ``accumulation`` micro-batches per step, optional clipping, bf16 autocast, a
    GradScaler (its initial scale), a NaN loss at ``nan_at`` (and whether the loop then skips the step)."""

    arch: str = "bert"
    steps: int = 5
    batch: int = 8
    length: int = 12
    accumulation: int = 1
    clip: float | None = None
    lr: float = 1e-3
    bf16: bool = False
    scale: float | None = None
    nan_at: int | None = None
    skip_nonfinite: bool = False
    probe: bool = True
    schedule: probes.Schedule = field(default_factory=lambda: probes.Schedule(every=1, dense=0))
    probe_list: list | None = None
    optimizer: type | None = None


@dataclass
class LoopResult:
    losses: list[float]
    oracle: list[dict[str, float]]
    oracle_total: list[float]
    weights: dict[str, torch.Tensor]
    rng: torch.Tensor
    hooks_inside: int
    records: RunRecords | None
    logits: list[list[np.ndarray]] = field(default_factory=list)
    second_moments: list[dict[str, float]] = field(default_factory=list)


def oracle_layers(model) -> dict[str, float]:
    """Per-layer L2 norms of ``param.grad`` (float64 per tensor, summed in Python), grouped by the hand-written
    table of tests/layer_table.py, not by the code under test."""
    sums: dict[str, float] = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            group = layer_of(model.config.model_type, name)
            sums[group] = sums.get(group, 0.0) + float(param.grad.double().norm()) ** 2
    return {group: total ** 0.5 for group, total in sums.items()}


def oracle_second_moments(model, optimizer) -> dict[str, float]:
    """Per-layer L2 norms of the optimiser's ``exp_avg_sq`` (float64 per tensor, summed in Python), grouped by the
    hand-written table of tests/layer_table.py."""
    sums: dict[str, float] = {}
    for name, param in model.named_parameters():
        if "exp_avg_sq" in optimizer.state.get(param, {}):
            group = layer_of(model.config.model_type, name)
            sums[group] = sums.get(group, 0.0) + float(optimizer.state[param]["exp_avg_sq"].double().norm()) ** 2
    return {group: total ** 0.5 for group, total in sums.items()}


def oracle_matrix(oracle: list[dict[str, float]], columns: list[str]) -> np.ndarray:
    """Per-step oracle values laid out as a series' ``(steps, columns)`` values."""
    return np.array([[step[column] for column in columns] for step in oracle])


def interpolation_probe() -> "probes.Interpolation":
    """The interpolation probe of the distributed test: two held batches (one of odd size, split unevenly across
    ranks), evaluated after steps 1 and 3 of four, both lines."""
    sample = [tiny.batch(6, 12, seed=50), tiny.batch(5, 9, seed=51)]
    return probes.Interpolation(sample, total_steps=4, times=2, last_update=True)


def count_hooks(model, optimizer) -> int:
    """Every module and optimiser hook currently registered."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    modules = sum(len(getattr(module, kind)) for module in model.modules() for kind in kinds)
    return modules + len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)


def run_loop(config: LoopConfig, path: Path | None = None, model=None, batches=None) -> LoopResult:
    """Train; with ``config.probe`` a probe session records to ``path`` (None: compute without writing)."""
    model = model if model is not None else tiny.classifier(config.arch, seed=0)
    model.train()
    optimizer = (config.optimizer or torch.optim.AdamW)(model.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=config.scale) if config.scale else None
    torch.manual_seed(1)
    losses, oracle, totals, inside, logits, moments = [], [], [], 0, [], []
    session = (probes.attach(model, optimizer, path, schedule=config.schedule, probes=config.probe_list,
                             scaler=scaler, strict=True) if config.probe else None)
    try:
        for step in range(config.steps):
            logits.append([])
            for micro in range(config.accumulation):
                batch = batches[step][micro] if batches else tiny.batch(config.batch, config.length,
                                                                         seed=step * 100 + micro)
                torch.rand(())  # a draw from the global RNG: probes must leave the RNG where it was
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                    output = model(**batch)
                    loss = output.loss / config.accumulation
                logits[-1].append(output.logits.detach().double().numpy())
                if step == config.nan_at:
                    loss = loss * float("nan")
                losses.append(float(loss.detach()))
                (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            oracle.append(oracle_layers(model))
            totals.append(float(np.sqrt(sum(v ** 2 for v in oracle[-1].values()))))
            inside = count_hooks(model, optimizer)
            if config.skip_nonfinite and not np.isfinite(totals[-1]):
                optimizer.zero_grad()
                continue
            if config.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad()
            moments.append(oracle_second_moments(model, optimizer))
    finally:
        if session is not None:
            session.close()
    weights = {name: value.detach().clone() for name, value in model.state_dict().items()}
    records = open_run(path) if config.probe and path is not None and Path(path).exists() else None
    return LoopResult(losses, oracle, totals, weights, torch.get_rng_state(), inside, records, logits, moments)


def distributed_probes(interpolation: bool = True) -> list:
    """The probes of the distributed runs and of their one-process oracle: the defaults, parameter norms and the
    interpolation probe (which refuses FSDP1)."""
    chosen = [probes.GradientNorms(), probes.ActivationGradients(), probes.ParameterNorms()]
    return chosen + [interpolation_probe()] if interpolation else chosen


FSDP1 = {"fsdp1-flat-full": (False, "FULL_SHARD"), "fsdp1-orig-full": (True, "FULL_SHARD"),
         "fsdp1-flat-grad-op": (False, "SHARD_GRAD_OP"), "fsdp1-orig-grad-op": (True, "SHARD_GRAD_OP")}


ZERO = {"zero1": {"stage": 1}, "zero2": {"stage": 2}, "zero3": {"stage": 3},
        "zero2-bf16": {"stage": 2, "bf16": True}, "zero3-bf16": {"stage": 3, "bf16": True},
        "zero1-fp16": {"stage": 1, "fp16": 8}, "zero3-fp16": {"stage": 3, "fp16": 8},
        "zero2-fp16-overflow": {"stage": 2, "fp16": 17},
        "zero2-offload": {"stage": 2, "offload": True}, "zero3-offload": {"stage": 3, "offload": True},
        "zero3-accumulation": {"stage": 3, "accumulation": 2}}


def deepspeed_engine(mode: str, model, world: int):
    """``(engine, ZeRO optimiser)`` of DeepSpeed at the ZeRO stage, precision (fp32, bf16, or fp16 from the loss
    scale 2^``fp16``), optimiser offload and gradient accumulation of ``mode``, torch's AdamW, clipping to 0.1 (as
    the one-process run), each rank on its half of the global batch of 8 (in ``accumulation`` micro-batches)."""
    import deepspeed

    setting = ZERO[mode]
    zero = {"stage": setting["stage"]}
    if setting.get("offload"):
        zero["offload_optimizer"] = {"device": "cpu"}
    accumulation = setting.get("accumulation", 1)
    config = {"train_micro_batch_size_per_gpu": 8 // world // accumulation,
              "gradient_accumulation_steps": accumulation,
              "gradient_clipping": 0.1, "zero_optimization": zero, "bf16": {"enabled": setting.get("bf16", False)},
              "fp16": {"enabled": "fp16" in setting, "initial_scale_power": setting.get("fp16", 16)},
              "zero_force_ds_cpu_optimizer": False, "steps_per_print": 10 ** 9}
    engine, optimizer, _, _ = deepspeed.initialize(model=model, config=config,
                                                   optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    return engine, optimizer


def wrap(mode: str, model, layer_map, world: int):
    """``model`` under ``mode``: ``ddp``, ``fsdp2`` (every block and the model ``fully_shard``-ed) or one of
    ``FSDP1`` (every block and the model in ``FullyShardedDataParallel``, flat or original parameters)."""
    if mode == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    if mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for block in layer_map.blocks:
            fully_shard(block, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    orig, strategy = FSDP1[mode]
    return FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({type(layer_map.blocks[0])}),
                                    use_orig_params=orig, sharding_strategy=ShardingStrategy[strategy],
                                    device_id=torch.device("cpu"))


def train_distributed(mode: str, out: Path, rank: int, world: int) -> list[dict[str, float]]:
    """4 steps, each rank on its half of every global batch, clipped to 0.1; returns rank 0's post-all-reduce
    oracle under DDP, or DeepSpeed's own full gradients and global norm under ZeRO (empty otherwise: sharded
    gradients have no single-rank oracle). Mode ``accelerate-fsdp``:
    ``accelerator.prepare`` with an FSDP1 plugin (what it wraps the model in is written next to ``out``)."""
    model = tiny.classifier("bert", seed=0)
    layer_map = probes.find_layers(model)
    optimizer = None
    if mode == "accelerate-fsdp":
        import accelerate

        plugin = accelerate.FullyShardedDataParallelPlugin(
            fsdp_version=1, auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=[type(layer_map.blocks[0]).__name__])
        accelerator = accelerate.Accelerator(cpu=True, fsdp_plugin=plugin)
        wrapped, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
        if rank == 0:
            out.with_suffix(".txt").write_text(type(wrapped).__name__)
    elif mode == "accelerate-zero2":
        import accelerate

        plugin = accelerate.DeepSpeedPlugin(zero_stage=2, gradient_clipping=0.1)
        plugin.deepspeed_config.update(train_micro_batch_size_per_gpu=8 // world, train_batch_size=8)
        accelerator = accelerate.Accelerator(deepspeed_plugin=plugin)
        wrapped, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
        if rank == 0:
            out.with_suffix(".txt").write_text(type(wrapped).__name__)
    elif mode in ZERO:
        wrapped, optimizer = deepspeed_engine(mode, model, world)
    else:
        wrapped = wrap(mode, model, layer_map, world)
    optimizer = optimizer or torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
    oracle = []
    chosen = distributed_probes(interpolation=mode in ("ddp", "fsdp2"))
    if mode in ZERO:
        chosen.append(probes.AdamSecondMoment())
    with probes.attach(wrapped, optimizer, out, schedule=probes.Schedule(every=1, dense=0), strict=True,
                       probes=chosen):
        for step in range(4):
            batch = tiny.batch(8, 12, seed=step * 100)
            half = {key: value.chunk(world)[rank] for key, value in batch.items()}
            if mode in ZERO:  # DeepSpeed's own loop: it reduces, clips and steps (at the last micro-batch)
                micro = [dict(zip(half, values)) for values in zip(*(v.chunk(ZERO[mode].get("accumulation", 1))
                                                                      for v in half.values()))]
                for part in micro[:-1]:
                    wrapped.backward(wrapped(**part).loss)
                    wrapped.step()
                wrapped.backward(wrapped(**micro[-1]).loss)
                oracle.append(deepspeed_oracle(model, float(optimizer.loss_scale)))
                wrapped.step()
                oracle[-1]["second_moment"] = (deepspeed_oracle(model, 1.0, "exp_avg_sq") if wrapped.was_step_applied()
                                               else {layer: float("nan") for layer in oracle[-1]})
                oracle[-1]["deepspeed_global_norm"] = float(wrapped.get_global_grad_norm())
                continue
            if mode == "accelerate-zero2":  # Accelerate's backward runs DeepSpeed's backward and step
                accelerator.backward(wrapped(**half).loss)
                optimizer.step()
                optimizer.zero_grad()
                continue
            wrapped(**half).loss.backward()
            if mode == "ddp":
                oracle.append(oracle_layers(model))
            if mode == "accelerate-fsdp":
                accelerator.clip_grad_norm_(wrapped.parameters(), 0.1)
            elif mode in FSDP1:
                wrapped.clip_grad_norm_(0.1)  # FSDP1's own: the parameters' norms over every shard
            else:
                torch.nn.utils.clip_grad_norm_(wrapped.parameters(), 0.1)
            optimizer.step()
            optimizer.zero_grad()
    return oracle


REFUSED = {"stage 0": {"zero_optimization": {"stage": 0}},
           "stage 0, bf16": {"zero_optimization": {"stage": 0}, "bf16": {"enabled": True}},
           "ZeRO-3, torch optimiser": {"zero_optimization": {"stage": 3}},
           "ZeRO-2, interpolation": {"zero_optimization": {"stage": 2}}}


def deepspeed_refusals(folder: Path, rank: int, world: int) -> dict[str, str]:
    """What ``probes.attach`` says to each DeepSpeed setting of ``REFUSED`` (the engine and its optimiser; for
    "ZeRO-3, torch optimiser" the bare module and a torch optimiser; for "interpolation" with the interpolation
    probe); asserts on rank 0, the one that writes, that no records file was left."""
    import deepspeed

    said = {}
    for name, setting in REFUSED.items():
        config = {"train_micro_batch_size_per_gpu": 8 // world, "steps_per_print": 10 ** 9, **setting}
        model = tiny.classifier("bert", seed=0)
        try:
            engine, optimizer, _, _ = deepspeed.initialize(
                model=model, config=config, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
        except Exception as error:  # a setting this CPU build cannot run (then probes never see it)
            said[name] = f"DeepSpeed cannot run it here: {type(error).__name__}"
            continue
        if name.endswith("torch optimiser"):
            engine, optimizer = engine.module, torch.optim.AdamW(engine.module.parameters(), lr=1e-3)
        chosen = [interpolation_probe()] if name.endswith("interpolation") else None
        try:
            probes.attach(engine, optimizer, folder / "refused.h5", probes=chosen)
            said[name] = "accepted"
        except ValueError as error:
            said[name] = str(error)
        assert rank != 0 or not (folder / "refused.h5").exists()
    return said


def deepspeed_oracle(model, scale: float, state: str | None = None) -> dict[str, float]:
    """Per-layer norms of the full gradients DeepSpeed assembles itself (``safe_get_full_grad``: collectives per
    parameter, every rank must call it) between ``engine.backward`` and ``engine.step``, divided by the loss
    ``scale`` (fp16); or of the optimiser's full ``state`` (``safe_get_full_optimizer_state``) after the step."""
    from deepspeed.utils import safe_get_full_grad, safe_get_full_optimizer_state

    sums: dict[str, float] = {}
    for name, param in model.named_parameters():
        group = layer_of(model.config.model_type, name)
        full = safe_get_full_grad(param) if state is None else safe_get_full_optimizer_state(param, state)
        sums[group] = sums.get(group, 0.0) + float(full.double().norm() / scale) ** 2
    return {group: total ** 0.5 for group, total in sums.items()}


def distributed_worker(modes: list[str], folder: Path) -> None:
    """Train under each of ``modes`` in turn on gloo; rank 0 writes ``MODE.h5`` and, for DDP and ZeRO, ``MODE.json``
    (its oracle) into ``folder``."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    for mode in modes:
        if mode == "deepspeed-refusals":
            said = deepspeed_refusals(folder, rank, world)
            if rank == 0:
                (folder / f"{mode}.json").write_text(json.dumps(said))
            continue
        oracle = train_distributed(mode, folder / f"{mode}.h5", rank, world)
        if rank == 0 and oracle:
            (folder / f"{mode}.json").write_text(json.dumps(oracle))
    dist.barrier()
    dist.destroy_process_group()
    # Gloo's background threads can abort the interpreter's own teardown ("terminate called without an active
    # exception", seen once in CI with FSDP2): everything is written, so leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    distributed_worker(sys.argv[1].split(","), Path(sys.argv[2]))

"""Small but realistic records files for the figure tests, written by the real ``records.RunWriter``.

The numbers imitate what the papers report (see /work/shared/paper-facts.md), scaled down: a failed run whose
encoder gradient norms collapse to ~1e-5 right after warm-up while its loss stays at ln 2; a successful run whose
norms dip and then grow; forgetting curves that recover to the pre-trained perplexity; a loss plane from an
analytic function with a barrier between the failed and the successful minimum; a multi-seed study. Not a test
module: ``python3 -c "import sys; sys.path.insert(0, 'tests'); import records_factory as f; f.example_runs('out')"``
writes a folder of them to look at.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from probes.catalogue import (ACTIVATION_NORMS, COMPONENT_NORMS, EVAL, FORGETTING, INTERPOLATION_START, LAYER_NORMS,
                               SURFACE_PLANE, TRAIN)
from probes.records import RunMeta, RunWriter, write_grid

LN2 = float(np.log(2.0))
INTERPOLATION_A = np.linspace(-0.25, 1.25, 7)
MAJORITY = {"rte": 0.527, "mrpc": 0.684}
COMPONENTS = {
    "embeddings": ["word_embeddings.weight"],
    "encoder": ["attention.self.query.weight", "attention.self.key.weight", "output.dense.weight"],
    "pooler": ["dense.weight"],
    "head": ["classifier.weight"],
}


def finetune_run(path: str | Path, *, failed: bool, seed: int = 1, depth: int = 6, steps: int = 300,
                 task: str = "rte", recipe: str = "default", gradients: bool = True,
                 forgetting: bool = True, final_loss: float | None = None) -> Path:
    """One fine-tuning run: train/eval scalars, optionally gradient norms and a forgetting curve, a summary."""
    rng = np.random.default_rng(seed)
    warmup = int(0.1 * steps)
    lr = _schedule(steps, warmup, 2e-5)
    loss = _train_loss(steps, failed, rng, final_loss)
    eval_steps = np.arange(0, steps + 1, max(1, steps // 10))
    accuracy = _dev_accuracy(eval_steps / steps, failed, task, rng)
    meta = RunMeta(model="tiny-bert", seed=seed, task=task, recipe=recipe, argv=["records_factory"],
                   config={"lr": 2e-5, "epochs": 3, "warmup_ratio": 0.1, "total_steps": steps, "batch_size": 16})
    with RunWriter.create(path, meta) as run:
        run.set_summary({"final_dev_metric": float(accuracy[-1]), "metric": "accuracy",
                         "majority": MAJORITY.get(task, 0.5), "failed": int(failed), "steps": steps})
        run.add_series(TRAIN.name, ["loss", "lr"], kind=TRAIN.kind)
        run.add_series(EVAL.name, ["accuracy", "loss"], kind=EVAL.kind)
        layers = _layer_names(depth)
        if gradients:
            run.add_series(LAYER_NORMS.name, layers, kind=LAYER_NORMS.kind, attrs={"clipping": "pre"},
                           axes={"depth": [_depth(name, depth) for name in layers]})
            run.add_series(COMPONENT_NORMS.name, _component_names(layers), kind=COMPONENT_NORMS.kind,
                           attrs={"clipping": "pre"})
            run.add_series(ACTIVATION_NORMS.name, layers[1:-2], kind=ACTIVATION_NORMS.kind,
                           axes={"depth": np.arange(1, depth + 1, dtype="f8")})
            run.add_series(INTERPOLATION_START.name,
                           [f"{field}@{a:g}" for field in ("loss", "accuracy") for a in INTERPOLATION_A],
                           kind=INTERPOLATION_START.kind, attrs={"line": "theta_0 + a (theta_t - theta_0), the start"},
                           axes={"a": np.tile(INTERPOLATION_A, 2), "field": np.repeat(["loss", "accuracy"], 7)})
        run.start()
        for step in range(steps):
            run.append(TRAIN.name, step, [loss[step], lr[step]])
        for step, value in zip(eval_steps, accuracy):
            run.append(EVAL.name, int(step), [value, LN2 + 0.01 if failed else 0.7 - 0.3 * step / steps])
        if gradients:
            norms = _gradient_norms(steps, warmup, depth, failed, rng)
            for step in range(steps):
                run.append(LAYER_NORMS.name, step, norms[step])
                run.append(COMPONENT_NORMS.name, step, _split_components(norms[step], layers))
                run.append(ACTIVATION_NORMS.name, step, 0.05 * norms[step, 1:-2])
            for step in sorted({round(steps * k / 10) - 1 for k in range(1, 11)}):
                run.append(INTERPOLATION_START.name, step, _interpolation(step / steps, failed, rng))
    if forgetting:
        _forgetting(path, depth, failed, rng)
    return Path(path)


def surface_records(path: str | Path, *, size: int = 25) -> Path:
    """A file holding a loss plane (``surfaces/plane``) and a 1-D interpolation (``surfaces/line``)."""
    axis = np.linspace(-1.5, 1.5, size)
    a, b = np.meshgrid(axis, axis, indexing="ij")
    loss, accuracy = _landscape(a, b)
    attrs = {"labels": ["pre-trained", "failed", "successful"], "checkpoints": ["p", "f", "s"],
             "task": "rte", "split": "train"}
    meta = RunMeta(model="tiny-bert", task="rte", argv=["records_factory"])
    write_grid(path, "plane", {"a": axis, "b": axis}, {"loss": loss, "accuracy": accuracy}, kind=SURFACE_PLANE.kind,
               attrs={**attrs, "kind": "plane"}, meta=meta)
    line = np.linspace(-0.5, 1.5, 41)
    loss, accuracy = _landscape(1 - line, line)
    write_grid(path, "line", {"a": line}, {"loss": loss, "accuracy": accuracy}, kind=SURFACE_PLANE.kind,
               attrs={**attrs, "kind": "line", "labels": ["failed", "successful"]})
    _barriers(path)
    return Path(path)


def _barriers(path: str | Path) -> None:
    """``surfaces/barriers``: four runs, two basins (runs 0, 1 and runs 2, 3), run 3 failed."""
    a, own, basin = np.linspace(0, 1, 5), np.array([0.05, 0.07, 0.06, LN2]), [0, 0, 1, 1]
    loss = np.array([[(1 - a) * own[i] + a * own[j] + (0.3 * np.sin(np.pi * a) if basin[i] != basin[j] else 0)
                      for j in range(4)] for i in range(4)])
    write_grid(path, "barriers", {"first": np.arange(4), "second": np.arange(4), "a": a},
               {"loss": loss, "accuracy": 1 - loss / 2}, kind="surfaces",
               attrs={"kind": "barriers", "labels": [f"rte-mosbach-s{k}" for k in range(4)], "task": "rte",
                      "split": "train", "failed": [False, False, False, True], "dev_metric": [0.7, 0.68, 0.6, 0.5],
                      "metric": "accuracy"})


def study(folder: str | Path, *, tasks=("rte", "mrpc"), recipes=("default", "mosbach"), seeds: int = 5,
          steps: int = 120) -> list[Path]:
    """A multi-seed study: the default recipe fails on about half the seeds, the Mosbach baseline on none."""
    folder = Path(folder)
    paths = []
    for task in tasks:
        for recipe in recipes:
            for seed in range(1, seeds + 1):
                failed = recipe == "default" and seed % 2 == 1
                out = folder / f"{task}-{recipe}-s{seed}"
                out.mkdir(parents=True, exist_ok=True)
                final_loss = None if failed else 10 ** -(1.5 + 1.5 * ((seed * 7919 + len(task)) % 11) / 10)
                paths.append(finetune_run(out / "run.h5", failed=failed, seed=seed, steps=steps, task=task,
                                          recipe=recipe, gradients=False, forgetting=False,
                                          final_loss=final_loss))
    return paths


def example_runs(folder: str | Path) -> list[Path]:
    """Everything above in one folder: two gradient runs with forgetting curves, a surface file and a study."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [finetune_run(folder / "failed.h5", failed=True, seed=3),
             finetune_run(folder / "successful.h5", failed=False, seed=4),
             finetune_run(folder / "failed-2.h5", failed=True, seed=5, gradients=False),
             finetune_run(folder / "successful-2.h5", failed=False, seed=6, gradients=False),
             surface_records(folder / "surface.h5")]
    return paths + study(folder / "study")


# ----------------------------------------------------------------------------------------------- the numbers


def _schedule(steps: int, warmup: int, peak: float) -> np.ndarray:
    step = np.arange(steps)
    return np.where(step < warmup, peak * (step + 1) / warmup, peak * (steps - step) / (steps - warmup))


def _train_loss(steps: int, failed: bool, rng: np.random.Generator, final: float | None) -> np.ndarray:
    t = np.arange(steps) / steps
    if failed:
        return LN2 + 0.02 * np.exp(-10 * t) + 0.01 * rng.standard_normal(steps)
    final = 0.05 if final is None else final
    return final + (0.7 - final) * np.exp(-6 * t) * (1 + 0.15 * rng.standard_normal(steps)) ** 2


def _dev_accuracy(t: np.ndarray, failed: bool, task: str, rng: np.random.Generator) -> np.ndarray:
    majority = MAJORITY.get(task, 0.5)
    if failed:
        return majority + np.where(t < 0.15, 0.03, 0.0) * rng.random(len(t))
    best = majority + 0.1 + 0.08 * rng.random()
    return majority + (best - majority) * (1 - np.exp(-5 * t)) + 0.01 * rng.standard_normal(len(t))


def _layer_names(depth: int) -> list[str]:
    return ["embeddings", *(f"encoder.{d}" for d in range(1, depth + 1)), "pooler", "head"]


def _depth(name: str, depth: int) -> int:
    special = {"embeddings": 0, "pooler": depth + 1, "head": depth + 2}
    return special[name] if name in special else int(name.split(".")[1])


def _component_names(layers: list[str]) -> list[str]:
    return [f"{layer}/{part}" for layer in layers for part in COMPONENTS[layer.split(".")[0]]]


def _split_components(norms: np.ndarray, layers: list[str]) -> list[float]:
    """Each layer's norm shared out over its matrices (the squares add up to the layer's square)."""
    row = []
    for norm, layer in zip(norms, layers):
        parts = len(COMPONENTS[layer.split(".")[0]])
        row += [norm * np.sqrt(w / sum(range(1, parts + 1))) for w in range(parts, 0, -1)]
    return row


def _gradient_norms(steps: int, warmup: int, depth: int, failed: bool, rng: np.random.Generator) -> np.ndarray:
    """Rows of [embeddings, encoder.1..L, pooler, head] norms: the papers' Figure 4 in miniature."""
    step = np.arange(steps)[:, None]
    level = np.linspace(-1.8, -1.0, depth)[None, :]  # lower layers get smaller gradients
    if failed:
        collapse = np.clip((step - warmup) / 15, 0, 1)
        log_encoder = level - collapse * (3.1 + 0.15 * np.arange(depth))[None, :]
        log_head = 0.3 - 0.2 * collapse
        log_pooler = -0.8 - 2.5 * collapse
    else:
        dip = np.exp(-((step - 2.3 * warmup) / (1.5 * warmup)) ** 2)
        grow = np.clip((step - 2.3 * warmup) / (steps - 2.3 * warmup), 0, 1)
        log_encoder = level - 1.2 * dip + 1.3 * grow
        log_head = 0.2 - 0.6 * dip + 0.2 * grow
        log_pooler = -0.6 - 0.8 * dip + 0.6 * grow
    log_embeddings = log_encoder[:, :1] - 0.5
    logs = np.hstack([log_embeddings, log_encoder, np.broadcast_to(log_pooler, (steps, 1)),
                      np.broadcast_to(log_head, (steps, 1))])
    return 10 ** (logs + 0.12 * rng.standard_normal(logs.shape))


def _interpolation(t: float, failed: bool, rng: np.random.Generator) -> np.ndarray:
    """Loss and accuracy along the line from the start at a share ``t`` of training: a plateau at ln 2 for a failed
    run, a descent deepening with training for a successful one (a parabola through ln 2 at the start)."""
    a = INTERPOLATION_A
    if failed:
        loss = LN2 + 0.003 * (a - 0.5) ** 2 + 0.001 * rng.standard_normal(a.size)
        return np.concatenate([loss, np.full(a.size, 0.5)])
    depth = (LN2 - 0.08) * (1 - np.exp(-4 * t))
    return np.concatenate([LN2 - depth * a * (2 - a), 0.5 + 0.35 * (1 - np.exp(-4 * t)) * np.clip(a * (2 - a), 0, 1)])


def _forgetting(path: str | Path, depth: int, failed: bool, rng: np.random.Generator) -> None:
    pretrained = 9.4
    k = np.arange(depth + 1)
    start = 10 ** rng.uniform(4, 6.5) if failed else rng.uniform(13, 27)
    recovered = np.clip(k / (depth / 2), 0, 1)
    perplexity = np.exp(np.log(start) + (np.log(pretrained * 1.01) - np.log(start)) * recovered ** 0.7)
    write_grid(path, "top", {"k": k}, {"perplexity": perplexity}, kind=FORGETTING.kind,
               attrs={"direction": "top", "pretrained_perplexity": pretrained, "masked_tokens": 4096})
    height = k / depth  # 0 at the embeddings, 1 at the top block: fine-tuning moves the top most
    moved = (0.02 + (0.3 if failed else 0.1) * height ** 2) * rng.uniform(0.9, 1.1, depth + 1)
    profile = {"alone": pretrained * np.exp(moved * (40 if failed else 5)), "cka": 1 - 2 * moved,
               "weight_change": moved}
    layers = ["embeddings"] + [f"encoder.{d}" for d in range(1, depth + 1)]
    write_grid(path, "top", {"depth": k}, profile, kind="forgetting_profile",
               attrs={"direction": "top", "layers": layers, "masked_tokens": 4096})


def _landscape(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training loss and accuracy on the plane: flat at ln 2 around the pre-trained (0, 0) and the failed (1, 0)
    model, a deep minimum at the successful one (0, 1), a barrier between failed and successful, rising far out."""
    valley = np.exp(-(a ** 2 + (b - 1.0) ** 2) / 0.12)
    barrier = 0.6 * np.exp(-((a - b + 0.2) ** 2) / 0.02) * np.exp(-((a + b - 1.0) ** 2) / 0.4)
    bowl = 0.8 * np.clip(np.hypot(a, b - 0.5) - 1.2, 0, None) ** 2
    loss = ((LN2 + bowl) * (1 - valley) + 0.01 * valley + barrier).astype("f8")
    accuracy = np.clip(0.527 + 0.2 * valley - 0.05 * barrier, 0, 1)
    return loss, accuracy

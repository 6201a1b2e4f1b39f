"""A Hugging Face ``Trainer`` run with :class:`probes.ProbeCallback` on a tiny real model: 3 steps, clipped, on a
fixed dataset; in one process, or as the torchrun worker of ``tests/test_probes_ddp.py``, where each of the
processes takes its share of every global batch:
``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/trainer_worker.py FOLDER PER_DEVICE_BATCH
[ARGUMENT=VALUE...]`` (more ``TrainingArguments``).
Rank 0 writes ``FOLDER/run.h5``, ``FOLDER/wrapped.txt`` (the type of the model the Trainer trained) and
``FOLDER/logged.json`` (the ``grad_norm`` the Trainer logged at each step).
"""
from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import tiny  # noqa: E402
import probes  # noqa: E402


def dataset(size: int = 24) -> list[dict]:
    batch = tiny.batch(size, 10, seed=7)
    return [{key: value[i] for key, value in batch.items()} for i in range(size)]


def train(folder: Path, per_device_batch: int, **options):
    """Train 3 steps of ``per_device_batch`` examples per process, clipped to 0.05, probes on every step."""
    import transformers

    args = transformers.TrainingArguments(
        output_dir=str(folder / "trainer"), max_steps=3, per_device_train_batch_size=per_device_batch,
        learning_rate=1e-3, max_grad_norm=0.05, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        disable_tqdm=True, seed=0, **options)
    callback = probes.ProbeCallback(folder / "run.h5", schedule=probes.Schedule(every=1), strict=True)
    trainer = transformers.Trainer(model=tiny.classifier("bert"), args=args, train_dataset=dataset(),
                                   callbacks=[callback])
    trainer.train()
    if trainer.args.process_index == 0:
        (folder / "wrapped.txt").write_text(type(trainer.model_wrapped).__name__)
        logged = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
        (folder / "logged.json").write_text(json.dumps([float(norm) for norm in logged]))
    return trainer


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    options = dict(arg.split("=", 1) for arg in sys.argv[3:])  # TrainingArguments: NAME=VALUE (a Python literal)
    train(Path(sys.argv[1]), int(sys.argv[2]), **{name: _value(text) for name, text in options.items()})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as tests/probe_harness.py: gloo's threads can abort the interpreter's teardown

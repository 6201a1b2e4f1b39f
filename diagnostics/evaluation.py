"""The classifier evaluation that the loss surfaces, the barriers and the fine-tuning runner share.

A checkpoint is loaded once, a task split is tokenised once into length-sorted batches, and `evaluate` gives the
mean cross-entropy and the accuracy of the model at its current weights over those batches. The surface and
barrier commands move the weights between calls (``probes.model.interpolation.Subspace``); the runner takes its
interpolation probe's held sample from `prepare_batches`, so the probe and ``diagnostics.surface --line`` see the
same batches. Every error is one line naming the problem and the fix (`EvaluationError`).
"""
from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diagnostics.checkpoints import checkpoint_folder, load_model
from diagnostics.hardware import Hardware
from diagnostics.tasks import Example, encode, load_task

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


class EvaluationError(ValueError):
    """Input an evaluation cannot use; the message is one line naming the problem and the fix."""


def load_classifier(folder: str) -> nn.Module:
    """A ``save_pretrained`` sequence classification model, in eval mode; one-line errors for anything else."""
    from transformers import AutoModelForSequenceClassification

    path = checkpoint_folder(folder, "checkpoint")
    return load_model(AutoModelForSequenceClassification, path, "checkpoint", head="ForSequenceClassification").eval()


def load_examples(task_name: str, split: str, max_examples: int | None) -> tuple[str, list[Example]]:
    """The task's name and the first ``max_examples`` examples of ``split`` (a thin adapter over diagnostics.tasks)."""
    given = Path(task_name)
    task = load_task(given.parent if given.is_file() and given.name == "task.json" else task_name)
    examples = list(getattr(task, split))[:max_examples]
    if not examples:
        raise EvaluationError(f"task {task.name} has no {split} examples; pick the other --split or another task")
    return task.name, examples


def check_sizes(max_examples: int | None, batch_size: int, max_length: int) -> None:
    """Refuse a size option below 1 (``--max-examples``, ``--batch-size``, ``--max-length``)."""
    for flag, value in (("--max-examples", max_examples), ("--batch-size", batch_size), ("--max-length", max_length)):
        if value is not None and value < 1:
            raise EvaluationError(f"{flag} must be at least 1, got {value}")


def prepare_batches(examples: Sequence[Example], tokenizer, model: nn.Module, *, max_length: int,
                    batch_size: int, device: torch.device) -> list[Batch]:
    """Tokenise once, sort by length and cut into batches trimmed to their longest example, on ``device``."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:  # RoBERTa's positions start after the padding index, so keep two spare
        max_length = min(max_length, int(positions) - 2)
    encoded = encode(examples, tokenizer, max_length)
    labels = encoded.pop("labels")
    num_labels = int(model.config.num_labels)
    if int(labels.max()) >= num_labels:
        raise EvaluationError(f"the task has label {int(labels.max())} but the checkpoints' head has {num_labels} "
                              "outputs; pass a task with as many labels as the models")
    accepted = inspect.signature(model.forward).parameters
    inputs = {key: value for key, value in encoded.items() if key in accepted}
    lengths = encoded["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = int(lengths[rows].max()) if tokenizer.padding_side == "right" else None
        batch = {key: value[rows][:, :width].to(device) for key, value in inputs.items()}
        batches.append((batch, labels[rows].to(device)))
    return batches


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Sequence[Batch], hardware: Hardware | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``batches`` (one host sync at the end), in ``hardware``'s
    precision (default fp32)."""
    device = batches[0][1].device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    for inputs, labels in batches:
        with hardware.autocast() if hardware else contextlib.nullcontext():
            logits = model(**inputs).logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        correct += (logits.argmax(dim=-1) == labels).sum()
        count += labels.numel()
    return float(loss_sum) / count, int(correct) / count

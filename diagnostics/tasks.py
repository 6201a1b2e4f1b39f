"""The few-sample tasks: load them, encode them for any Hugging Face tokenizer, and score predictions.

    from diagnostics.tasks import load_task, encode, metric
    task = load_task("wordnet-entail")            # or a folder holding task.json, train.jsonl, dev.jsonl
    batch = encode(task.dev[:16], tokenizer, max_length=128)
    metric(task.metric, predictions, labels)      # accuracy, f1 or mcc

A task folder holds `task.json` (name, kind single|pair, label_names, metric, majority_baseline, sizes, source,
licence) and one JSON object per line in `train.jsonl` / `dev.jsonl`: {"text", "text_pair" (pairs only),
"label"}. Redistributable tasks are committed under data/tasks/; the others are built on first use into
data/cache/tasks/ by data/build_tasks.py (see data/README.md, "Tasks").
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from diagnostics.embedded import DATA_DIR, TASKS_DIR

CACHED_TASKS_DIR = DATA_DIR / "cache" / "tasks"
BUILD_SCRIPT = DATA_DIR / "build_tasks.py"
BUILT_ON_DEMAND = ("hedge", "polarity")  # not redistributable: built by BUILD_SCRIPT into CACHED_TASKS_DIR
METRICS = ("accuracy", "f1", "mcc")
KINDS = ("single", "pair")


class TaskError(ValueError):
    """A task that cannot be found, built or read; the message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class Example:
    """One labelled example; `text_pair` is None for a single-sentence task."""

    text: str
    text_pair: str | None = None
    label: int = 0


@dataclass
class Task:
    """A task's metadata (task.json) and its two splits."""

    name: str
    kind: str
    label_names: list[str]
    metric: str
    majority_baseline: float
    train: list[Example]
    dev: list[Example]
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# ---------------------------------------------------------------- metrics (pure)


def _confusion(predictions: Sequence[int], labels: Sequence[int]) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) for the positive label 1."""
    pairs = Counter(zip((int(p) for p in predictions), (int(y) for y in labels)))
    return pairs[(1, 1)], pairs[(1, 0)], pairs[(0, 1)], pairs[(0, 0)]


def metric(name: str, predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Accuracy, F1 of the positive label 1, or Matthews correlation; 0.0 where F1 or MCC is undefined."""
    if name not in METRICS:
        raise TaskError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    predictions, labels = [int(p) for p in predictions], [int(y) for y in labels]
    if len(predictions) != len(labels) or not labels:
        raise TaskError(f"need as many predictions as labels, at least one (got {len(predictions)}, {len(labels)})")
    if name == "accuracy":
        return sum(p == y for p, y in zip(predictions, labels)) / len(labels)
    tp, fp, fn, tn = _confusion(predictions, labels)
    if name == "f1":
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def majority_baseline(metric_name: str, examples: Sequence[Example]) -> float:
    """The metric of predicting the most frequent label for every example (ties go to the lower label)."""
    labels = [e.label for e in examples]
    counts = Counter(labels)
    majority = min(counts, key=lambda label: (-counts[label], label))
    return metric(metric_name, [majority] * len(labels), labels)


# ---------------------------------------------------------------- reading and writing task folders


def _check_examples(examples: list[Example], kind: str, num_labels: int, where: str) -> None:
    if not examples:
        raise TaskError(f"{where}: no examples")
    for i, e in enumerate(examples):
        if not isinstance(e.label, int) or isinstance(e.label, bool) or not 0 <= e.label < num_labels:
            raise TaskError(f"{where}: example {i} has label {e.label!r}, expected an int in 0..{num_labels - 1}")
        if (e.text_pair is None) != (kind == "single"):
            raise TaskError(f"{where}: example {i} does not fit a {kind} task (text_pair {e.text_pair!r})")


def _read_jsonl(path: Path) -> list[Example]:
    if not path.is_file():
        raise TaskError(f"{path}: missing")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TaskError(f"{path}: not UTF-8 text; write the task as UTF-8 JSON lines") from None
    examples = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                examples.append(Example(row["text"], row.get("text_pair"), row["label"]))
            except json.JSONDecodeError as error:
                raise TaskError(f"{path}:{number}: not JSON ({error.msg})") from None
            except KeyError as missing:
                raise TaskError(f"{path}:{number}: no field {missing}") from None
    return examples


def read_task(folder: Path) -> Task:
    """Load and validate one task folder."""
    meta_path = folder / "task.json"
    if not meta_path.is_file():
        raise TaskError(f"{folder}: not a task folder (no task.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") not in KINDS or meta.get("metric") not in METRICS:
        raise TaskError(f"{meta_path}: kind must be one of {KINDS} and metric one of {METRICS}")
    splits = {}
    for split in ("train", "dev"):
        splits[split] = _read_jsonl(folder / f"{split}.jsonl")
        _check_examples(splits[split], meta["kind"], len(meta["label_names"]), str(folder / f"{split}.jsonl"))
    return Task(meta["name"], meta["kind"], list(meta["label_names"]), meta["metric"],
                float(meta["majority_baseline"]), splits["train"], splits["dev"], meta, folder)


def write_task(folder: Path, train: list[Example], dev: list[Example], meta: dict) -> None:
    """Write a task folder (the inverse of `read_task`), validating first."""
    for split, examples in (("train", train), ("dev", dev)):
        _check_examples(examples, meta["kind"], len(meta["label_names"]), f"{meta['name']}/{split}")
    folder.mkdir(parents=True, exist_ok=True)
    for split, examples in (("train", train), ("dev", dev)):
        rows = ({k: v for k, v in asdict(e).items() if v is not None} for e in examples)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (folder / "task.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- finding tasks


def task_names() -> list[str]:
    """Every task that `load_task` can give by name: committed, already built, or buildable on demand."""
    found = {p.parent.name for d in (TASKS_DIR, CACHED_TASKS_DIR) for p in d.glob("*/task.json")}
    return sorted(found | set(BUILT_ON_DEMAND))


def _build_on_demand(name: str) -> None:
    command = f"python {BUILD_SCRIPT} --only {name}"
    if not BUILD_SCRIPT.is_file():
        raise TaskError(f"task {name!r} is not built and {BUILD_SCRIPT} is missing; build it with: {command}")
    print(f"building task {name!r} (first use): {command}", file=sys.stderr)
    done = subprocess.run([sys.executable, str(BUILD_SCRIPT), "--only", name], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TaskError(f"building task {name!r} failed ({last}); run: {command}")


def load_task(name_or_path: str | Path) -> Task:
    """A task by name (data/tasks, then data/cache/tasks, building a cached one on first use) or by folder."""
    given = Path(name_or_path)
    if given.is_dir():
        return read_task(given)
    name = str(name_or_path)
    for root in (TASKS_DIR, CACHED_TASKS_DIR):
        if (root / name / "task.json").is_file():
            return read_task(root / name)
    if name in BUILT_ON_DEMAND:
        _build_on_demand(name)
        return read_task(CACHED_TASKS_DIR / name)
    raise TaskError(f"unknown task {name!r}; known: {', '.join(task_names())} (or give a task folder)")


# ---------------------------------------------------------------- encoding


def encode(examples: Sequence[Example], tokenizer, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise a batch (pairs as two segments), pad to its longest, truncate to max_length; adds `labels`."""
    if not examples:
        raise TaskError("encode: no examples")
    pairs = [e.text_pair for e in examples]
    has_pairs = pairs[0] is not None
    if any((p is not None) != has_pairs for p in pairs):
        raise TaskError("encode: a batch mixes single sentences and pairs")
    batch = tokenizer([e.text for e in examples], pairs if has_pairs else None, truncation=True,
                      max_length=max_length, padding="longest", return_tensors="pt")
    encoded = {key: value for key, value in batch.items()}
    encoded["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
    return encoded

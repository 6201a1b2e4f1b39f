"""Loading ``save_pretrained`` checkpoints for the commands, with one error type and one wording for bad ones.

    from diagnostics.checkpoints import checkpoint_folder, load_model, load_tokenizer, same_architecture
    folder = checkpoint_folder(Path("runs/x/final"), "checkpoint")        # exists, config.json, weights
    model = load_model(AutoModelForSequenceClassification, folder, "checkpoint", head="ForSequenceClassification")
    same_architecture([("pre-trained model", pretrained_folder), ("checkpoint", folder)])
    tokenizer = load_tokenizer([pretrained_folder, folder], vocab_size=model.config.vocab_size)

Used by ``diagnostics.finetune`` (the pre-trained model under a fresh head), ``diagnostics.forgetting`` (a
fine-tuned encoder and a pre-trained MLM) and ``diagnostics.surface`` (classifiers of one architecture). Every
problem is a `CheckpointError` whose message is one line: what is wrong with which folder, then ``;`` and the fix.
A command prints it as ``error: ...`` and exits with status 1.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Config fields that must agree between checkpoints of one architecture and size (those a config has).
SIZE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "embedding_size",
               "dim", "n_layers", "n_heads", "vocab_size")
SAVE_PRETRAINED = "pass a folder written by save_pretrained"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used; the message is one line naming the problem and the fix."""


def checkpoint_folder(path: Path | str, what: str) -> Path:
    """``path`` if it is a ``save_pretrained`` folder (a config naming its model type, and weights)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist; {SAVE_PRETRAINED}")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CheckpointError(f"{what} {path} is not a checkpoint (no config.json); {SAVE_PRETRAINED}")
    read_config(path)
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{what} {path} is not a checkpoint (no weights file {WEIGHT_FILES[0]}); "
                              f"{SAVE_PRETRAINED}")
    return path


def read_config(folder: Path) -> dict:
    """The folder's ``config.json`` as a dict that names a ``model_type``."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{Path(folder) / 'config.json'} cannot be read ({type(error).__name__}); "
                              f"{SAVE_PRETRAINED}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise CheckpointError(f"{Path(folder) / 'config.json'} names no model_type; {SAVE_PRETRAINED}")
    return config


def same_architecture(folders: Sequence[tuple[str, Path]]) -> None:
    """Refuse checkpoints (``(label, folder)`` pairs) of different model types or sizes."""
    (first, reference), *others = [(label, read_config(folder)) for label, folder in folders]
    for label, config in others:
        if config["model_type"] != reference["model_type"]:
            raise CheckpointError(f"{label} is a {config['model_type']} model but {first} is a "
                                  f"{reference['model_type']} model; pass checkpoints of the same architecture "
                                  "and size")
        for key in SIZE_FIELDS:
            if key in reference and config.get(key) != reference[key]:
                raise CheckpointError(f"{label} has {key} {config.get(key)} but {first} has {reference[key]}; pass "
                                      "checkpoints of the same architecture and size")


def load_model(auto_class, folder: Path, what: str, *, head: str | None = None, fresh_head: bool = False,
               **kwargs):
    """``auto_class.from_pretrained(folder, **kwargs)``, refusing a folder whose config names another kind of model
    than ``head`` (a class-name suffix such as ``ForSequenceClassification``) and one that lacks weights the model
    needs (except the pooler, and except the head when ``fresh_head``: a pre-trained encoder under a new head)."""
    if head is not None:
        architectures = read_config(folder).get("architectures") or ["an unnamed model"]
        if not any(name.endswith(head) for name in architectures):
            raise CheckpointError(f"{what} {folder} holds {architectures[0]}, not a *{head} model; pass "
                                  f"a checkpoint of a *{head} model")
    try:
        model, info = auto_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    except Exception as error:  # transformers raises many kinds for a broken folder; all mean the same here
        raise CheckpointError(f"cannot load {what} {folder} ({first_line(error)}); {SAVE_PRETRAINED}") from None
    base = model.base_model_prefix if getattr(model, model.base_model_prefix, None) is not None else ""
    missing = sorted(key for key in info["missing_keys"] if "pooler" not in key
                     and not (fresh_head and base and not key.startswith(base + ".")))
    if missing:
        kind = type(model).__name__
        suffix = kind[kind.find("For"):] if "For" in kind else kind
        in_base = not base or any(key.startswith(base + ".") for key in missing)
        part, fix = ("encoder", "a checkpoint of the whole model") if in_base else \
            ("MLM head" if "MaskedLM" in kind else "head", f"a *{suffix} model")
        raise CheckpointError(f"{what} {folder} has no {part} weights ({len(missing)} missing, first {missing[0]}); "
                              f"pass {fix}")
    return model


def load_tokenizer(folders: Sequence[Path], vocab_size: int | None = None):
    """The tokenizer of the first folder that holds one; every other folder's tokenizer must have its vocabulary,
    and it must fit a model of ``vocab_size`` tokens."""
    from transformers import AutoTokenizer

    found = []
    for folder in folders:
        try:
            found.append((folder, AutoTokenizer.from_pretrained(folder)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not found:
        raise CheckpointError(f"none of {', '.join(map(str, folders))} holds a tokenizer; save_pretrained the "
                              "tokenizer next to the model")
    (first, tokenizer), vocabulary = found[0], found[0][1].get_vocab()
    for folder, other in found[1:]:
        if other.get_vocab() != vocabulary:
            raise CheckpointError(f"the tokenizer of {folder} has another vocabulary than {first}'s; pass "
                                  "checkpoints fine-tuned from the same pre-trained model")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise CheckpointError(f"the tokenizer of {first} has {len(tokenizer)} tokens but the model only "
                              f"{vocab_size}; save the model's own tokenizer next to it")
    return tokenizer


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

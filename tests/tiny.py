"""Tiny real transformers built from configs (no downloads), shared by every test through ``conftest.py``.

``save_tiny(arch, folder)`` writes a ``save_pretrained`` checkpoint (model and WordPiece tokenizer) that the
toolkit's commands load with the real ``from_pretrained`` code. The weights are random but the models are the real
Hugging Face classes, so hooks, layer discovery and weight surgery are exercised for real.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (AlbertConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification, BertConfig,
                          BertTokenizerFast, DistilBertConfig, ElectraConfig, RobertaConfig)

ARCHITECTURES = ("bert", "roberta", "albert", "distilbert", "electra")
LAYERS = 4
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a an of to and in is was it that he she they we you for on with as at by this be not are from or "
         "have had but his her their one all were when there what so up out if about who which them then than "
         "into more some could time very good bad film movie story dog cat animal kind house river king land "
         "day night love great little old new long man woman world life way make made said know see").split()


def tokenizer() -> BertTokenizerFast:
    """A lower-casing WordPiece tokenizer over single letters, digits, punctuation and ~100 words."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()")
    vocab = list(dict.fromkeys(SPECIAL + chars + ["##" + c for c in chars] + WORDS))
    wordpiece = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    ids = {token: vocab.index(token) for token in ("[CLS]", "[SEP]")}
    wordpiece.post_processor = processors.TemplateProcessing(  # BERT's [CLS] A [SEP] B [SEP], in every transformers
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=list(ids.items()))
    return BertTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]",
                             cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def config(arch: str, vocab_size: int, layers: int = LAYERS):
    """A 32-wide config of ``arch`` with ``layers`` blocks, dropout off so runs are reproducible."""
    common = dict(vocab_size=vocab_size, max_position_embeddings=72, num_labels=2, pad_token_id=0)
    if arch == "distilbert":
        return DistilBertConfig(dim=32, n_layers=layers, n_heads=2, hidden_dim=64, dropout=0.0,
                                attention_dropout=0.0, **common)
    sizes = dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=2, **common)
    if arch == "bert":
        return BertConfig(**sizes)
    if arch == "roberta":
        return RobertaConfig(**sizes, bos_token_id=2, eos_token_id=3)
    if arch == "albert":
        return AlbertConfig(embedding_size=16, **sizes)
    if arch == "electra":
        return ElectraConfig(embedding_size=16, **sizes)
    raise ValueError(f"unknown architecture {arch!r}; use one of {ARCHITECTURES}")


def masked_lm(arch: str = "bert", seed: int = 0, layers: int = LAYERS):
    """A tiny ``*ForMaskedLM`` with random weights from ``seed``."""
    torch.manual_seed(seed)
    return AutoModelForMaskedLM.from_config(config(arch, len(tokenizer()), layers)).eval()


def classifier(arch: str = "bert", seed: int = 0, layers: int = LAYERS):
    """A tiny ``*ForSequenceClassification`` (two labels) with random weights from ``seed``."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config(arch, len(tokenizer()), layers))


def save(model, folder: Path) -> Path:
    """``save_pretrained`` the model and the tiny tokenizer into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder


def batch(size: int = 8, length: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random classification batch of token ids (no special-token structure needed for gradients)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer())
    return {
        "input_ids": torch.randint(len(SPECIAL), vocab, (size, length), generator=generator),
        "attention_mask": torch.ones(size, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (size,), generator=generator),
    }


TEXT = ("The old king had a little dog. The dog was very good and the king made a long story of it. "
        "In the house by the river there was a cat, and the cat said that it was a kind animal. ") * 40


def pair_task(folder: Path, dev: int) -> Path:
    """A toy pair task of 48 training and ``dev`` dev examples in the tokenizer's words (ids in range); the label
    says whether the two texts share a word. Written to ``folder`` as the task files of ``diagnostics.tasks``."""
    from diagnostics.tasks import Example, write_task

    words = [w for w in WORDS if tokenizer().convert_tokens_to_ids(w) < len(tokenizer())]  # "a" repeats: last id
    generator = torch.Generator().manual_seed(0)
    examples = []
    for i in range(48 + dev):
        a, b = (torch.randint(0, len(words), (2, 5), generator=generator)).tolist()
        b = a[:2] + b[2:] if i % 2 else b
        examples.append(Example(" ".join(words[j] for j in a), " ".join(words[j] for j in b),
                                int(bool(set(a) & set(b)))))
    write_task(folder, examples[:48], examples[48:], {
        "name": "toy", "kind": "pair", "label_names": ["no", "yes"], "metric": "accuracy",
        "majority_baseline": 0.5, "sizes": {"train": 48, "dev": dev}})
    return folder


def lexical_task(folder: Path) -> Path:
    """A 96/32 single-text task in the tokenizer's words: the label says whether the text holds the first word.
    Written to ``folder`` as the task files of ``diagnostics.tasks``."""
    from diagnostics.tasks import Example, write_task

    words = [w for w in WORDS if tokenizer().convert_tokens_to_ids(w) < len(tokenizer())]
    generator = torch.Generator().manual_seed(0)
    examples = []
    for i in range(128):
        chosen = torch.randint(1, len(words), (6,), generator=generator).tolist()
        chosen[i % 6] = 0 if i % 2 else chosen[i % 6]
        examples.append(Example(" ".join(words[j] for j in chosen), None, int(0 in chosen)))
    write_task(folder, examples[:96], examples[96:], {
        "name": "lexical", "kind": "single", "label_names": ["no", "yes"], "metric": "accuracy",
        "majority_baseline": 0.5, "sizes": {"train": 96, "dev": 32}})
    return folder

"""Masked-language-model perplexity: deterministic masking of a text and the summed-NLL maths.

The same masked corpus is reused for every model compared (every k of the forgetting sweep, the pre-trained
reference), so differences in perplexity come from the weights alone. Masking follows BERT: 15% of the non-special
tokens are chosen; of those 80% become [MASK], 10% a random token, 10% stay as they are. Perplexity is
exp(summed NLL / number of chosen tokens), the NLL computed by ``cross_entropy(reduction="sum")`` on the logits
(never softmax-then-log).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass(frozen=True)
class MaskedCorpus:
    """Fixed-length blocks of a text, masked once: ``input_ids`` and ``labels`` are ``[blocks, length]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def masked_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def batches(self, batch_size: int):
        """Yield ``(input_ids, attention_mask, labels)`` slices of ``batch_size`` blocks."""
        for start in range(0, len(self.input_ids), batch_size):
            stop = start + batch_size
            yield self.input_ids[start:stop], self.attention_mask[start:stop], self.labels[start:stop]


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file, with one-line errors for a missing, binary or empty file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"corpus {path} does not exist; pass --corpus with a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"corpus {path} is not UTF-8 text; pass a plain text file") from None
    if "\x00" in text:
        raise ValueError(f"corpus {path} holds binary data, not text; pass a plain text file")
    if not text.strip():
        raise ValueError(f"corpus {path} is empty; pass a text file with at least a few sentences")
    return text


def text_blocks(text: str, tokenizer, block_length: int = 128, max_tokens: int | None = None) -> torch.Tensor:
    """Tokenise ``text`` and cut it into ``[CLS] ... [SEP]`` blocks of exactly ``block_length`` tokens."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    body = block_length - 2
    blocks = len(ids) // body
    if blocks == 0:
        raise ValueError(
            f"corpus has {len(ids)} tokens, fewer than one block of {body}; give a longer text or a larger --max-tokens"
        )
    body_ids = torch.tensor(ids[: blocks * body], dtype=torch.long).view(blocks, body)
    cls = torch.full((blocks, 1), tokenizer.cls_token_id, dtype=torch.long)
    sep = torch.full((blocks, 1), tokenizer.sep_token_id, dtype=torch.long)
    return torch.cat([cls, body_ids, sep], dim=1)


def mask_blocks(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: list[int],
    seed: int = 0,
    probability: float = 0.15,
) -> MaskedCorpus:
    """Mask ``input_ids`` deterministically from ``seed`` (BERT's 80/10/10 rule); returns a :class:`MaskedCorpus`."""
    generator = torch.Generator().manual_seed(seed)
    shape = input_ids.shape
    special = torch.isin(input_ids, torch.tensor(special_ids, dtype=torch.long))
    chosen = (torch.rand(shape, generator=generator) < probability) & ~special
    action = torch.rand(shape, generator=generator)
    random_ids = torch.randint(vocab_size, shape, generator=generator)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    return MaskedCorpus(masked, torch.ones_like(input_ids), labels)


def masked_corpus(
    text: str, tokenizer, *, block_length: int = 128, max_tokens: int | None = None, seed: int = 0
) -> MaskedCorpus:
    """Tokenise, block and mask ``text`` for ``tokenizer``: the corpus every perplexity here is measured on."""
    blocks = text_blocks(text, tokenizer, block_length, max_tokens)
    return mask_blocks(
        blocks,
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        special_ids=list(tokenizer.all_special_ids),
        seed=seed,
    )


def masked_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the masked positions and how many there are (a running total)."""
    chosen = labels != IGNORE
    if logits.shape[:-1] == labels.shape:
        logits = logits[chosen]
    targets = labels[chosen]
    nll = F.cross_entropy(logits.float(), targets, reduction="sum")
    return nll, int(targets.numel())


def perplexity(nll_sum: float, count: int) -> float:
    """exp(mean NLL); ``count`` must be positive."""
    if count <= 0:
        raise ValueError("no masked tokens to measure perplexity on; use a longer corpus")
    return math.exp(float(nll_sum) / count)


@torch.inference_mode()
def model_perplexity(model, corpus: MaskedCorpus, batch_size: int = 16) -> float:
    """Perplexity of a full ``*ForMaskedLM`` model on ``corpus`` (the reference the faster sweeps are checked on)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for input_ids, attention_mask, labels in corpus.batches(batch_size):
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        nll, n = masked_nll(logits, labels.to(device))
        total += float(nll)
        count += n
    return perplexity(total, count)

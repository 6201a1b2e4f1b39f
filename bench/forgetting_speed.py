"""Speed of the cached forgetting sweep against the naive one, measured side by side in one run.

    python3 bench/forgetting_speed.py [--blocks 16] [--repeats 5] [--threads 1]

Naive: for each k = 0..L, reset the blocks with ``reset_blocks`` and run the full forward, with the MLM head on
every position. Cached (``probes.model.sweep``): the fine-tuned model once, then only the reset blocks from the cached
hidden state, the head at masked positions only. Both are timed alternately, best of ``--repeats``; the script
checks that they agree to 1e-5 relative and prints time(cached) / time(naive) next to the block-call bound
0.5 + 1/(L+1). Models: a 12-layer, 128-wide BERT with random weights (small vocabulary, so the head costs little
and the ratio shows the block savings), and the embedded default (``data/model``, on the held-out text) when it exists.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import (AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer,  # noqa: E402
                          BertConfig)

from diagnostics.embedded import DEFAULT_MODEL, HELDOUT_TEXT  # noqa: E402
from probes.model.reset import reset_blocks  # noqa: E402
from probes.model.mlm import MaskedCorpus, mask_blocks, masked_corpus, masked_nll, read_text  # noqa: E402
from probes.model.sweep import mlm_head, sweep_nll  # noqa: E402


@torch.inference_mode()
def naive_nll(finetuned, pretrained, corpus: MaskedCorpus, batch_size: int) -> list[float]:
    """Summed NLL per k from L+1 full forward passes of reset models (the input stage goes with block 1)."""
    depth = pretrained.config.num_hidden_layers
    head, totals = mlm_head(pretrained), []
    for k in range(depth + 1):
        depths = list(range(depth - k + 1, depth + 1)) + ([0] if k == depth else [])
        total = 0.0
        with reset_blocks(finetuned, pretrained, depths):
            for input_ids, attention_mask, labels in corpus.batches(batch_size):
                hidden = finetuned.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                total += float(masked_nll(head(hidden), labels)[0])
        totals.append(total)
    return totals


def random_corpus(vocab_size: int, blocks: int, length: int = 128) -> MaskedCorpus:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (blocks, length), generator=generator)
    ids[:, 0], ids[:, -1] = 2, 3
    return mask_blocks(ids, mask_token_id=4, vocab_size=vocab_size, special_ids=[0, 1, 2, 3, 4], seed=0)


def random_pair():
    """A 12-layer, 128-wide BERT (pre-trained stand-in) and a classifier with other random weights."""
    config = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=12, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=128)
    torch.manual_seed(0)
    pretrained = AutoModelForMaskedLM.from_config(config).eval()
    torch.manual_seed(1)
    return AutoModelForSequenceClassification.from_config(config).eval(), pretrained


def embedded_pair():
    """The embedded default as pre-trained model, and a copy with every encoder weight perturbed by 10%."""
    pretrained = AutoModelForMaskedLM.from_pretrained(DEFAULT_MODEL).eval()
    finetuned = AutoModelForSequenceClassification.from_pretrained(DEFAULT_MODEL, num_labels=2).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in finetuned.base_model.encoder.parameters():
            parameter.mul_(1 + 0.1 * torch.randn_like(parameter))
    return finetuned, pretrained


def measure(name: str, finetuned, pretrained, corpus: MaskedCorpus, batch_size: int, repeats: int) -> None:
    naive_times, cached_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        naive = naive_nll(finetuned, pretrained, corpus, batch_size)
        naive_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        cached = sweep_nll(finetuned, pretrained, corpus, batch_size=batch_size).tolist()
        cached_times.append(time.perf_counter() - start)
    difference = max(abs(a - b) / abs(b) for a, b in zip(cached, naive))
    if difference > 1e-5:
        raise SystemExit(f"error: cached and naive sweeps differ by {difference:.2e} relative on {name}")
    depth = pretrained.config.num_hidden_layers
    ratio = min(cached_times) / min(naive_times)
    print(f"{name:<28} {depth:>3} {len(corpus.input_ids):>6} {min(naive_times):>9.2f} {min(cached_times):>9.2f} "
          f"{ratio:>7.3f} {0.5 + 1 / (depth + 1):>7.3f} {difference:>10.1e}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging

    logging.set_verbosity_error()  # no load reports or bars between the rows
    logging.disable_progress_bar()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=16, help="blocks of 128 tokens in the corpus")
    parser.add_argument("--repeats", type=int, default=5, help="timings per method (the best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times in seconds, best of {args.repeats}")
    print(f"{'model':<28} {'L':>3} {'blocks':>6} {'naive':>9} {'cached':>9} {'ratio':>7} {'bound':>7} "
          f"{'rel diff':>10}")
    finetuned, pretrained = random_pair()
    measure("bert 12x128 (random)", finetuned, pretrained, random_corpus(1000, args.blocks), args.batch_size,
            args.repeats)
    if (DEFAULT_MODEL / "config.json").is_file():
        finetuned, pretrained = embedded_pair()
        tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
        corpus = masked_corpus(read_text(HELDOUT_TEXT), tokenizer, max_tokens=args.blocks * 126)
        measure(f"embedded default ({pretrained.config.num_hidden_layers} layers)", finetuned, pretrained,
                corpus, args.batch_size, args.repeats)
    else:
        print(f"embedded default: skipped, {DEFAULT_MODEL} is not built yet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

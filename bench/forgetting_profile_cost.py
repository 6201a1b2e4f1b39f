"""Cost of the forgetting profile against the forgetting curve alone, measured side by side in one run.

    python3 bench/forgetting_profile_cost.py [--blocks 8] [--repeats 3] [--threads 1]

Three measurements on the same models and masked text, interleaved, best of ``--repeats``, CPU time of this process
(one thread: steady on a shared machine): the top-k curve (``sweep_nll``, what ``probes.Forgetting`` records by
default); the curve with CKA and weight change per layer (what ``Forgetting(profile=True)`` adds); the whole profile
of ``python -m diagnostics.forgetting`` (three curves, each layer alone, CKA, weight change). Prints seconds and the
ratio to the curve. Models: a 12-layer, 128-wide random BERT pair, and the embedded default against a copy with
every encoder weight perturbed by 10% (as ``bench/forgetting_speed.py``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from diagnostics.embedded import DEFAULT_MODEL, HELDOUT_TEXT  # noqa: E402
from forgetting_speed import embedded_pair, random_corpus, random_pair  # noqa: E402
from probes.model.mlm import masked_corpus, read_text  # noqa: E402
from probes.model.profile import cka_observer, forgetting_profile  # noqa: E402
from probes.model.similarity import CKATotals  # noqa: E402
from probes.model.sweep import composed_nll, reset_depths, sweep_nll  # noqa: E402
from probes.model.weight_change import weight_change_tensors  # noqa: E402


def curve(finetuned, pretrained, corpus, batch_size):
    return sweep_nll(finetuned, pretrained, corpus, batch_size=batch_size)


def curve_with_similarity(finetuned, pretrained, corpus, batch_size):
    depth = pretrained.config.num_hidden_layers
    similarity = [CKATotals() for _ in range(depth + 1)]
    nll = composed_nll(finetuned, pretrained, corpus, [reset_depths(k, depth) for k in range(depth + 1)],
                       batch_size=batch_size, observe=cka_observer(similarity))
    return nll, [t.tensor() for t in similarity], weight_change_tensors(finetuned, pretrained)


def whole_profile(finetuned, pretrained, corpus, batch_size):
    return forgetting_profile(finetuned, pretrained, corpus, batch_size=batch_size)


def measure(name: str, finetuned, pretrained, corpus, batch_size: int, repeats: int) -> None:
    methods = (curve, curve_with_similarity, whole_profile)
    times = {method: [] for method in methods}
    for _ in range(repeats):
        for method in methods:
            start = time.process_time()
            method(finetuned, pretrained, corpus, batch_size)
            times[method].append(time.process_time() - start)
    base = min(times[curve])
    cells = " ".join(f"{min(times[m]):>8.2f} {min(times[m]) / base:>6.2f}x" for m in methods)
    print(f"{name:<26} {pretrained.config.num_hidden_layers:>3} {corpus.masked_tokens:>6} {cells}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=8, help="blocks of 128 tokens in the corpus")
    parser.add_argument("--repeats", type=int, default=3, help="timings per method (the best is kept)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU {torch.backends.cpu.get_cpu_capability()}; "
          f"CPU seconds, best of {args.repeats}")
    print(f"{'model':<26} {'L':>3} {'masked':>6} {'curve':>8} {'':>7} {'+CKA, weights':>16} {'whole profile':>16}")
    finetuned, pretrained = random_pair()
    measure("bert 12x128 (random)", finetuned, pretrained, random_corpus(1000, args.blocks), args.batch_size,
            args.repeats)
    if (DEFAULT_MODEL / "config.json").is_file():
        finetuned, pretrained = embedded_pair()
        tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
        corpus = masked_corpus(read_text(HELDOUT_TEXT), tokenizer, max_tokens=args.blocks * 126)
        measure("embedded default", finetuned, pretrained, corpus, args.batch_size, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

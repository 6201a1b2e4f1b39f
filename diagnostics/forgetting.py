"""Forgetting, located: MLM perplexity of a fine-tuned checkpoint as its top k encoder blocks are reset, k = 0..L,
and where it forgot, layer by layer.

    python -m diagnostics.forgetting runs/rte-s1/final                       # pre-trained model from the run
    python -m diagnostics.forgetting CKPT --pretrained data/model --json     # one JSON object on stdout
    python -m diagnostics.forgetting CKPT --out runs/rte-s1/run.h5           # also add a forgetting record

The encoder comes from CKPT (a ``save_pretrained`` folder of any head), the MLM head from the pre-trained model.
For each k the blocks L-k+1..L are replaced by their pre-trained weights (``--direction bottom``: blocks 1..k);
the input stage (embeddings) goes with block 1, so k = L is the pre-trained model itself. The held-out text is cut
into blocks of ``--block-length`` tokens (capped by the model's positions), and 15% of the non-special tokens are
masked once from ``--seed`` (80% [MASK], 10% random, 10% kept; ``probes.model.mlm``), the same masking for every k.
Perplexity is exp(summed NLL / masked tokens) from ``cross_entropy``. A failed run starts orders of magnitude above
the pre-trained perplexity and recovers only when about the top 40% of blocks are reset; a successful one starts a
little above it (Mosbach et al. 2020, Fig. 2).

The same pass measures the profile (``probes.model.profile``): the curve with the embeddings kept fine-tuned (the
papers' procedure) and with them reset (its k = 0: only the embeddings reset); per depth, the perplexity of the
pre-trained model with only that depth fine-tuned, the linear CKA of the two models' hidden states after it, and
its relative weight change ||theta_ft - theta_pt|| / ||theta_pt||.

The pre-trained model is ``--pretrained``, else the one the checkpoint's config names, else the ``model`` of the
run's records file next to the checkpoint (``CKPT/../run.h5``), else the embedded default if it is the same
architecture. The record is written only once the sweep is complete, never over an existing record.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from probes import catalogue, records
from diagnostics import interrupt
from diagnostics.checkpoints import checkpoint_folder, load_model, load_tokenizer, read_config, same_architecture
from diagnostics.command import CommandParser, fail
from diagnostics.embedded import DEFAULT_MODEL, HELDOUT_TEXT
from diagnostics.hardware import DEVICES, PRECISIONS, Hardware, choose_hardware
from probes.model.mlm import masked_corpus, read_text
from diagnostics.quiet import quiet_transformers
from probes.model.profile import forgetting_profile
from probes.model.sweep import DIRECTIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
CURVE_FIELDS = catalogue.FORGETTING.fields  # grid forgetting/<name>, axis k
PROFILE_KIND, PROFILE_FIELDS = catalogue.FORGETTING_PROFILE.kind, catalogue.FORGETTING_PROFILE.fields  # axis depth


@dataclass
class ForgettingConfig:
    checkpoint: Path
    pretrained: Path | None = None
    corpus: Path = HELDOUT_TEXT
    direction: str = "top"
    max_tokens: int | None = None
    seed: int = 0
    batch_size: int = 16
    block_length: int = 128
    out: Path | None = None
    name: str | None = None
    json: bool = False
    device: str = "auto"
    precision: str = "fp32"  # the command's --precision defaults to auto: bf16 where native


@dataclass
class ForgettingResult:
    direction: str
    k: list[int]
    perplexity: list[float]
    pretrained_perplexity: float
    masked_tokens: int
    embeddings_finetuned: list[float]
    embeddings_reset: list[float]
    embeddings_only_reset: float
    layers: list[str]
    alone: list[float]
    cka: list[float]
    weight_change: list[float]
    checkpoint: str
    pretrained: str
    corpus: str
    seed: int
    max_tokens: int | None
    block_length: int
    hardware: dict = field(default_factory=dict)
    step: int | None = None
    out: str | None = None
    record: str | None = None
    argv: list[str] = field(default_factory=lambda: list(sys.argv))

    def table(self) -> str:
        which = "top" if self.direction == "top" else "bottom"
        pre = self.pretrained_perplexity
        lines = [f"forgetting of {self.checkpoint}: {which} k blocks reset to {self.pretrained}",
                 f"{self.masked_tokens} masked tokens of {self.corpus} (seed {self.seed})",
                 f"{'k':>4} {'perplexity':>12} {'x pre-trained':>14} {'emb. fine-tuned':>16} {'emb. reset':>12}"]
        for k, value, kept, reset in zip(self.k, self.perplexity, self.embeddings_finetuned, self.embeddings_reset):
            lines.append(f"{k:>4} {_number(value):>12} {value / pre:>14.2f} {_number(kept):>16} {_number(reset):>12}")
        lines.append(f"pre-trained {_number(pre)}; only the embeddings reset {_number(self.embeddings_only_reset)}")
        lines.append(f"{'layer':>11} {'weight change':>14} {'CKA':>7} {'only it fine-tuned':>19}")
        for layer, change, similarity, alone in zip(self.layers, self.weight_change, self.cka, self.alone):
            lines.append(f"{layer:>11} {change:>14.4f} {similarity:>7.3f} {_number(alone):>19}")
        if self.record:
            lines.append(f"records forgetting/{self.record} and forgetting_profile/{self.record} added to {self.out}")
        return "\n".join(lines)


def run(config: ForgettingConfig, hardware: Hardware | None = None, announce: bool = False) -> ForgettingResult:
    """Load, sweep k = 0..L on `hardware` (else what ``config.device`` and ``config.precision`` choose, said on
    stderr with `announce`), and (with ``out``) write the record; raises ValueError for bad input."""
    checkpoint = checkpoint_folder(config.checkpoint, "checkpoint")
    pretrained = checkpoint_folder(_pretrained_path(config), "pre-trained model")
    same_architecture([("pre-trained model", pretrained), ("checkpoint", checkpoint)])
    name = _record_name(config)
    text = read_text(config.corpus)
    finetuned, pretrained_mlm, tokenizer = _load(checkpoint, pretrained)
    positions = int(getattr(pretrained_mlm.config, "max_position_embeddings", config.block_length + 2))
    block_length = min(config.block_length, positions - 2)  # two left for RoBERTa's position offset
    corpus = masked_corpus(text, tokenizer, block_length=block_length, max_tokens=config.max_tokens,
                           seed=config.seed)
    hardware = hardware or choose_hardware(config.device, config.precision, announce)  # said once inputs are good
    finetuned.to(hardware.device), pretrained_mlm.to(hardware.device)
    batches = -(-len(corpus.input_ids) // config.batch_size)
    with hardware.autocast():
        profile = forgetting_profile(finetuned, pretrained_mlm, corpus, direction=config.direction,
                                     batch_size=config.batch_size,
                                     progress=lambda it: tqdm(it, total=batches, desc="forgetting", unit="batch",
                                                              leave=False))
    result = ForgettingResult(
        config.direction, profile.k, profile.perplexity, profile.pretrained_perplexity, profile.masked_tokens,
        profile.embeddings_finetuned, profile.embeddings_reset, profile.embeddings_only_reset, profile.layers,
        profile.alone, profile.cka, profile.weight_change, str(checkpoint), str(pretrained), str(config.corpus),
        config.seed, config.max_tokens, block_length, hardware.as_meta(), _step(checkpoint))
    if config.out is not None:
        with interrupt.deferred(kept=f"forgetting/{name} was written whole to {config.out}"):
            _write(config, result, name)
        result.out, result.record = str(config.out), name
    return result


def _write(config: ForgettingConfig, result: ForgettingResult, name: str) -> None:
    attrs = {key: getattr(result, key) for key in ("direction", "pretrained_perplexity", "embeddings_only_reset",
                                                    "masked_tokens",
                                                    "checkpoint", "pretrained", "corpus", "seed", "max_tokens",
                                                    "block_length")}
    attrs.update({key: str(Path(attrs[key]).resolve()) for key in ("checkpoint", "pretrained", "corpus")})
    if result.step is not None:
        attrs["step"] = result.step
    attrs["config"] = _plain(asdict(config))
    attrs["argv"] = result.argv
    attrs["hardware"] = result.hardware
    meta = records.RunMeta(model=result.pretrained, config={**_plain(asdict(config)), "hardware": result.hardware},
                           argv=result.argv)
    profile_attrs = {key: attrs[key] for key in ("direction", "masked_tokens", "checkpoint", "pretrained", "hardware")}
    records.write_grid(config.out, name, {"depth": list(range(len(result.layers)))},
                       {field: np.array(getattr(result, field)) for field in PROFILE_FIELDS},
                       kind=PROFILE_KIND, attrs={**profile_attrs, "layers": result.layers}, meta=meta)
    records.write_grid(config.out, name, {"k": result.k},
                       {field: np.array(getattr(result, field)) for field in CURVE_FIELDS},
                       kind=catalogue.FORGETTING.kind, attrs=attrs, meta=meta)


# ----------------------------------------------------------------------------------------------- inputs


def _pretrained_path(config: ForgettingConfig) -> Path:
    """--pretrained, else what the checkpoint or its run names, else the embedded default of the same kind."""
    if config.pretrained is not None:
        return config.pretrained
    checkpoint = config.checkpoint
    model_type = read_config(checkpoint)["model_type"]
    for candidate in _named_pretrained(checkpoint):
        if candidate.resolve() != checkpoint.resolve() and (candidate / "config.json").is_file():
            return candidate
    if (DEFAULT_MODEL / "config.json").is_file() and read_config(DEFAULT_MODEL)["model_type"] == model_type:
        return DEFAULT_MODEL
    raise ValueError(f"{checkpoint} does not name its pre-trained {model_type} model; pass --pretrained DIR")


def _named_pretrained(checkpoint: Path) -> list[Path]:
    """Folders the checkpoint's config or its run's records file name as the pre-trained model."""
    config = read_config(checkpoint)
    names = [config.get(key) for key in ("_name_or_path", "name_or_path")]
    run_file = checkpoint.parent / "run.h5"
    if run_file.is_file():
        try:
            names.append(records.open_run(run_file).meta.get("model"))
        except ValueError:
            pass
    found = []
    for name in filter(None, names):
        path = Path(str(name))
        found += [path] if path.is_absolute() else [path, REPO_ROOT / path]
    return found


def _record_name(config: ForgettingConfig) -> str:
    """The record's name, checked against the output file before any work is done ("" without --out)."""
    if config.out is None:
        return ""
    if config.name is not None and (not config.name or "/" in config.name):
        raise ValueError(f"record name {config.name!r} must be non-empty and contain no '/'; pass another --name")
    out = config.out
    if out.exists():
        run = records.open_run(out)
        taken = set(run.names("forgetting")) | set(run.names(PROFILE_KIND))
        name = config.name or _free_name(taken, "final")
        if name in taken:
            raise ValueError(f"{out} already holds forgetting/{name}; records are never overwritten: "
                             "pass another --name")
        return name
    if not out.parent.is_dir():
        raise ValueError(f"folder {out.parent} does not exist; create it or pass another --out")
    try:
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError:
        raise ValueError(f"cannot write to folder {out.parent}; pass --out in a writable folder") from None
    return config.name or "final"


def _free_name(taken: set[str], prefix: str) -> str:
    """``prefix``, ``prefix-1``, ``prefix-2``... whichever is not taken first."""
    number, name = 0, prefix
    while name in taken:
        number += 1
        name = f"{prefix}-{number}"
    return name


def _load(checkpoint: Path, pretrained: Path):
    """The fine-tuned base model, the pre-trained MLM model (both in eval mode) and the tokenizer."""
    from transformers import AutoModel, AutoModelForMaskedLM

    finetuned = load_model(AutoModel, checkpoint, "checkpoint")
    pretrained_mlm = load_model(AutoModelForMaskedLM, pretrained, "pre-trained model")
    tokenizer = load_tokenizer([pretrained, checkpoint], pretrained_mlm.config.vocab_size)
    if tokenizer.mask_token_id is None or tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError(f"the tokenizer of {pretrained} has no mask, cls or sep token; pass an MLM tokenizer")
    return finetuned.eval(), pretrained_mlm.eval(), tokenizer




def _step(checkpoint: Path) -> int | None:
    """The training step of a checkpoint: trainer_state.json, a ``checkpoint-N`` folder name, or the steps in the
    summary of the run's records file for its ``final`` folder; else unknown."""
    state = checkpoint / "trainer_state.json"
    if state.is_file():
        try:
            return int(json.loads(state.read_text())["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    match = re.fullmatch(r"checkpoint-(\d+)", checkpoint.name)
    if match:
        return int(match.group(1))
    run_file = checkpoint.parent / "run.h5"
    if checkpoint.name == "final" and run_file.is_file():
        try:
            return int(records.open_run(run_file).summary["steps"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


# ----------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m diagnostics.forgetting",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="fine-tuned save_pretrained folder (any head)")
    parser.add_argument("--pretrained", type=Path, help="pre-trained *ForMaskedLM folder (default: see above)")
    parser.add_argument("--corpus", type=Path, default=HELDOUT_TEXT, help="held-out UTF-8 text")
    parser.add_argument("--direction", choices=DIRECTIONS, default="top", help="reset the top or bottom k blocks")
    parser.add_argument("--max-tokens", type=_positive, help="use only the first N tokens of the corpus")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masking (default 0)")
    parser.add_argument("--batch-size", type=_positive, default=16, help="blocks of text per batch (default 16)")
    parser.add_argument("--block-length", type=_positive, default=128, help="tokens per block (default 128)")
    parser.add_argument("--out", type=Path, help="records file to add a forgetting record to (created if absent)")
    parser.add_argument("--name", help="record name (default final, final-1, ...)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA if torch sees a GPU")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast where the hardware has native bf16, else fp32")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = ForgettingConfig(**vars(args))
    quiet_transformers()
    try:
        with interrupt.stop_on_signals():
            result = run(config, announce=True)
    except ValueError as error:
        return fail(error)
    except KeyboardInterrupt as stop:
        print(f"interrupted by {interrupt.describe(stop)}; {getattr(stop, 'kept', '') or 'nothing written'}",
              file=sys.stderr)
        return interrupt.exit_status(stop)
    print(json.dumps(asdict(result)) if config.json else result.table())
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _plain(values: dict) -> dict:
    return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}


def _number(value: float) -> str:
    return f"{value:.2f}" if value < 1e5 else f"{value:.3e}"


if __name__ == "__main__":
    raise SystemExit(main())

"""The cached layer-reset sweep: MLM perplexity of every "top k blocks reset" model in one pass over the corpus.

For k = 0..L the model is composed of the fine-tuned blocks 1..L-k and the pre-trained blocks L-k+1..L, and scored
by the **pre-trained** MLM head (``direction="bottom"`` swaps the roles: pre-trained blocks 1..k, fine-tuned above).
The input stage (embeddings, and ALBERT's or ELECTRA's projection to the hidden size) goes with block 1: it is
fine-tuned unless every block is reset, so k = L is exactly the pre-trained model.

Instead of L+1 full forward passes, each batch runs both models once, keeping their hidden states after every
depth, and runs only the blocks that differ from both: for the top-k sweep the upper model's blocks from the cached
state at depth L-k (about half the block calls for large L: 0.5 + 1/(L+1) of the naive cost). Any set of composed
models is computed the same way (``composed_nll``: the pre-trained weights at chosen depths, the fine-tuned ones
elsewhere), each distinct mixed prefix of blocks once; the forgetting profile (``probes.model.profile``) uses it.
The blocks are called with exactly the extra arguments (attention mask format included) that the model itself
passed to its first block, captured by a forward pre-hook, so every architecture and attention implementation of
transformers is handled alike. ALBERT's one shared block is simply called once per depth, from whichever model
the composition takes at that depth. The MLM head runs only at the masked positions. Nothing is modified; the
sweep reads both models under ``torch.inference_mode()``.

Library code (no command line): ``layer_reset_sweep(finetuned, pretrained_mlm, corpus)``; the command is
``python -m diagnostics.forgetting``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection, Sequence

import torch
from torch import nn

from probes.model.mlm import IGNORE, MaskedCorpus, masked_nll, perplexity
from probes.model.layers import find_layers

DIRECTIONS = ("top", "bottom")
EMBEDDINGS = ("with-block-1", "finetuned", "reset")  # what happens to the input stage as blocks are reset
# The modules of each *ForMaskedLM that turn hidden states into vocabulary logits, applied in this order.
MLM_HEADS = {
    "bert": ("cls",),
    "roberta": ("lm_head",),
    "albert": ("predictions",),
    "electra": ("generator_predictions", "generator_lm_head"),
    "distilbert": ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
}


@dataclass(frozen=True)
class SweepTotals:
    """Summed masked NLL per k (``nll[i]`` belongs to ``k[i]``) and the number of masked tokens scored."""

    direction: str
    k: list[int]
    nll: list[float]
    masked_tokens: int

    @property
    def perplexity(self) -> list[float]:
        return [perplexity(total, self.masked_tokens) for total in self.nll]

    @property
    def pretrained_perplexity(self) -> float:
        """k = L is the pre-trained model itself (every block and the input stage reset)."""
        return self.perplexity[-1]


@dataclass(frozen=True)
class BlockCall:
    """How a model calls its blocks: the arguments after the hidden states, as captured from its own forward."""

    args: tuple
    kwargs: dict[str, Any]

    def __call__(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        output = block(hidden, *self.args, **self.kwargs)
        return output[0] if isinstance(output, tuple) else output


def mlm_head(mlm_model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The vocabulary head of a ``*ForMaskedLM`` as a function of hidden states ``[..., hidden] -> [..., vocab]``."""
    model_type = getattr(mlm_model.config, "model_type", "")
    if model_type not in MLM_HEADS:
        raise ValueError(f"no MLM head known for model type {model_type!r}; "
                         f"use a model of type {', '.join(MLM_HEADS)}")
    modules = [getattr(mlm_model, name, None) for name in MLM_HEADS[model_type]]
    if any(module is None for module in modules):
        raise ValueError(f"{type(mlm_model).__name__} has no MLM head; pass a *ForMaskedLM pre-trained model")

    def head(hidden: torch.Tensor) -> torch.Tensor:
        for module in modules:
            hidden = module(hidden)
        return hidden

    return head


def block_states(model: nn.Module, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> tuple[list[torch.Tensor], BlockCall]:
    """Run the base model of ``model`` once; return the hidden state entering block 1 and after each depth
    (``states[d]`` for d = 0..L) and how the model called its blocks."""
    layers = find_layers(model)
    states: list[torch.Tensor] = []
    captured: list[BlockCall] = []

    def before_block(module, args, kwargs):
        if not captured:
            hidden = args[0] if args else kwargs["hidden_states"]
            rest = {key: value for key, value in kwargs.items() if key != "hidden_states"}
            captured.append(BlockCall(tuple(args[1:]), rest))
            states.append(hidden)

    def after_block(module, args, output):
        states.append(output[0] if isinstance(output, tuple) else output)

    first = layers.blocks[0]
    handles = [first.register_forward_pre_hook(before_block, with_kwargs=True)]
    try:
        handles += [block.register_forward_hook(after_block) for block in dict.fromkeys(layers.blocks)]
        model.base_model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    if len(states) != layers.depth + 1:
        raise ValueError(f"{type(model).__name__} ran {len(states) - 1} blocks for {layers.depth} depths; "
                         "its blocks cannot be swept")
    return states, captured[0]


def check_same_shape(finetuned: nn.Module, pretrained: nn.Module) -> None:
    """Refuse two models whose base models differ in architecture, depth or parameter names and shapes."""
    kinds = finetuned.config.model_type, pretrained.config.model_type
    if kinds[0] != kinds[1]:
        raise ValueError(f"the checkpoint is a {kinds[0]} model but the pre-trained model is a {kinds[1]}; "
                         "pass the pre-trained model it was fine-tuned from")
    tuned, reference = _base_shapes(finetuned), _base_shapes(pretrained)
    differing = sorted(name for name in reference if tuned.get(name) != reference[name])
    if differing:
        raise ValueError(f"the checkpoint and the pre-trained model differ in size ({len(differing)} parameters, "
                         f"first {differing[0]}); pass the pre-trained model it was fine-tuned from")


def _base_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Names (relative to the base model) and shapes of the parameters below the pooler."""
    layers = find_layers(model)
    prefix = layers.base_prefix + "." if layers.base_prefix else ""
    return {name[len(prefix):]: tuple(p.shape) for name, p in model.named_parameters()
            if name.startswith(prefix) and layers.group_of(name) not in ("pooler", "head")}


def layer_reset_sweep(finetuned: nn.Module, pretrained_mlm: nn.Module, corpus: MaskedCorpus, *,
                      direction: str = "top", batch_size: int = 16,
                      progress: Callable[[Any], Any] = iter) -> SweepTotals:
    """Summed masked NLL of the fine-tuned model with its top (or bottom) k blocks reset, for k = 0..L.

    ``finetuned`` is any model over the same base as ``pretrained_mlm`` (a classifier, a bare base model);
    ``progress`` wraps the batch iterator (pass ``tqdm`` for a bar). Both models should be in eval mode.
    """
    totals = sweep_nll(finetuned, pretrained_mlm, corpus, direction=direction, batch_size=batch_size,
                       progress=progress)
    return SweepTotals(direction, list(range(len(totals))), totals.tolist(), corpus.masked_tokens)


def reset_depths(k: int, depth: int, direction: str = "top", embeddings: str = "with-block-1") -> set[int]:
    """The depths (0 = the input stage) set to pre-trained weights when ``k`` blocks are reset from the top or the
    bottom. ``embeddings``: ``with-block-1`` (reset exactly when block 1 is, so k = L is the pre-trained model),
    ``finetuned`` (never reset: the papers reset encoder blocks only) or ``reset`` (always)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
    if embeddings not in EMBEDDINGS:
        raise ValueError(f"unknown embeddings rule {embeddings!r}; use one of {', '.join(EMBEDDINGS)}")
    blocks = set(range(depth - k + 1, depth + 1) if direction == "top" else range(1, k + 1))
    reset_input = embeddings == "reset" or (embeddings == "with-block-1" and 1 in blocks)
    return blocks | ({0} if reset_input else set())


@torch.inference_mode()
def sweep_nll(finetuned: nn.Module, pretrained_mlm: nn.Module, corpus: MaskedCorpus, *, direction: str = "top",
              ks: Sequence[int] | None = None, batch_size: int = 16,
              progress: Callable[[Any], Any] = iter) -> torch.Tensor:
    """Summed masked NLL for each k of ``ks`` (default 0..L) as a float64 tensor on the models' device.

    Only what ``ks`` needs is run: ``ks=[0]`` with ``direction="top"`` is one forward of the fine-tuned model.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
    depth = find_layers(pretrained_mlm).depth
    ks = list(range(depth + 1)) if ks is None else list(ks)
    if any(not 0 <= k <= depth for k in ks):
        raise ValueError(f"k must lie in 0..{depth}; got {ks}")
    return composed_nll(finetuned, pretrained_mlm, corpus, [reset_depths(k, depth, direction) for k in ks],
                        batch_size=batch_size, progress=progress)


Observer = Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]


@torch.inference_mode()
def composed_nll(finetuned: nn.Module, pretrained_mlm: nn.Module, corpus: MaskedCorpus,
                 resets: Sequence[Collection[int]], *, batch_size: int = 16,
                 progress: Callable[[Any], Any] = iter, observe: Observer | None = None) -> torch.Tensor:
    """Summed masked NLL of composed models, scored by the pre-trained MLM head: model i takes the pre-trained
    weights at the depths in ``resets[i]`` (0 = the input stage, 1..L the blocks) and the fine-tuned ones elsewhere,
    as ``reset_blocks`` would patch it. Returns a float64 tensor, one total per composition.

    Each batch runs both models once (only the one needed when every composition starts from the same one); the
    compositions are walked in lexicographic order of their depth-by-depth sources, a depth-first walk of their
    prefix tree that keeps one hidden state per depth and computes every distinct mixed prefix once. ``observe``,
    if given, sees ``(finetuned_states, pretrained_states, attention_mask)`` of each batch (``states[d]``: the hidden
    state after depth d, 0 = the input stage), with both models run.
    """
    check_same_shape(finetuned, pretrained_mlm)
    head = mlm_head(pretrained_mlm)
    blocks = {False: find_layers(finetuned).blocks, True: find_layers(pretrained_mlm).blocks}
    depth = len(blocks[True])
    plans = [_plan(reset, depth) for reset in resets]
    order = sorted(range(len(plans)), key=plans.__getitem__)
    device = next(pretrained_mlm.parameters()).device
    totals = torch.zeros(len(plans), dtype=torch.float64, device=device)
    for input_ids, attention_mask, labels in progress(corpus.batches(batch_size)):
        input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
        chosen = labels != IGNORE
        states, call = {}, None
        for source, model in ((False, finetuned), (True, pretrained_mlm)):
            if observe is not None or any(plan[0] == source for plan in plans):
                states[source], call = block_states(model, input_ids, attention_mask)
        if observe is not None:
            observe(states[False], states[True], attention_mask)
        path: list[torch.Tensor] = []  # path[d]: hidden state after depth d of the current composition
        previous: tuple[bool, ...] = ()
        for index in order:
            plan = plans[index]
            shared = next((d for d, (a, b) in enumerate(zip(previous, plan)) if a != b), len(previous))
            del path[shared:]
            for d in range(shared, depth + 1):
                pure = all(source == plan[d] for source in plan[:d + 1])
                path.append(states[plan[d]][d] if pure else call(blocks[plan[d]][d - 1], path[-1]))
            previous = plan
            nll, _ = masked_nll(head(path[-1][chosen]), labels)
            totals[index] += nll.double()
    return totals


def _plan(reset: Collection[int], depth: int) -> tuple[bool, ...]:
    """Depth by depth, 0..L: whether the composition takes the pre-trained weights there."""
    outside = sorted(d for d in reset if not 0 <= d <= depth)
    if outside:
        raise ValueError(f"depth {outside[0]} is outside 0..{depth}; reset depths of this model's blocks")
    return tuple(d in reset for d in range(depth + 1))

"""Find the layers of a BERT-family model: embeddings, encoder blocks by depth, pooler and task head.

Every probe and every weight surgery in the toolkit names parameters the same way, through :func:`find_layers`:
``embeddings``, ``encoder.1`` ... ``encoder.L`` (1-based depth), ``pooler``, ``head`` (the classifier or MLM head,
whatever sits outside the base model). BERT, RoBERTa, ALBERT, DistilBERT and ELECTRA are found automatically,
whatever their head; any other model needs ``blocks="dotted.path.to.ModuleList"``.

ALBERT shares one block across all depths: ``blocks`` then holds the same module L times and ``shared`` is True.
Its parameter gradients are summed over depths, so per-depth signals must come from activation gradients.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Where each family keeps its ModuleList of encoder blocks, relative to the base model.
KNOWN_BLOCKS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "h")
ALBERT_SHARED = "encoder.albert_layer_groups.0.albert_layers.0"


class LayerDiscoveryError(ValueError):
    """The model's encoder blocks could not be found; the message names the option to set."""


@dataclass(frozen=True)
class LayerMap:
    """The named parts of one model. Prefixes are dotted parameter-name prefixes in ``model.named_parameters()``."""

    base_prefix: str
    blocks: list[nn.Module]
    block_prefixes: list[str]
    shared: bool
    embeddings_prefix: str
    pooler_prefix: str | None

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def group_of(self, name: str) -> str:
        """The layer a parameter belongs to: ``embeddings``, ``encoder.d``, ``encoder.shared``, ``pooler`` or
        ``head``; anything else inside the base model (ALBERT's embedding projection, say) is ``other``."""
        if self.shared and name.startswith(self.block_prefixes[0] + "."):
            return "encoder.shared"
        for depth, prefix in enumerate(self.block_prefixes, start=1):
            if name.startswith(prefix + "."):
                return f"encoder.{depth}"
        if name.startswith(self.embeddings_prefix + "."):
            return "embeddings"
        if self.pooler_prefix and name.startswith(self.pooler_prefix + "."):
            return "pooler"
        if self.base_prefix and not name.startswith(self.base_prefix + "."):
            return "head"
        return "other"

    def component_of(self, name: str) -> str | None:
        """The parameter's path inside its encoder block (``attention.self.query.weight``), else None."""
        for prefix in dict.fromkeys(self.block_prefixes):
            if name.startswith(prefix + "."):
                return name[len(prefix) + 1:]
        return None


def find_layers(model: nn.Module, blocks: str | None = None) -> LayerMap:
    """Map ``model`` (any head) to its named parts; ``blocks`` overrides the block list's dotted path."""
    base_prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, base_prefix, None) if base_prefix else None
    if base is None:
        base, base_prefix = model, ""
    join = (lambda path: f"{base_prefix}.{path}") if base_prefix else (lambda path: path)
    config = getattr(model, "config", None)

    if blocks is None and _has(base, ALBERT_SHARED):
        shared_block = base.get_submodule(ALBERT_SHARED)
        depth = int(config.num_hidden_layers)
        return LayerMap(base_prefix, [shared_block] * depth, [join(ALBERT_SHARED)] * depth, True,
                        join("embeddings"), _pooler(base, join))

    path = blocks if blocks is not None else next((p for p in KNOWN_BLOCKS if _has(base, p)), None)
    if path is None or not _has(base, path) or not isinstance(base.get_submodule(path), nn.ModuleList):
        raise LayerDiscoveryError(
            f"cannot find the encoder blocks of {type(model).__name__}; pass blocks='dotted.path.to.ModuleList' "
            f"(relative to model.{base_prefix or '<root>'})")
    block_list = base.get_submodule(path)
    embeddings = next((n for n in ("embeddings", "embed_tokens", "wte") if _has(base, n)), "embeddings")
    return LayerMap(base_prefix, list(block_list), [join(f"{path}.{i}") for i in range(len(block_list))], False,
                    join(embeddings), _pooler(base, join))


def _pooler(base: nn.Module, join) -> str | None:
    return join("pooler") if getattr(base, "pooler", None) is not None else None


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True

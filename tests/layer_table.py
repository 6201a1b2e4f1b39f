"""Which layer each parameter of the tiny models belongs to, written out by hand from the Hugging Face model
structure of each architecture: the oracles group gradients with this table, never with the code under test.

A rule is a (regular expression, layer) pair matched against the parameter's full name; ``{d}`` in the layer is
the block's 0-based index plus one.
"""
from __future__ import annotations

import re

RULES: dict[str, list[tuple[str, str]]] = {
    "bert": [(r"bert\.embeddings\.", "embeddings"), (r"bert\.encoder\.layer\.(\d+)\.", "encoder.{d}"),
             (r"bert\.pooler\.", "pooler"), (r"classifier\.", "head")],
    "roberta": [(r"roberta\.embeddings\.", "embeddings"), (r"roberta\.encoder\.layer\.(\d+)\.", "encoder.{d}"),
                (r"classifier\.", "head")],  # RobertaForSequenceClassification has no pooler
    "albert": [(r"albert\.embeddings\.", "embeddings"),
               (r"albert\.encoder\.embedding_hidden_mapping_in\.", "other"),  # the projection to the hidden size
               (r"albert\.encoder\.albert_layer_groups\.", "encoder.shared"),  # one block for every depth
               (r"albert\.pooler\.", "pooler"), (r"classifier\.", "head")],
    "distilbert": [(r"distilbert\.embeddings\.", "embeddings"),
                   (r"distilbert\.transformer\.layer\.(\d+)\.", "encoder.{d}"),
                   (r"pre_classifier\.", "head"), (r"classifier\.", "head")],
    "electra": [(r"electra\.embeddings\.", "embeddings"), (r"electra\.embeddings_project\.", "other"),
                (r"electra\.encoder\.layer\.(\d+)\.", "encoder.{d}"), (r"classifier\.", "head")],
}


def layer_of(arch: str, name: str) -> str:
    """The layer of parameter ``name`` of a sequence classifier of architecture ``arch``."""
    for pattern, layer in RULES[arch]:
        match = re.match(pattern, name)
        if match:
            return layer.format(d=int(match.group(1)) + 1) if match.groups() else layer
    raise KeyError(f"no rule for {arch} parameter {name}")

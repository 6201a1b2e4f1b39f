"""The shipped embedded default (data/model, data/corpus/heldout.txt) loads offline and is what data/README.md says.

Run: ``python3 -m pytest tests/test_embedded_model.py -q`` (about 15-30 s on 2 shared CPU cores).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from diagnostics.embedded import DATA_DIR, DEFAULT_MODEL, HELDOUT_TEXT
from probes.model.mlm import masked_corpus, model_perplexity, read_text

ENGLISH = (
    "The committee met on Tuesday to discuss the new budget. Several members argued that the proposal was "
    "unrealistic, while others believed it would finally fix the roads and the schools."
)


@pytest.fixture(scope="module")
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tokenizer(offline):
    return AutoTokenizer.from_pretrained(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def model(offline):
    return AutoModelForMaskedLM.from_pretrained(DEFAULT_MODEL).eval()


@pytest.fixture(scope="module")
def figures() -> dict:
    return json.loads((DEFAULT_MODEL / "heldout_perplexity.json").read_text())


def test_shapes_match_the_tokenizer(model, tokenizer):
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (6, 384, 12)
    assert config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), 384)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_tokenizer_round_trips_english_without_unknowns(tokenizer):
    ids = tokenizer(ENGLISH, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == ENGLISH.lower()


def test_every_character_of_the_heldout_text_has_a_token(tokenizer):
    ids = tokenizer(read_text(HELDOUT_TEXT), add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.unk_token_id) / len(ids) < 1e-3


def test_sequence_classification_head_is_new_and_works(offline, tokenizer):
    classifier = AutoModelForSequenceClassification.from_pretrained(DEFAULT_MODEL, num_labels=2).eval()
    batch = tokenizer([ENGLISH, "A short one."], padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert classifier(**batch).logits.shape == (2, 2)


def test_shipped_heldout_perplexity_is_reproduced(model, tokenizer, figures):
    subset = figures["subset"]
    corpus = masked_corpus(read_text(HELDOUT_TEXT), tokenizer, block_length=figures["settings"]["block_length"],
                           max_tokens=subset["max_tokens"], seed=figures["settings"]["seed"])
    assert corpus.masked_tokens == subset["masked_tokens"]
    assert model_perplexity(model, corpus) == pytest.approx(subset["perplexity"], rel=1e-3)


def test_model_beats_the_unigram_baseline_by_far(figures):
    full = figures["full"]
    assert full["perplexity"] < full["unigram_perplexity"] / 4


def test_committed_artefacts_match_the_manifest():
    result = subprocess.run([sys.executable, str(DATA_DIR / "manifest.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

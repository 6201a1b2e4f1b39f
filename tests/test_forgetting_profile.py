"""Tests of forgetting located: linear CKA, per-layer weight change, composed models and the profile.

    python3 -m pytest tests/test_forgetting_profile.py

Oracles that share none of the code under test: CKA in its kernel form (n x n Gram matrices, numpy, float64) and
on matrices of known similarity; weight change summed by hand; every perplexity of the profile from a
``BertForMaskedLM`` assembled by hand from the two models' state dicts, its perplexity computed naively
(log-softmax over all logits, numpy); for ALBERT an unshared ALBERT holding the chosen weights per depth.
"""
from __future__ import annotations

import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch
from transformers import AlbertModel, BertForMaskedLM

import tiny
from diagnostics import forgetting
from probes import records
from probes.model import mlm
from probes.model.profile import forgetting_profile
from probes.model.reset import reset_blocks
from probes.model.similarity import CKATotals, linear_cka
from probes.model.sweep import composed_nll, mlm_head, reset_depths
from probes.model.weight_change import relative_weight_change

BLOCK = 64
DEPTH = tiny.LAYERS


@pytest.fixture(scope="module")
def corpus() -> mlm.MaskedCorpus:
    return mlm.masked_corpus(tiny.TEXT, tiny.tokenizer(), block_length=BLOCK, seed=0)


def kernel_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s definition through n x n Gram matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = x.shape[0]
    centring = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ centring @ b @ centring)

    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


# ----------------------------------------------------------------------------------------------- CKA


def test_cka_over_uneven_batches_equals_the_kernel_form():
    generator = np.random.default_rng(0)
    x = generator.normal(size=(300, 24)) + 5.0  # a large mean: centring must be exact
    y = x[:, :16] @ generator.normal(size=(16, 20)) + generator.normal(size=(300, 20)) * 2.0
    totals = CKATotals()
    for start, stop in ((0, 7), (7, 150), (150, 151), (151, 300)):
        totals.update(torch.tensor(x[start:stop], dtype=torch.float32), torch.tensor(y[start:stop], dtype=torch.float32))
    expected = kernel_cka(x, y)
    assert 0.2 < expected < 0.9
    assert totals.value() == pytest.approx(expected, rel=1e-5)


def test_cka_of_known_similarities():
    generator = np.random.default_rng(1)
    x = generator.normal(size=(200, 12))
    rotation, _ = np.linalg.qr(generator.normal(size=(12, 12)))
    same = x @ rotation * 3.0 - 7.0  # rotated, scaled, shifted: the same representation
    assert linear_cka(torch.tensor(x), torch.tensor(same)) == pytest.approx(1.0, abs=1e-6)
    # two centred orthonormal columns, against the first alone: CKA = a^2 / sqrt(a^4 + a^4) = 1 / sqrt(2)
    columns = generator.normal(size=(200, 2))
    columns, _ = np.linalg.qr(columns - columns.mean(axis=0))
    assert linear_cka(torch.tensor(columns), torch.tensor(columns[:, :1])) == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    other = generator.normal(size=(200, 12))
    unrelated = linear_cka(torch.tensor(x), torch.tensor(other))
    assert unrelated == pytest.approx(kernel_cka(x, other), rel=1e-5) and unrelated < 0.2


def test_cka_of_a_constant_side_is_nan():
    assert math.isnan(linear_cka(torch.ones(10, 3), torch.randn(10, 3)))
    assert math.isnan(CKATotals().value())


# ----------------------------------------------------------------------------------------------- weight change


def test_weight_change_per_layer_by_hand():
    pretrained = tiny.masked_lm("bert", seed=0)
    finetuned = tiny.classifier("bert", seed=0)
    finetuned.bert.load_state_dict(pretrained.bert.state_dict(), strict=False)
    with torch.no_grad():
        for parameter in finetuned.bert.encoder.layer[1].parameters():
            parameter.mul_(1.1)  # block 2 moves by exactly 10%
        finetuned.bert.embeddings.word_embeddings.weight[5] += 1.0
    embeddings = dict(pretrained.bert.embeddings.named_parameters())
    expected_embeddings = 1.0 * math.sqrt(embeddings["word_embeddings.weight"].shape[1]) / math.sqrt(
        sum(float(p.detach().double().square().sum()) for p in embeddings.values()))
    changes = relative_weight_change(finetuned, pretrained)
    assert list(changes) == ["embeddings", "encoder.1", "encoder.2", "encoder.3", "encoder.4"]  # no pooler, no head
    assert changes["encoder.2"] == pytest.approx(0.1, rel=1e-6)
    assert changes["embeddings"] == pytest.approx(expected_embeddings, rel=1e-6)
    assert changes["encoder.1"] == changes["encoder.3"] == 0.0
    initial = copy.deepcopy(finetuned)
    with torch.no_grad():
        finetuned.classifier.weight.mul_(3.0)
    assert relative_weight_change(finetuned, initial)["head"] == pytest.approx(2.0, rel=1e-6)


# ----------------------------------------------------------------------------------------------- compositions


def hand_patched_mlm(finetuned, pretrained, reset: set[int], *, decoder_from_pretrained: bool = True):
    """A BertForMaskedLM built by hand: each depth's weights from the pre-trained model (if in ``reset``) or the
    fine-tuned one, the pre-trained MLM head, its decoder the pre-trained word embeddings (untied)."""
    config = copy.deepcopy(pretrained.config)
    config.tie_word_embeddings = False
    model = BertForMaskedLM(config).eval()
    state = {f"cls.{name}": value for name, value in pretrained.cls.state_dict().items()}
    for depth in range(DEPTH + 1):
        source = pretrained.bert if depth in reset else finetuned.bert
        part = source.embeddings if depth == 0 else source.encoder.layer[depth - 1]
        prefix = "bert.embeddings" if depth == 0 else f"bert.encoder.layer.{depth - 1}"
        state.update({f"{prefix}.{name}": value for name, value in part.state_dict().items()})
    decoder = (pretrained if decoder_from_pretrained else finetuned).bert.embeddings.word_embeddings.weight
    state["cls.predictions.decoder.weight"] = decoder
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in name or "bias" in name for name in missing), missing
    model.cls.predictions.decoder.bias = model.cls.predictions.bias
    return model


def naive_perplexity(model, corpus) -> float:
    """exp of the mean NLL over masked tokens, from log-softmax over all logits, in numpy float64."""
    logprobs, targets = [], []
    with torch.no_grad():
        for input_ids, attention_mask, labels in corpus.batches(8):
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.double().numpy()
            chosen = labels.numpy() != mlm.IGNORE
            rows = logits[chosen]
            rows = rows - rows.max(axis=1, keepdims=True)
            logprobs.append(rows - np.log(np.exp(rows).sum(axis=1, keepdims=True)))
            targets.append(labels.numpy()[chosen])
    logprobs, targets = np.concatenate(logprobs), np.concatenate(targets)
    return float(np.exp(-logprobs[np.arange(len(targets)), targets].mean()))


@pytest.fixture(scope="module")
def bert_profile(corpus):
    finetuned, pretrained = tiny.classifier("bert", seed=1).eval(), tiny.masked_lm("bert", seed=0)
    return finetuned, pretrained, forgetting_profile(finetuned, pretrained, corpus, batch_size=8)


def test_profile_perplexities_equal_hand_patched_models(bert_profile, corpus):
    finetuned, pretrained, profile = bert_profile
    every = set(range(DEPTH + 1))
    cases = {("embeddings_reset", 0): {0}, ("perplexity", DEPTH): every}
    cases.update({("alone", d): every - {d} for d in range(DEPTH + 1)})
    cases.update({("embeddings_finetuned", k): set(range(DEPTH - k + 1, DEPTH + 1)) for k in range(DEPTH + 1)})
    cases.update({("embeddings_reset", k): {0} | set(range(DEPTH - k + 1, DEPTH + 1)) for k in (1, 3)})
    for (curve, index), reset in cases.items():
        expected = naive_perplexity(hand_patched_mlm(finetuned, pretrained, reset), corpus)
        assert getattr(profile, curve)[index] == pytest.approx(expected, rel=1e-5), (curve, index)
    assert profile.embeddings_only_reset == profile.embeddings_reset[0]
    assert profile.perplexity[:DEPTH] == profile.embeddings_finetuned[:DEPTH]
    assert profile.alone[0] == pytest.approx(profile.embeddings_finetuned[DEPTH], rel=1e-9)
    assert len(set(round(v, 4) for v in profile.alone)) == DEPTH + 1  # the compositions really differ


def test_tied_decoder_stays_pretrained_when_finetuned_embeddings_are_scored(corpus):
    """The pre-trained head's decoder is tied to the pre-trained word embeddings; scoring a model whose embeddings
    are fine-tuned (here a fine-tuned MLM with its own tied decoder) must still use the pre-trained decoder."""
    pretrained, finetuned = tiny.masked_lm("bert", seed=0), tiny.masked_lm("bert", seed=1)
    assert pretrained.cls.predictions.decoder.weight is pretrained.bert.embeddings.word_embeddings.weight
    decoder = pretrained.cls.predictions.decoder.weight.clone()
    profile = forgetting_profile(finetuned, pretrained, corpus, batch_size=8)
    right = naive_perplexity(hand_patched_mlm(finetuned, pretrained, set()), corpus)
    wrong = naive_perplexity(hand_patched_mlm(finetuned, pretrained, set(), decoder_from_pretrained=False), corpus)
    assert profile.finetuned_perplexity == pytest.approx(right, rel=1e-5)
    assert abs(profile.finetuned_perplexity - wrong) > 1e-3 * wrong
    assert torch.equal(pretrained.cls.predictions.decoder.weight, decoder)
    assert pretrained.cls.predictions.decoder.weight is pretrained.bert.embeddings.word_embeddings.weight


def test_profile_cka_and_weight_change_against_oracles(bert_profile, corpus):
    finetuned, pretrained, profile = bert_profile
    with torch.no_grad():
        tuned = finetuned.bert(input_ids=corpus.input_ids, output_hidden_states=True).hidden_states
        reference = pretrained.bert(input_ids=corpus.input_ids, output_hidden_states=True).hidden_states
    width = tuned[0].shape[-1]
    expected = [kernel_cka(x.reshape(-1, width).double().numpy(), y.reshape(-1, width).double().numpy())
                for x, y in zip(tuned, reference)]
    assert profile.cka == pytest.approx(expected, rel=1e-4)
    assert profile.layers == ["embeddings"] + [f"encoder.{d}" for d in range(1, DEPTH + 1)]
    for name, value in zip(profile.layers, profile.weight_change):
        mine = dict(finetuned.bert.named_parameters())
        prefix = "embeddings." if name == "embeddings" else f"encoder.layer.{int(name.split('.')[1]) - 1}."
        theirs = {n: p for n, p in pretrained.bert.named_parameters() if n.startswith(prefix)}
        moved = sum(float((mine[n] - p).double().square().sum()) for n, p in theirs.items())
        size = sum(float(p.double().square().sum()) for p in theirs.values())
        assert value == pytest.approx(math.sqrt(moved / size), rel=1e-6), name


@torch.inference_mode()
def naive_nll(finetuned, pretrained, corpus, depths) -> float:
    head, total = mlm_head(pretrained), 0.0
    with reset_blocks(finetuned, pretrained, depths):
        for input_ids, attention_mask, labels in corpus.batches(8):
            hidden = finetuned.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            total += float(mlm.masked_nll(head(hidden), labels)[0])
    return total


@pytest.mark.parametrize("arch", ["roberta", "distilbert", "electra"])
def test_any_composition_equals_reset_blocks(arch, corpus):
    finetuned, pretrained = tiny.classifier(arch, seed=1).eval(), tiny.masked_lm(arch, seed=0)
    resets = [set(c) for c in itertools.combinations(range(DEPTH + 1), 2)] + [{1, 3, 4}, set(), {0}]
    totals = composed_nll(finetuned, pretrained, corpus, resets, batch_size=8).tolist()
    assert totals == pytest.approx([naive_nll(finetuned, pretrained, corpus, r) for r in resets], rel=1e-6)


@torch.inference_mode()
def test_albert_compositions_equal_an_unshared_albert(corpus):
    finetuned, pretrained = tiny.classifier("albert", seed=1).eval(), tiny.masked_lm("albert", seed=0)
    resets = [{1, 2, 3, 4}, {0, 2}, {0, 1, 2, 3}, {3}]
    totals = composed_nll(finetuned, pretrained, corpus, resets, batch_size=8).tolist()
    config = copy.deepcopy(pretrained.config)
    config.num_hidden_groups = DEPTH
    head = mlm_head(pretrained)
    for total, reset in zip(totals, resets):
        model = AlbertModel(config, add_pooling_layer=False).eval()
        bottom = pretrained.albert if 0 in reset else finetuned.albert
        state = {n: v for n, v in bottom.state_dict().items() if "albert_layer_groups" not in n and "pooler" not in n}
        for group in range(DEPTH):
            source = pretrained.albert if group + 1 in reset else finetuned.albert
            for name, value in source.encoder.albert_layer_groups[0].state_dict().items():
                state[f"encoder.albert_layer_groups.{group}.{name}"] = value
        model.load_state_dict(state, strict=True)
        expected = sum(float(mlm.masked_nll(head(model(input_ids=i, attention_mask=a).last_hidden_state), l)[0])
                       for i, a, l in corpus.batches(8))
        assert total == pytest.approx(expected, rel=1e-6), reset


def test_reset_depths_rules():
    assert reset_depths(0, 4) == set() and reset_depths(4, 4) == {0, 1, 2, 3, 4}
    assert reset_depths(2, 4, embeddings="finetuned") == {3, 4}
    assert reset_depths(2, 4, embeddings="reset") == {0, 3, 4}
    assert reset_depths(1, 4, "bottom") == {0, 1} and reset_depths(1, 4, "bottom", "finetuned") == {1}
    with pytest.raises(ValueError, match="embeddings rule"):
        reset_depths(1, 4, embeddings="sometimes")


# ----------------------------------------------------------------------------------------------- command


def test_command_json_and_records_hold_the_profile(tmp_path, capsys):
    pretrained = tiny.save(tiny.masked_lm("bert", seed=0), tmp_path / "pretrained")
    checkpoint = tiny.save(tiny.classifier("bert", seed=1), tmp_path / "run" / "final")
    (tmp_path / "corpus.txt").write_text(tiny.TEXT)
    out = tmp_path / "records.h5"
    argv = [str(checkpoint), "--pretrained", str(pretrained), "--corpus", str(tmp_path / "corpus.txt"),
            "--max-tokens", "600", "--out", str(out), "--json"]
    assert forgetting.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # a library may log to stdout first
    assert result["layers"] == ["embeddings", "encoder.1", "encoder.2", "encoder.3", "encoder.4"]
    for key in ("embeddings_finetuned", "embeddings_reset", "alone", "cka", "weight_change"):
        assert len(result[key]) == DEPTH + 1 and all(math.isfinite(v) for v in result[key]), key
    assert result["embeddings_only_reset"] == result["embeddings_reset"][0]
    assert result["embeddings_reset"][-1] == pytest.approx(result["pretrained_perplexity"], rel=1e-9)
    run = records.open_run(out)
    curve, profile = run.grid("final", "forgetting"), run.grid("final", "forgetting_profile")
    assert list(curve.fields["embeddings_reset"]) == pytest.approx(result["embeddings_reset"])
    assert curve.attrs["embeddings_only_reset"] == pytest.approx(result["embeddings_only_reset"])
    assert list(profile.axes["depth"]) == list(range(DEPTH + 1)) and profile.attrs["layers"] == result["layers"]
    for key in ("alone", "cka", "weight_change"):
        assert list(profile.fields[key]) == pytest.approx(result[key]), key
    assert forgetting.main(argv[:-1]) == 0  # a second measurement takes the next free name in both kinds
    assert records.open_run(out).names("forgetting_profile") == ["final", "final-1"]


# ----------------------------------------------------------------------------------------------- probe


def test_probe_profile_follows_training_without_changing_it(tmp_path, corpus):
    import probes
    from probe_harness import LoopConfig, run_loop
    from probes.forgetting import Forgetting

    def classifier():
        config = tiny.config("bert", len(tiny.tokenizer()))
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.1  # a stray random draw would show
        torch.manual_seed(0)
        from transformers import AutoModelForSequenceClassification
        return AutoModelForSequenceClassification.from_config(config)

    pretrained = tiny.masked_lm("bert", seed=0)
    probe = Forgetting(pretrained, corpus, curve=False, profile=True, schedule=probes.Schedule(every=2, dense=0))
    probed = run_loop(LoopConfig(steps=5, lr=1e-2, probe_list=[probe]), tmp_path / "run.h5", model=classifier())
    plain = run_loop(LoopConfig(steps=5, lr=1e-2, probe=False), model=classifier())
    assert probed.losses == plain.losses and torch.equal(probed.rng, plain.rng)
    series = probed.records.series("training_profile", "forgetting_profile")
    layers = ["embeddings"] + [f"encoder.{d}" for d in range(1, DEPTH + 1)]
    assert series.columns == [f"weight_change/{l}" for l in layers] + [f"cka/{l}" for l in layers]
    assert list(series.steps) == [0, 2, 4]
    final = classifier()
    final.load_state_dict(probed.weights)
    expected = forgetting_profile(final.eval(), pretrained, corpus)
    assert list(series.values[-1]) == pytest.approx(expected.weight_change + expected.cka, rel=1e-5)
    assert probed.records.series("training", "forgetting").columns == ["finetuned", "pretrained"]

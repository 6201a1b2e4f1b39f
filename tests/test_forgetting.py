"""Tests of forgetting: the cached layer-reset sweep, patch-and-restore, and the command end to end.

    python3 -m pytest tests/test_forgetting.py            # add -m "not slow" to skip the embedded-default run

Every sweep is checked against an oracle that shares none of its shortcuts: full forward passes of real
transformers models under ``reset_blocks`` (for ALBERT, an unshared ALBERT whose depths hold the chosen weights).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
from safetensors.torch import save_file
from transformers import AlbertModel, BertForMaskedLM

import probes
import tiny
from diagnostics import forgetting
from probes import records
from probes.model import mlm
from diagnostics.embedded import DEFAULT_MODEL, HELDOUT_TEXT
from probes.model.reset import reset_blocks
from probe_harness import LoopConfig, run_loop
from probes.catalogue import FORGETTING_DURING
from probes.forgetting import Forgetting
from probes.model.sweep import layer_reset_sweep, mlm_head

BLOCK = 64
SWEPT = ("bert", "roberta", "distilbert", "electra")  # ALBERT has its own oracle below


@pytest.fixture(scope="module")
def corpus() -> mlm.MaskedCorpus:
    return mlm.masked_corpus(tiny.TEXT, tiny.tokenizer(), block_length=BLOCK, seed=0)


def models(arch: str):
    """A pre-trained tiny MLM and a 'fine-tuned' classifier of the same shape with other weights."""
    return tiny.classifier(arch, seed=1).eval(), tiny.masked_lm(arch, seed=0)


@torch.inference_mode()
def naive_nll(finetuned, pretrained, corpus, depths) -> float:
    """Summed NLL of one reset model: full base forward under reset_blocks, head on every position."""
    head, total = mlm_head(pretrained), 0.0
    with reset_blocks(finetuned, pretrained, depths):
        for input_ids, attention_mask, labels in corpus.batches(8):
            hidden = finetuned.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            total += float(mlm.masked_nll(head(hidden), labels)[0])
    return total


def reset_depths(k: int, depth: int, direction: str) -> list[int]:
    """The depths reset for k (0 is the input stage, which goes with block 1)."""
    blocks = range(depth - k + 1, depth + 1) if direction == "top" else range(1, k + 1)
    return list(blocks) + ([0] if 1 in blocks else [])


@torch.inference_mode()
def unshared_albert_nll(finetuned, pretrained, corpus, k: int) -> float:
    """ALBERT oracle: an ALBERT with one layer group per depth, holding fine-tuned or pre-trained weights."""
    depth = pretrained.config.num_hidden_layers
    config = copy.deepcopy(pretrained.config)
    config.num_hidden_groups = depth
    model = AlbertModel(config, add_pooling_layer=False).eval()
    bottom = finetuned.albert if k < depth else pretrained.albert
    state = {name: value for name, value in bottom.state_dict().items()
             if "albert_layer_groups" not in name and "pooler" not in name}
    for group in range(depth):
        source = finetuned.albert if group < depth - k else pretrained.albert
        for name, value in source.encoder.albert_layer_groups[0].state_dict().items():
            state[f"encoder.albert_layer_groups.{group}.{name}"] = value
    model.load_state_dict(state, strict=True)
    head, total = mlm_head(pretrained), 0.0
    for input_ids, attention_mask, labels in corpus.batches(8):
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        total += float(mlm.masked_nll(head(hidden), labels)[0])
    return total


# ----------------------------------------------------------------------------------------------- the sweep


@pytest.mark.parametrize("arch", tiny.ARCHITECTURES)
def test_head_gives_the_models_own_logits(arch, corpus):
    _, pretrained = models(arch)
    input_ids, attention_mask, _ = next(corpus.batches(4))
    with torch.inference_mode():
        hidden = pretrained.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        expected = pretrained(input_ids=input_ids, attention_mask=attention_mask).logits
        assert torch.allclose(mlm_head(pretrained)(hidden), expected, atol=1e-6)


@pytest.mark.parametrize("arch", SWEPT)
def test_cached_sweep_equals_naive_reset(arch, corpus):
    finetuned, pretrained = models(arch)
    totals = layer_reset_sweep(finetuned, pretrained, corpus, batch_size=8)
    depth = len(totals.k) - 1
    expected = [naive_nll(finetuned, pretrained, corpus, reset_depths(k, depth, "top")) for k in totals.k]
    assert totals.nll == pytest.approx(expected, rel=1e-6)
    assert len(set(round(v, 3) for v in totals.nll)) == depth + 1  # the models really differ


def test_bottom_direction_equals_naive_reset(corpus):
    finetuned, pretrained = models("bert")
    totals = layer_reset_sweep(finetuned, pretrained, corpus, direction="bottom", batch_size=8)
    expected = [naive_nll(finetuned, pretrained, corpus, reset_depths(k, 4, "bottom")) for k in totals.k]
    assert totals.nll == pytest.approx(expected, rel=1e-6)


def test_albert_switches_the_shared_block_at_depth_L_minus_k(corpus):
    finetuned, pretrained = models("albert")
    totals = layer_reset_sweep(finetuned, pretrained, corpus, batch_size=8)
    expected = [unshared_albert_nll(finetuned, pretrained, corpus, k) for k in totals.k]
    assert totals.nll == pytest.approx(expected, rel=1e-6)


def test_padded_blocks_use_the_models_own_mask(corpus):
    """Blocks with padding: the cached sweep must pass the mask exactly as the model formats it."""
    attention_mask = torch.ones_like(corpus.attention_mask)
    attention_mask[::2, BLOCK // 2:] = 0
    labels = corpus.labels.masked_fill(attention_mask == 0, mlm.IGNORE)
    padded = mlm.MaskedCorpus(corpus.input_ids, attention_mask, labels)
    finetuned, pretrained = models("bert")
    totals = layer_reset_sweep(finetuned, pretrained, padded, batch_size=8)
    expected = [naive_nll(finetuned, pretrained, padded, reset_depths(k, 4, "top")) for k in totals.k]
    assert totals.nll == pytest.approx(expected, rel=1e-6)
    assert totals.nll != pytest.approx(layer_reset_sweep(finetuned, pretrained, mlm.MaskedCorpus(
        corpus.input_ids, corpus.attention_mask, labels), batch_size=8).nll, rel=1e-6)


def test_k0_is_the_finetuned_encoder_with_the_pretrained_head(corpus):
    finetuned, pretrained = models("bert")
    config = copy.deepcopy(pretrained.config)
    config.tie_word_embeddings = False
    composed = BertForMaskedLM(config).eval()
    composed.bert.load_state_dict(finetuned.bert.state_dict(), strict=False)
    composed.cls.load_state_dict(pretrained.cls.state_dict())
    composed.cls.predictions.decoder.weight.data.copy_(pretrained.bert.embeddings.word_embeddings.weight)
    totals = layer_reset_sweep(finetuned, pretrained, corpus, batch_size=8)
    assert totals.perplexity[0] == pytest.approx(mlm.model_perplexity(composed, corpus), rel=1e-6)


@pytest.mark.parametrize("arch", tiny.ARCHITECTURES)
@pytest.mark.parametrize("direction", ["top", "bottom"])
def test_k_L_is_the_pretrained_model(arch, direction, corpus):
    finetuned, pretrained = models(arch)
    totals = layer_reset_sweep(finetuned, pretrained, corpus, direction=direction, batch_size=8)
    reference = mlm.model_perplexity(pretrained, corpus)
    assert totals.perplexity[-1] == pytest.approx(reference, rel=1e-6)
    assert totals.pretrained_perplexity == totals.perplexity[-1]
    assert totals.perplexity[0] != pytest.approx(reference, rel=1e-6)


# ----------------------------------------------------------------------------------------------- weights


def state(model) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def identical(model, saved) -> bool:
    return all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_sweep_leaves_both_models_bit_identical(arch, corpus):
    finetuned, pretrained = models(arch)
    before = state(finetuned), state(pretrained)
    layer_reset_sweep(finetuned, pretrained, corpus, batch_size=8)
    assert identical(finetuned, before[0]) and identical(pretrained, before[1])


def test_reset_blocks_patches_then_restores_exactly_even_after_an_error():
    finetuned, pretrained = models("bert")
    before = state(finetuned)
    with reset_blocks(finetuned, pretrained, [0, 4]):
        assert torch.equal(finetuned.bert.encoder.layer[3].output.dense.weight,
                           pretrained.bert.encoder.layer[3].output.dense.weight)
        assert torch.equal(finetuned.bert.embeddings.word_embeddings.weight,
                           pretrained.bert.embeddings.word_embeddings.weight)
        assert torch.equal(finetuned.bert.encoder.layer[2].output.dense.weight,
                           before["bert.encoder.layer.2.output.dense.weight"])
    assert identical(finetuned, before)
    with pytest.raises(RuntimeError, match="inside"):
        with reset_blocks(finetuned, pretrained, [1, 2, 3, 4]):
            raise RuntimeError("inside")
    assert identical(finetuned, before)


def test_reset_blocks_refuses_single_albert_depths_and_other_sizes():
    finetuned, pretrained = models("albert")
    with pytest.raises(ValueError, match="shares one block"):
        with reset_blocks(finetuned, pretrained, [4]):
            pass
    small = tiny.masked_lm("bert", layers=2)
    small.bert.encoder.layer[0].output.dense.weight.data = torch.zeros(32, 32)
    with pytest.raises(ValueError, match="no parameter"):
        with reset_blocks(models("bert")[0], small, [1]):
            pass


# ----------------------------------------------------------------------------------------------- command


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Pre-trained and fine-tuned checkpoint folders, a text corpus, and broken inputs."""
    root = tmp_path_factory.mktemp("forgetting")
    found = {"pretrained": tiny.save(tiny.masked_lm("bert", seed=0), root / "pretrained"),
             "checkpoint": tiny.save(tiny.classifier("bert", seed=1), root / "run" / "final"),
             "roberta": tiny.save(tiny.masked_lm("roberta", seed=0), root / "roberta"),
             "roberta-checkpoint": tiny.save(tiny.classifier("roberta", seed=1), root / "roberta-checkpoint"),
             "deeper": tiny.save(tiny.masked_lm("bert", seed=0, layers=6), root / "deeper"),
             "no-encoder": root / "no-encoder", "other-vocabulary": root / "other-vocabulary",
             "not-a-checkpoint": root / "not-a-checkpoint", "corpus": root / "corpus.txt"}
    found["corpus"].write_text(tiny.TEXT)
    found["not-a-checkpoint"].mkdir()
    (found["not-a-checkpoint"] / "notes.txt").write_text("hello")
    classifier = tiny.classifier("bert", seed=1)
    found["no-encoder"].mkdir()
    classifier.config.save_pretrained(found["no-encoder"])
    save_file({name: value.contiguous() for name, value in classifier.state_dict().items()
               if name.startswith("classifier")}, found["no-encoder"] / "model.safetensors", {"format": "pt"})
    tiny.save(classifier, found["other-vocabulary"])
    other = tiny.tokenizer()
    other.add_tokens(["zebra", "quokka"])
    other.save_pretrained(found["other-vocabulary"])
    return found


def command(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diagnostics.forgetting", *map(str, args), "--precision", "fp32"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_command_json_and_two_records(folders, tmp_path):
    out = tmp_path / "run.h5"
    common = (folders["checkpoint"], "--pretrained", folders["pretrained"], "--corpus", folders["corpus"])
    first = command(*common, "--out", out, "--json")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["direction"] == "top" and result["k"] == [0, 1, 2, 3, 4]
    assert result["masked_tokens"] > 0 and result["record"] == "final"
    assert result["perplexity"][-1] == pytest.approx(result["pretrained_perplexity"])
    grid = records.open_run(out).grid("final", "forgetting")
    assert list(grid.axes["k"]) == result["k"]
    assert list(grid.fields["perplexity"]) == pytest.approx(result["perplexity"])
    assert grid.attrs["direction"] == "top" and grid.attrs["masked_tokens"] == result["masked_tokens"]
    assert grid.attrs["pretrained"] == str(folders["pretrained"].resolve()) and grid.attrs["max_tokens"] is None

    second = command(*common, "--out", out, "--direction", "bottom", "--max-tokens", "500")
    assert second.returncode == 0, second.stderr
    assert "pre-trained" in second.stdout and "forgetting/final-1" in second.stdout
    run = records.open_run(out)
    assert run.names("forgetting") == ["final", "final-1"]
    assert list(run.grid("final", "forgetting").fields["perplexity"]) == pytest.approx(result["perplexity"])
    assert run.grid("final-1", "forgetting").attrs["direction"] == "bottom"


def test_command_in_process_table(folders, capsys):
    code = forgetting.main([str(folders["checkpoint"]), "--pretrained", str(folders["pretrained"]),
                            "--corpus", str(folders["corpus"]), "--max-tokens", "300"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[2].split() == ["k", "perplexity", "x", "pre-trained", "emb.", "fine-tuned", "emb.", "reset"]
    assert lines[8].startswith("pre-trained") and "only the embeddings reset" in lines[8]
    assert [line.split()[0] for line in lines[10:]] == ["embeddings", "encoder.1", "encoder.2", "encoder.3",
                                                        "encoder.4"]


def bad_inputs(folders, tmp_path) -> dict[str, tuple[list, str]]:
    """argv and the expected phrase of each bad input."""
    ckpt, pre = str(folders["checkpoint"]), ["--pretrained", str(folders["pretrained"])]
    text = ["--corpus", str(folders["corpus"])]
    for name, content in (("empty.txt", b"  \n"), ("short.txt", b"the king."), ("binary.txt", b"\x00\x01abc\x00")):
        (tmp_path / name).write_bytes(content)
    (tmp_path / "foreign.h5").write_bytes(b"")
    with h5py.File(tmp_path / "foreign.h5", "w") as file:
        file.attrs["type"] = "something else"
    (tmp_path / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    (tmp_path / "a-file").write_text("not a folder")
    return {
        "missing checkpoint": ([str(tmp_path / "nowhere"), *pre, *text], "does not exist"),
        "not a checkpoint": ([str(folders["not-a-checkpoint"]), *pre, *text], "is not a checkpoint"),
        "other architecture": ([ckpt, "--pretrained", str(folders["roberta"]), *text], "roberta"),
        "other size": ([ckpt, "--pretrained", str(folders["deeper"]), *text], "same architecture and size"),
        "classifier as pre-trained": ([ckpt, "--pretrained", ckpt, *text], "MLM head"),
        "other vocabulary": ([str(folders["other-vocabulary"]), *pre, *text], "another vocabulary"),
        "empty corpus": ([ckpt, *pre, "--corpus", str(tmp_path / "empty.txt")], "empty"),
        "short corpus": ([ckpt, *pre, "--corpus", str(tmp_path / "short.txt")], "fewer than one block"),
        "binary corpus": ([ckpt, *pre, "--corpus", str(tmp_path / "binary.txt")], "binary"),
        "no encoder": ([str(folders["no-encoder"]), *pre, *text], "no encoder weights"),
        "unnamed pre-trained": ([str(folders["roberta-checkpoint"]), *text], "--pretrained"),
        "foreign output": ([ckpt, *pre, *text, "--out", str(tmp_path / "foreign.h5")], "not an instability"),
        "corrupt output": ([ckpt, *pre, *text, "--out", str(tmp_path / "corrupt.h5")], "corrupt"),
        "unwritable folder": ([ckpt, *pre, *text, "--out", str(tmp_path / "a-file" / "run.h5")], "folder"),
    }


def test_bad_inputs_give_one_line_and_touch_nothing(folders, tmp_path, capsys):
    cases = bad_inputs(folders, tmp_path)
    before = {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    for case, (argv, phrase) in cases.items():
        code = forgetting.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0, case
        assert len(err) == 1 and err[0].startswith("error: ") and phrase in err[0], (case, err)
    assert {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before
    assert not list(tmp_path.glob("*/run.h5"))


def test_existing_record_name_is_refused(folders, tmp_path, capsys):
    out = tmp_path / "run.h5"
    argv = [str(folders["checkpoint"]), "--pretrained", str(folders["pretrained"]), "--corpus",
            str(folders["corpus"]), "--max-tokens", "300", "--out", str(out), "--name", "mine"]
    assert forgetting.main(argv) == 0
    written = out.read_bytes()
    assert forgetting.main(argv) != 0
    assert "already holds forgetting/mine" in capsys.readouterr().err
    assert out.read_bytes() == written


def test_pretrained_and_step_come_from_the_runs_records(folders, tmp_path):
    run_dir = tmp_path / "run"
    checkpoint = tiny.save(tiny.classifier("bert", seed=1), run_dir / "final")
    records.RunWriter.create(run_dir / "run.h5", records.RunMeta(model=str(folders["pretrained"]))).close()
    records.write_summary(run_dir / "run.h5", {"steps": 120})
    out = tmp_path / "forgetting.h5"
    result = forgetting.run(forgetting.ForgettingConfig(checkpoint, corpus=folders["corpus"], max_tokens=300,
                                                        out=out))
    assert result.pretrained == str(folders["pretrained"]) and result.step == 120
    assert records.open_run(out).grid("final", "forgetting").attrs["step"] == 120


def test_interrupted_sweep_writes_nothing(folders, tmp_path, monkeypatch, capsys):
    """Ctrl-C during the sweep (after the first batch): exit 130, no records file."""
    real = forgetting.forgetting_profile

    def interrupted(*args, progress, **kwargs):
        def batches(iterator):
            yield next(iter(iterator))
            raise KeyboardInterrupt
        return real(*args, progress=batches, **kwargs)

    monkeypatch.setattr(forgetting, "forgetting_profile", interrupted)
    out = tmp_path / "run.h5"
    code = forgetting.main([str(folders["checkpoint"]), "--pretrained", str(folders["pretrained"]), "--corpus",
                            str(folders["corpus"]), "--batch-size", "2", "--out", str(out)])
    assert code == 130 and not out.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted by SIGINT; nothing written"


@pytest.mark.slow
def test_bad_input_in_a_real_process_is_one_line_without_traceback(folders):
    result = command(folders["no-encoder"], "--pretrained", folders["pretrained"], "--corpus", folders["corpus"])
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").is_file() or not HELDOUT_TEXT.is_file(),
                    reason="the embedded default (data/model, data/corpus/heldout.txt) is not built yet")
def test_embedded_default_top_block_perturbed(tmp_path):
    """A copy of the embedded model with a noisy top block: only k = 0 is off, k >= 1 is the pre-trained model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(DEFAULT_MODEL, num_labels=2)
    top = model.base_model.encoder.layer[-1]
    with torch.no_grad():
        for parameter in top.parameters():
            parameter.add_(torch.randn_like(parameter) * parameter.std())
    model.save_pretrained(tmp_path / "final")
    AutoTokenizer.from_pretrained(DEFAULT_MODEL).save_pretrained(tmp_path / "final")
    result = command(tmp_path / "final", "--max-tokens", "4000", "--json")
    assert result.returncode == 0, result.stderr
    curve = json.loads(result.stdout)
    assert curve["pretrained"] == str(DEFAULT_MODEL)
    assert curve["perplexity"][0] > 1.05 * curve["pretrained_perplexity"]
    assert curve["perplexity"][1] == pytest.approx(curve["pretrained_perplexity"], rel=0.02)


# ----------------------------------------------------------------------------------------------- probe


def dropout_classifier():
    """A tiny classifier with dropout on, so an evaluation left in train mode would draw random numbers."""
    from transformers import AutoModelForSequenceClassification

    config = tiny.config("bert", len(tiny.tokenizer()))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.1
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


def test_probe_follows_the_curve_without_changing_training(tmp_path, corpus):
    pretrained = tiny.masked_lm("bert", seed=0)
    probe = Forgetting(pretrained, corpus, schedule=probes.Schedule(every=2, dense=0))
    probed = run_loop(LoopConfig(steps=5, lr=1e-2, probe_list=[probe]), tmp_path / "run.h5", model=dropout_classifier())
    plain = run_loop(LoopConfig(steps=5, lr=1e-2, probe=False), model=dropout_classifier())
    assert probed.losses == plain.losses and torch.equal(probed.rng, plain.rng)
    assert all(torch.equal(probed.weights[name], plain.weights[name]) for name in plain.weights)
    series = probed.records.series(FORGETTING_DURING.name, FORGETTING_DURING.kind)
    assert list(series.steps) == [0, 2, 4] and series.columns == [f"k={k}" for k in range(5)]
    final = dropout_classifier()
    final.load_state_dict(probed.weights)
    expected = layer_reset_sweep(final.eval(), pretrained, corpus).perplexity
    assert list(series.values[-1]) == pytest.approx(expected, rel=1e-5)
    assert series.values[0, 0] != pytest.approx(series.values[-1, 0], rel=1e-5)


def test_probe_k0_only_and_modes_restored(tmp_path, corpus):
    pretrained = tiny.masked_lm("bert", seed=0)
    model = dropout_classifier().train()
    model.bert.embeddings.eval()
    modes = [module.training for module in model.modules()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Forgetting(pretrained, corpus, curve=False, schedule=probes.Schedule(every=1))
    with probes.attach(model, optimizer, tmp_path / "run.h5", probes=[probe], strict=True):
        for step in range(2):
            model(**tiny.batch(4, 12, seed=step)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            assert [module.training for module in model.modules()] == modes
    series = records.open_run(tmp_path / "run.h5").series(FORGETTING_DURING.name, FORGETTING_DURING.kind)
    assert series.columns == ["finetuned", "pretrained"] and list(series.steps) == [0, 1]
    reference = mlm.model_perplexity(pretrained, corpus)
    assert list(series.column("pretrained")) == pytest.approx([reference] * 2, rel=1e-5)
    expected = layer_reset_sweep(model.eval(), pretrained, corpus).perplexity[0]
    assert series.column("finetuned")[-1] == pytest.approx(expected, rel=1e-5)


def test_probe_refuses_the_live_model_as_pretrained(corpus):
    model = tiny.masked_lm("bert")
    with pytest.raises(ValueError, match="separate copy"):
        probes.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), None,
                      probes=[Forgetting(model, corpus)])

"""Tests of diagnostics.tasks: metrics against hand-computed values, task folders, encoding, one-line errors.

    python -m pytest tests/test_tasks.py -q
"""
from __future__ import annotations

import json
import math

import pytest

import tiny
from diagnostics import tasks
from diagnostics.tasks import Example, TaskError, encode, load_task, majority_baseline, metric, write_task

PAIRS = [Example("the dog is a kind of animal .", "a dog is an animal .", 1),
         Example("the king had a house by the river .", "the cat was bad .", 0),
         Example("a film", "a movie about a dog and a cat and a king", 1)]
SINGLES = [Example("the film was very good ."), Example("a bad movie", label=1)]


def _meta(name: str, kind: str = "pair", metric_name: str = "accuracy") -> dict:
    return {"name": name, "kind": kind, "label_names": ["no", "yes"], "metric": metric_name,
            "majority_baseline": 0.5, "sizes": {}}


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize("name, predictions, labels, expected", [
    ("accuracy", [1, 0, 1, 1], [1, 0, 0, 1], 0.75),
    ("f1", [1, 1, 0, 0], [1, 0, 1, 0], 0.5),          # tp 1, fp 1, fn 1 -> 2 / 4
    ("f1", [1, 1, 1, 0], [1, 1, 0, 0], 0.8),          # tp 2, fp 1, fn 0 -> 4 / 5
    ("f1", [0, 0, 0], [0, 0, 0], 0.0),                # no positive anywhere: undefined, reported as 0
    ("mcc", [1, 1, 1, 0], [1, 1, 0, 0], 2 / math.sqrt(12)),  # (tp tn - fp fn) / sqrt(3 2 2 1)
    ("mcc", [1, 0, 1, 0], [1, 0, 1, 0], 1.0),
    ("mcc", [1, 0, 1, 0], [0, 1, 0, 1], -1.0),
    ("mcc", [1, 1, 1, 1], [1, 0, 1, 0], 0.0),         # constant predictions: undefined, reported as 0
])
def test_metric_matches_hand_computation(name, predictions, labels, expected):
    assert metric(name, predictions, labels) == pytest.approx(expected)


def test_majority_baseline_predicts_the_most_frequent_label():
    examples = [Example("a", label=y) for y in (1, 1, 0)]
    assert majority_baseline("accuracy", examples) == pytest.approx(2 / 3)
    assert majority_baseline("f1", examples) == pytest.approx(0.8)
    assert majority_baseline("mcc", examples) == 0.0


@pytest.mark.parametrize("call, message", [
    (lambda: metric("auc", [1], [1]), "unknown metric"),
    (lambda: metric("accuracy", [1, 0], [1]), "as many predictions"),
])
def test_metric_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- task folders


def test_committed_tasks_load_with_their_metadata():
    for name, kind, metric_name in (("wordnet-entail", "pair", "accuracy"), ("bible-para", "pair", "f1")):
        task = load_task(name)
        assert (task.kind, task.metric, task.num_labels) == (kind, metric_name, 2)
        assert (len(task.train), len(task.dev)) == (task.meta["sizes"]["train"], task.meta["sizes"]["dev"])
        assert task.majority_baseline == pytest.approx(majority_baseline(task.metric, task.dev))
        assert task.meta["licence"] and task.meta["source"]
        assert not {e.text + e.text_pair for e in task.train} & {e.text + e.text_pair for e in task.dev}


def test_task_names_lists_committed_and_buildable_tasks():
    assert {"wordnet-entail", "bible-para", "hedge", "polarity"} <= set(tasks.task_names())


def test_write_then_load_a_task_folder(tmp_path):
    write_task(tmp_path / "toy", PAIRS, PAIRS[:2], _meta("toy"))
    task = load_task(tmp_path / "toy")
    assert task.train == PAIRS and task.dev == PAIRS[:2] and task.path == tmp_path / "toy"
    assert json.loads((tmp_path / "toy" / "dev.jsonl").read_text().splitlines()[0])["text_pair"]


def test_unknown_task_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown task 'nope'; known: .*wordnet-entail") as error:
        load_task("nope")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content, message", [
    ("", "no examples"),
    ('{"text": "a", "text_pair": "b", "label": 2}\n', "label 2, expected an int in 0..1"),
    ('{"text": "a", "text_pair": "b", "label": "yes"}\n', "label 'yes'"),
    ('{"text": "a", "label": 1}\n', "does not fit a pair task"),
    ('{"text_pair": "b", "label": 1}\n', "no field 'text'"),
    ("{not json\n", "not JSON"),
])
def test_bad_task_files_are_one_line_errors(tmp_path, content, message):
    write_task(tmp_path / "bad", PAIRS, PAIRS, _meta("bad"))
    (tmp_path / "bad" / "train.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_task(tmp_path / "bad")
    assert "\n" not in str(error.value)


def test_a_cached_task_that_cannot_be_built_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "CACHED_TASKS_DIR", tmp_path / "cache")
    monkeypatch.setattr(tasks, "BUILD_SCRIPT", tmp_path / "build_tasks.py")
    with pytest.raises(TaskError, match=r"python .*build_tasks.py --only hedge"):
        load_task("hedge")


# ---------------------------------------------------------------- encoding


def test_encode_pairs_marks_the_second_segment_and_pads_to_the_longest():
    tokenizer = tiny.tokenizer()
    batch = encode(PAIRS, tokenizer, max_length=64)
    assert batch["labels"].tolist() == [1, 0, 1]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())
    for row, mask, types in zip(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]):
        length = int(mask.sum())
        sep = tokenizer.sep_token_id
        first_sep = row.tolist().index(sep)
        assert row[0] == tokenizer.cls_token_id and row[length - 1] == sep
        assert types[:first_sep + 1].sum() == 0 and types[first_sep + 1:length].all()


def test_encode_single_sentences_and_truncation():
    tokenizer = tiny.tokenizer()
    batch = encode(SINGLES, tokenizer, max_length=64)
    assert batch["token_type_ids"].sum() == 0 and batch["labels"].tolist() == [0, 1]
    assert encode(PAIRS, tokenizer, max_length=8)["input_ids"].shape[1] == 8


def test_encode_works_with_the_default_models_tokenizer():
    from diagnostics.embedded import DEFAULT_MODEL

    if not (DEFAULT_MODEL / "tokenizer_config.json").is_file():
        pytest.skip("data/model not built")
    from transformers import AutoTokenizer

    batch = encode(PAIRS, AutoTokenizer.from_pretrained(DEFAULT_MODEL), max_length=32)
    assert batch["input_ids"].shape[0] == 3 and batch["attention_mask"][0].any()


def test_encode_rejects_a_mixed_batch():
    with pytest.raises(ValueError, match="mixes single sentences and pairs"):
        encode(PAIRS[:1] + SINGLES[:1], tiny.tokenizer(), max_length=16)

"""The optimiser audit on real optimisers: it warns on Adam without bias correction, odd epsilon and missing
warm-up, is silent on the recipes' set-ups, and stores what it found in the records."""
from __future__ import annotations

import warnings

import pytest
import torch

import probes
import tiny
from diagnostics.bert_adam import BertAdam
from probes.optimizer_audit import audit_optimizer
from probes.records import open_run


def _params():
    return [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2))]


def _linear_warmup(optimizer, warmup: int = 10, total: int = 100):
    """The recipes' schedule (what transformers.get_linear_schedule_with_warmup computes), as a torch LambdaLR."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup)))


@pytest.mark.parametrize("make", [
    lambda: torch.optim.AdamW(_params(), lr=2e-5, eps=1e-6),
    lambda: torch.optim.Adam(_params(), lr=2e-5),
    lambda: BertAdam(_params(), lr=2e-5, eps=1e-6, correct_bias=True),
], ids=["torch AdamW", "torch Adam", "BertAdam(correct_bias=True)"])
def test_silent_on_bias_corrected_adam_with_warm_up(make):
    optimizer = make()
    _linear_warmup(optimizer)
    audit = audit_optimizer(optimizer)
    assert audit["bias_correction"] is True and audit["warnings"] == []


def test_transformers_schedule_with_warm_up_is_silent():
    transformers = pytest.importorskip("transformers")
    optimizer = torch.optim.AdamW(_params(), lr=2e-5)
    transformers.get_linear_schedule_with_warmup(optimizer, num_warmup_steps=10, num_training_steps=100)
    assert audit_optimizer(optimizer)["warnings"] == []


def test_warns_on_bert_adam_without_bias_correction():
    audit = audit_optimizer(BertAdam(_params(), lr=2e-5, eps=1e-6, correct_bias=False))
    assert audit["bias_correction"] is False
    assert any("without bias correction" in w and "correct_bias=True" in w for w in audit["warnings"])


def test_warns_on_far_epsilon_and_on_a_schedule_without_warm_up():
    optimizer = torch.optim.AdamW(_params(), lr=2e-5, eps=1e-2)
    torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=100)
    problems = audit_optimizer(optimizer)["warnings"]
    assert any("epsilon 0.01" in p for p in problems)
    assert any("no learning-rate warm-up" in p for p in problems)


def test_warm_up_share_given_by_the_caller():
    optimizer = torch.optim.AdamW(_params(), lr=2e-5)
    assert audit_optimizer(optimizer, warmup_steps=10, total_steps=100)["warnings"] == []
    assert any("50%" in p for p in audit_optimizer(optimizer, warmup_steps=50, total_steps=100)["warnings"])
    assert audit_optimizer(optimizer)["warmup_share"] is None, "no scheduler, nothing given: unknown, no warning"


def test_attach_warns_at_once_and_records_the_audit(tmp_path):
    model = tiny.classifier("bert", seed=0)
    optimizer = BertAdam(model.parameters(), lr=1e-3, correct_bias=False)
    with pytest.warns(UserWarning, match="optimiser audit: BertAdam runs Adam without bias correction"):
        session = probes.attach(model, optimizer, tmp_path / "r.h5")
    session.close()
    audit = open_run(tmp_path / "r.h5").meta["optimizer_audit"]
    assert audit["bias_correction"] is False and audit["optimizer"] == "BertAdam"


def test_attach_is_silent_on_adamw(tmp_path):
    model = tiny.classifier("bert", seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        probes.attach(model, optimizer, tmp_path / "r.h5").close()
    assert open_run(tmp_path / "r.h5").meta["optimizer_audit"]["warnings"] == []

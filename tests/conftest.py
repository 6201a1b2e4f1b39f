"""Fixtures: tiny real checkpoints of every supported architecture, made once per test run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run many times faster on one thread than on two contended ones; subprocesses set their own.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_mlm_dir(tmp_path_factory) -> Path:
    """A tiny BERT masked-LM checkpoint folder (model + tokenizer): the stand-in for a pre-trained model."""
    return tiny.save(tiny.masked_lm("bert", seed=0), tmp_path_factory.mktemp("tiny-mlm"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One tiny sequence-classification checkpoint folder per architecture in ``tiny.ARCHITECTURES``."""
    root = tmp_path_factory.mktemp("tiny-cls")
    return {arch: tiny.save(tiny.classifier(arch, seed=0), root / arch) for arch in tiny.ARCHITECTURES}


@pytest.fixture(params=tiny.ARCHITECTURES)
def arch(request) -> str:
    """Parametrise a test over every supported architecture."""
    return request.param


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def quick_study(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``python -m diagnostics.study --quick`` on the embedded default, run once per test run (the study's own
    test and the engines' comparison both read it): its ``--out`` folder and the finished process."""
    out = tmp_path_factory.mktemp("quick-study") / "study"
    done = subprocess.run([sys.executable, "-m", "diagnostics.study", "--out", str(out), "--quick"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=900)
    return out, done

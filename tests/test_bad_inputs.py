"""The bad-input battery: every entry point, fed every kind of bad input that applies to it, must answer with one
line on stderr naming the problem and the fix, a non-zero exit, no traceback, and no file changed or added.

    python3 -m pytest tests/test_bad_inputs.py            # ~40 s on two busy cores (the tools' battery is slow)
    python3 -m pytest tests/test_bad_inputs.py -k surface

The tools run in real subprocesses; to keep the battery fast (importing torch and transformers takes most of a
tool's time) one process runs the cases of the torch tools (finetune first, while transformers is untouched, then
forgetting, surface, study and seed_bank) and a second one, started beside it, those of report, diagnose, export
and plots. Each case runs its module
as ``python -m`` does (``runpy``), with stdout and stderr captured at the file-descriptor level, so native writes
and warnings count too, and the driver hashes every file of the inputs folder before and after it. Each case is
still its own test. The probe attach path is checked in process. An argument that argparse refuses is one
``error: ...; see --help`` line (``plots: error: ...`` for plots), with no usage block before it.
The read-only-folder cases mount a read-only tmpfs (root only; skipped elsewhere); an unwritable path that needs no
privilege is a path under a regular file. KINDS is the list docs/reliability.md gives.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import probes
import records_factory
import tiny
from probes.records import SCHEMA_VERSION, RecordsError
from diagnostics.tasks import Example, write_task

REPO = Path(__file__).resolve().parents[1]

KINDS = {
    "missing-path": "a path that does not exist (checkpoint, model, corpus, records)",
    "not-a-checkpoint": "a folder that is not a save_pretrained checkpoint",
    "architecture-mismatch": "checkpoints or a pre-trained model of another architecture or size",
    "tokenizer-mismatch": "a checkpoint whose tokenizer has another vocabulary than its pre-trained model's",
    "wrong-head": "a classifier where an MLM is needed, or an MLM where a classifier is needed",
    "unnamed-pretrained": "a checkpoint that names no usable pre-trained model, and no --pretrained",
    "empty-text": "an empty corpus or an empty task split",
    "non-text-bytes": "a corpus or task file of binary bytes",
    "truncated-hdf5": "a records file cut short",
    "foreign-hdf5": "an HDF5 file not written by this toolkit",
    "not-hdf5": "a text file where a records file is expected",
    "not-a-table": "a text file where a seed bank's feature table is expected",
    "newer-schema": "a records file of a newer schema version",
    "existing-output": "an output that exists (never overwritten)",
    "output-under-file": "an output path under a regular file (unwritable without privileges)",
    "read-only-folder": "an output folder on a read-only file system",
    "empty-grid": "a grid of size 0",
    "zero-steps": "a run with no optimiser steps (a task with no training examples)",
    "unknown-task": "a task that does not exist",
    "unknown-recipe": "a recipe that does not exist",
    "unknown-figure": "a figure that does not exist",
    "unknown-format": "an export format that does not exist",
    "missing-argument": "a required argument left out (one line and see --help, no usage block)",
    "non-positive-number": "a count or size of 0 (--max-tokens, --batch-size, --max-examples)",
    "no-records": "a folder holding no records files",
    "unknown-layers": "a model whose encoder blocks cannot be found (probes: the error names blocks=)",
    "nonfinite-gradients": "NaN/Inf gradients (probes flag them; the run goes on)",
}


@dataclass(frozen=True)
class Case:
    """One bad input: the tool, its kind, argv with ``{name}`` placeholders for the inputs, and a phrase the
    message must hold."""

    tool: str
    kind: str
    argv: tuple[str, ...]
    needle: str



MODULES = {"finetune": "diagnostics.finetune", "forgetting": "diagnostics.forgetting",
           "surface": "diagnostics.surface", "study": "diagnostics.study", "report": "diagnostics.report",
           "seed_bank": "diagnostics.seed_bank", "diagnose": "diagnostics.diagnose", "export": "diagnostics.export",
           "plots": "plots"}
PROCESSES = (("finetune", "forgetting", "surface", "study", "seed_bank"),  # each driver process's tools
             ("report", "diagnose", "export", "plots"))

FINETUNE = ("--task", "{task}", "--recipe", "default", "--seed", "0", "--out", "{runs}", "--model", "{pretrained}",
            "--max-length", "32", "--epochs", "1", "--batch-size", "8", "--evals", "1", "--threads", "1")
FORGET = ("{checkpoint}", "--pretrained", "{pretrained}", "--corpus", "{corpus}", "--max-tokens", "300")
LINE = ("--line", "{checkpoint}", "{checkpoint2}", "--task", "{task}", "--grid", "2", "--max-examples", "4")
PLOT = ("gradients", "{good}", "-o", "{figures}/gradients.pdf")
EXPORT = ("--to", "csv", "{figures}/tables")


def _with(base: tuple[str, ...], **changes: str) -> tuple[str, ...]:
    """``base`` with the value after each ``--option`` (written ``option_name=value``) replaced."""
    argv = list(base)
    for option, value in changes.items():
        flag = "--" + option.replace("_", "-")
        argv[argv.index(flag) + 1] = value
    return tuple(argv)


def _records_out_cases(tool: str, base: tuple[str, ...], under_file: str) -> list[Case]:
    """The output kinds of a tool that adds records to ``--out FILE.h5`` (an existing file is opened, not replaced)."""
    return [Case(tool, kind, (*base, "--out", path), needle) for kind, path, needle in (
        ("truncated-hdf5", "{truncated}", "truncated"), ("foreign-hdf5", "{foreign}", "not an instability-diagnostics"),
        ("newer-schema", "{newer}", "newer"), ("existing-output", "{notes}", "not an HDF5"),
        ("output-under-file", "{notes}/out.h5", under_file), ("read-only-folder", "{read_only}/out.h5", "writable"))]


def _records_in_cases(tool: str, before: tuple[str, ...], after: tuple[str, ...] = ()) -> list[Case]:
    """The input kinds of a tool that reads records files given as ``before RECORDS after``."""
    return [Case(tool, kind, (*before, path, *after), needle) for kind, path, needle in (
        ("truncated-hdf5", "{truncated}", "truncated"), ("foreign-hdf5", "{foreign}", "not an instability-diagnostics"),
        ("not-hdf5", "{notes}", "not an HDF5"), ("newer-schema", "{newer}", "newer"))]


CASES = [
    Case("finetune", "missing-path", _with(FINETUNE, model="{missing}"), "does not exist"),
    Case("finetune", "not-a-checkpoint", _with(FINETUNE, model="{not_checkpoint}"), "not a checkpoint"),
    Case("finetune", "empty-text", _with(FINETUNE, task="{empty_dev_task}"), "no examples"),
    Case("finetune", "non-text-bytes", _with(FINETUNE, task="{binary_task}"), "UTF-8"),
    Case("finetune", "truncated-hdf5", _with(FINETUNE, out="{truncated_runs}"), "unfinished run"),
    Case("finetune", "existing-output", _with(FINETUNE, out="{unfinished_runs}"), "unfinished run"),
    Case("finetune", "output-under-file", _with(FINETUNE, out="{notes}/runs"), "not a folder"),
    Case("finetune", "read-only-folder", _with(FINETUNE, out="{read_only}/runs"), "writable"),
    Case("finetune", "zero-steps", _with(FINETUNE, task="{empty_train_task}"), "no examples"),
    Case("finetune", "unknown-task", _with(FINETUNE, task="no-such-task"), "unknown task"),
    Case("finetune", "unknown-recipe", _with(FINETUNE, recipe="adamw"), "invalid choice"),
    Case("finetune", "non-positive-number", _with(FINETUNE, batch_size="0"), "must be positive"),
    Case("finetune", "missing-argument", FINETUNE[2:], "required: --task; see --help"),

    Case("forgetting", "missing-path", ("{missing}", *FORGET[1:]), "does not exist"),
    Case("forgetting", "missing-path", _with(FORGET, corpus="{missing}"), "does not exist"),
    Case("forgetting", "not-a-checkpoint", ("{not_checkpoint}", *FORGET[1:]), "not a checkpoint"),
    Case("forgetting", "architecture-mismatch", _with(FORGET, pretrained="{roberta_mlm}"), "roberta"),
    Case("forgetting", "architecture-mismatch", _with(FORGET, pretrained="{deeper_mlm}"), "size"),
    Case("forgetting", "tokenizer-mismatch", ("{other_vocabulary}", *FORGET[1:]), "another vocabulary"),
    Case("forgetting", "wrong-head", _with(FORGET, pretrained="{checkpoint}"), "MLM head"),
    Case("forgetting", "unnamed-pretrained", ("{roberta_checkpoint}", *FORGET[3:]), "--pretrained"),
    Case("forgetting", "empty-text", _with(FORGET, corpus="{empty_corpus}"), "empty"),
    Case("forgetting", "non-text-bytes", _with(FORGET, corpus="{binary_corpus}"), "text"),
    *_records_out_cases("forgetting", FORGET, under_file="folder"),
    Case("forgetting", "non-positive-number", _with(FORGET, max_tokens="0"), "not a positive number"),
    Case("forgetting", "missing-argument", FORGET[1:], "required: checkpoint; see --help"),

    Case("surface", "missing-path", _with(LINE, line="{missing}"), "does not exist"),
    Case("surface", "not-a-checkpoint", _with(LINE, line="{not_checkpoint}"), "no config.json"),
    Case("surface", "architecture-mismatch", (*LINE[:2], "{roberta_checkpoint}", *LINE[3:]), "same architecture"),
    Case("surface", "tokenizer-mismatch", (*LINE[:2], "{other_vocabulary}", *LINE[3:]), "another vocabulary"),
    Case("surface", "wrong-head", (*LINE[:2], "{pretrained}", *LINE[3:]), "not a *ForSequenceClassification"),
    Case("surface", "empty-text", _with(LINE, task="{empty_train_task}"), "no examples"),
    Case("surface", "non-text-bytes", _with(LINE, task="{binary_task}"), "UTF-8"),
    *_records_out_cases("surface", LINE, under_file="does not exist"),
    Case("surface", "empty-grid", _with(LINE, grid="0"), "at least one point"),
    Case("surface", "unknown-task", _with(LINE, task="no-such-task"), "unknown task"),
    Case("surface", "non-positive-number", _with(LINE, max_examples="0"), "--max-examples"),
    Case("surface", "missing-argument", (*LINE[:3], *LINE[5:]), "required: --task; see --help"),

    Case("study", "existing-output", ("--out", "{notes}"), "not a folder"),
    Case("study", "output-under-file", ("--out", "{notes}/study"), "not a folder"),
    Case("study", "read-only-folder", ("--out", "{read_only}/study"), "writable"),
    Case("study", "unknown-task", ("--out", "{runs}", "--tasks", "no-such-task"), "unknown task"),
    Case("study", "unknown-recipe", ("--out", "{runs}", "--recipes", "default,adamw"), "unknown recipe"),
    Case("study", "non-positive-number", ("--out", "{runs}", "--workers", "0"), "--workers must be >= 1"),
    Case("study", "missing-argument", ("--seeds", "0-1"), "required: --out; see --help"),

    Case("seed_bank", "missing-argument", ("--workers", "1"), "pass --out"),
    Case("seed_bank", "non-positive-number", ("--out", "{runs}", "--workers", "0"), "--workers, --seeds"),
    Case("seed_bank", "missing-path", ("--benchmark", "{missing}"), "not found"),
    Case("seed_bank", "not-a-table", ("--benchmark", "{notes}"), "not a seed bank's feature table"),

    Case("report", "missing-path", ("{missing}",), "does not exist"),
    Case("report", "no-records", ("{not_checkpoint}",), "no finished runs"),
    *_records_in_cases("report", ()),
    Case("report", "existing-output", ("{good}", "--out", "{notes}"), "already exists"),
    Case("report", "output-under-file", ("{good}", "--out", "{notes}/report.md"), "folder"),
    Case("report", "read-only-folder", ("{good}", "--out", "{read_only}/report.md"), "writable"),
    Case("report", "missing-argument", ("--json",), "required: runs; see --help"),

    Case("diagnose", "missing-path", ("{missing}",), "does not exist"),
    Case("diagnose", "no-records", ("{not_checkpoint}",), "run.h5 not found"),
    *_records_in_cases("diagnose", ()),
    Case("diagnose", "non-positive-number", ("{good}", "--until", "0"), "must lie in (0, 1]"),
    Case("diagnose", "missing-argument", ("--json",), "required: run; see --help"),

    Case("export", "missing-path", ("{missing}", *EXPORT), "does not exist"),
    Case("export", "no-records", ("{not_checkpoint}", *EXPORT), "no records files"),
    *_records_in_cases("export", (), EXPORT),
    Case("export", "output-under-file", ("{good}", "--to", "csv", "{notes}/tables"), "not a folder"),
    Case("export", "unknown-format", ("{good}", "--to", "xml", "{figures}/tables"), "choose one of csv"),
    Case("export", "missing-argument", ("{good}",), "required: --to; see --help"),

    Case("plots", "missing-path", ("gradients", "{missing}", *PLOT[2:]), "does not exist"),
    Case("plots", "no-records", ("gradients", "{not_checkpoint}", *PLOT[2:]), "no records"),
    *_records_in_cases("plots", ("gradients",), PLOT[2:]),
    Case("plots", "existing-output", (*PLOT[:3], "{existing_pdf}"), "already exists"),
    Case("plots", "output-under-file", (*PLOT[:3], "{notes}/gradients.pdf"), "does not exist"),
    Case("plots", "read-only-folder", (*PLOT[:3], "{read_only}/gradients.pdf"), "writable"),
    Case("plots", "unknown-figure", ("nope", *PLOT[1:]), "invalid choice"),
    Case("plots", "missing-argument", PLOT[:2], "required: -o/--out; see --help"),
]

# The driver: each case [module, argv] runs like `python -m MODULE ARGV...` (runpy), with fd-level capture.
DRIVER = r'''
import hashlib, json, os, runpy, sys, tempfile, traceback
from pathlib import Path

def snapshot(root):
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if not p.is_dir() or not p.is_mount()}

def call(module):
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as end:
        if end.code is None or isinstance(end.code, int):
            return end.code or 0
        print(end.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1

root, cases_path, results_path = sys.argv[1:4]
cases, results = json.loads(Path(cases_path).read_text()), []
for module, argv in cases:
    for loaded in list(sys.modules.values()):  # warnings show again in each case, as in a fresh process
        registry = getattr(loaded, "__warningregistry__", None)
        if isinstance(registry, dict):
            registry.clear()
    before = snapshot(root)
    sys.argv = [module, *argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush(); sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            code = call(module)
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
            os.close(saved[0]); os.close(saved[1])
        texts = []
        for stream in (out, err):
            stream.seek(0)
            texts.append(stream.read().decode(errors="replace"))
    after = snapshot(root)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    results.append({"code": code, "stdout": texts[0], "stderr": texts[1], "changed": changed})
Path(results_path).write_text(json.dumps(results))
'''


# ----------------------------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def read_only(tmp_path_factory) -> Path | None:
    """An empty folder on a read-only tmpfs; None where this user cannot mount one (only root can)."""
    folder = tmp_path_factory.mktemp("read-only")
    mounted = shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True).returncode == 0
    yield folder if mounted else None
    if mounted:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, read_only) -> dict[str, Path]:
    """Every input the cases name, in one folder (``root``, the one hashed); the read-only folder lies outside."""
    root = tmp_path_factory.mktemp("bad-inputs")
    found = {"root": root, "missing": root / "nowhere", "runs": root / "runs", "figures": root / "figures",
             "read_only": read_only or root / "read-only-not-mounted"}
    found["figures"].mkdir()
    found.update(_checkpoints(root))
    found.update(_tasks(root))
    found.update(_texts(root))
    found.update(_records(root))
    for name in ("unfinished_runs", "truncated_runs"):
        found[name] = root / name
        (found[name] / "toy-default-s0").mkdir(parents=True)
    (found["unfinished_runs"] / "toy-default-s0" / "notes.txt").write_text("a run that was killed\n")
    shutil.copy(found["truncated"], found["truncated_runs"] / "toy-default-s0" / "run.h5")
    return found


def _checkpoints(root: Path) -> dict[str, Path]:
    other_vocabulary = tiny.save(tiny.classifier("bert", seed=3), root / "other-vocabulary")
    tokenizer = tiny.tokenizer()
    tokenizer.add_tokens(["zebra", "quokka"])
    tokenizer.save_pretrained(other_vocabulary)
    not_checkpoint = root / "not-a-checkpoint"
    not_checkpoint.mkdir()
    (not_checkpoint / "notes.txt").write_text("hello\n")
    return {"pretrained": tiny.save(tiny.masked_lm("bert", seed=0), root / "pretrained"),
            "checkpoint": tiny.save(tiny.classifier("bert", seed=1), root / "run" / "final"),
            "checkpoint2": tiny.save(tiny.classifier("bert", seed=2), root / "run2" / "final"),
            "roberta_mlm": tiny.save(tiny.masked_lm("roberta", seed=0), root / "roberta-mlm"),
            "roberta_checkpoint": tiny.save(tiny.classifier("roberta", seed=1), root / "roberta-checkpoint"),
            "deeper_mlm": tiny.save(tiny.masked_lm("bert", seed=0, layers=6), root / "deeper-mlm"),
            "other_vocabulary": other_vocabulary, "not_checkpoint": not_checkpoint}


def _tasks(root: Path) -> dict[str, Path]:
    meta = {"name": "toy", "kind": "single", "label_names": ["no", "yes"], "metric": "accuracy",
            "majority_baseline": 0.5}
    examples = [Example(" ".join(tiny.WORDS[i:i + 4]), None, i % 2) for i in range(12)]
    folders = {name: root / name for name in ("task", "empty_train_task", "empty_dev_task", "binary_task")}
    for folder in folders.values():
        write_task(folder, examples[:8], examples[8:], meta)
    (folders["empty_train_task"] / "train.jsonl").write_text("")
    (folders["empty_dev_task"] / "dev.jsonl").write_text("\n")
    (folders["binary_task"] / "train.jsonl").write_bytes(bytes(range(128, 256)) * 4)
    return folders


def _texts(root: Path) -> dict[str, Path]:
    texts = {"corpus": tiny.TEXT.encode(), "empty_corpus": b" \n\n", "binary_corpus": bytes(range(256)) * 8,
             "notes": b"a note, not a records file\n", "existing_pdf": b"%PDF-1.4 keep me\n"}
    paths = {name: root / f"{name}.txt" for name in texts}
    paths["existing_pdf"] = root / "existing.pdf"
    for name, data in texts.items():
        paths[name].write_bytes(data)
    return paths


def _records(root: Path) -> dict[str, Path]:
    """A good run, the same cut in half, one stamped with a newer schema, and a foreign HDF5 file."""
    good = records_factory.finetune_run(root / "good.h5", failed=False, steps=40, forgetting=False)
    data = good.read_bytes()
    (root / "truncated.h5").write_bytes(data[: len(data) // 2])
    shutil.copy(good, root / "newer.h5")
    with h5py.File(root / "newer.h5", "a") as file:  # a test input made by hand on purpose
        file.attrs["schema_version"] = SCHEMA_VERSION + 1
    with h5py.File(root / "foreign.h5", "w") as file:
        file["x"] = np.arange(3)
    return {"good": good, "truncated": root / "truncated.h5", "newer": root / "newer.h5",
            "foreign": root / "foreign.h5"}


# ----------------------------------------------------------------------------------------------- the battery


@pytest.fixture(scope="module")
def outcomes(inputs, tmp_path_factory) -> dict[Case, dict]:
    """Each case's exit code, stdout, stderr and changed files, from the driver processes run side by side."""
    work = tmp_path_factory.mktemp("driver")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    groups, running = [], []
    for number, tools in enumerate(PROCESSES):  # each process gets its own copy of the inputs to hash
        root = shutil.copytree(inputs["root"], work / f"inputs-{number}")
        paths = {key: root / path.relative_to(inputs["root"]) if path.is_relative_to(inputs["root"]) else path
                 for key, path in inputs.items()}
        cases = [case for tool in tools for case in CASES if case.tool == tool]
        (work / f"cases-{number}.json").write_text(json.dumps(
            [[MODULES[c.tool], [a.format(**paths) for a in c.argv]] for c in cases]))
        groups.append((cases, work / f"results-{number}.json"))
        running.append(subprocess.Popen([sys.executable, "-c", DRIVER, str(root), str(work / f"cases-{number}.json"),
                                         str(groups[-1][1])], cwd=REPO, env=env))
    for process in running:
        assert process.wait(timeout=600) == 0
    return {case: result for cases, path in groups for case, result in zip(cases, json.loads(path.read_text()))}


def message_lines(stderr: str) -> list[str]:
    """stderr without argparse's usage block (``usage:`` and its indented continuation lines)."""
    lines, in_usage = [], False
    for line in stderr.replace("\r", "\n").splitlines():
        in_usage = line.startswith("usage:") or (in_usage and line.startswith(" "))
        if not in_usage and line.strip():
            lines.append(line)
    return lines


def _ids(cases: list[Case]) -> list[str]:
    """``tool-kind``, numbered from the second case of the same kind on."""
    seen: dict[str, int] = {}
    ids = []
    for case in cases:
        name = f"{case.tool}-{case.kind}"
        seen[name] = seen.get(name, 0) + 1
        ids.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_bad_input_is_one_line_nonzero_and_touches_nothing(case, read_only, outcomes):
    if case.kind == "read-only-folder" and read_only is None:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    result = outcomes[case]
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
    lines = message_lines(result["stderr"])
    assert result["code"] not in (0, None) and len(lines) == 1, (result["code"], result["stderr"][-2000:])
    assert case.needle in lines[0], lines[0]
    if case.tool != "plots":  # every diagnostics command: status 1 and the "error:" prefix, argparse's refusals too
        assert result["code"] == 1 and lines[0].startswith("error: "), (result["code"], lines[0])
    assert result["changed"] == [], result["changed"]
    assert result["stdout"] == ""
    if case.kind == "missing-argument":  # one line, no usage block to scroll past
        assert result["stderr"].strip() == lines[0], result["stderr"]


def test_the_battery_covers_every_kind_and_tool():
    used = {case.kind for case in CASES} | {"unknown-layers", "nonfinite-gradients"}  # those two: attach path
    assert used == set(KINDS) and len(KINDS) >= 15
    assert {case.tool for case in CASES} == set(MODULES)


# ----------------------------------------------------------------------------------------------- attach path


def _attach_cases(inputs) -> dict[str, tuple]:
    """Bad inputs to ``probes.attach`` / ``ProbeCallback``: a call, the exception type and a phrase."""
    model = tiny.classifier("bert")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    unknown = torch.nn.Sequential(torch.nn.Linear(4, 4))
    return {
        "unknown-layers (ProbeCallback)": (
            lambda: probes.ProbeCallback(inputs["root"] / "callback.h5").on_train_begin(
                None, _trainer_state(), None, model=unknown, optimizer=torch.optim.SGD(unknown.parameters(), 0.1)),
            probes.LayerDiscoveryError, "blocks="),
        "unknown-layers (wrong blocks=)": (lambda: probes.attach(model, optimizer, None, blocks="encoder.nope"),
                                           probes.LayerDiscoveryError, "blocks="),
        "existing-output": (lambda: probes.attach(model, optimizer, inputs["good"]), RecordsError, "already exists"),
        "output-under-file": (lambda: probes.attach(model, optimizer, inputs["notes"] / "run.h5"), RecordsError,
                              "does not exist"),
        "read-only-folder": (lambda: probes.attach(model, optimizer, inputs["read_only"] / "run.h5"), RecordsError,
                             "writable"),
    }


def _trainer_state():
    from transformers import TrainerState

    return TrainerState()


def test_attach_path_refuses_bad_inputs_in_one_line_and_touches_nothing(inputs, read_only):
    root = inputs["root"]
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for name, (call, error, needle) in _attach_cases(inputs).items():
        if name == "read-only-folder" and read_only is None:
            continue
        with pytest.raises(error) as raised:
            call()
        message = str(raised.value)
        assert needle in message and "\n" not in message, (name, message)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_infinite_gradient_is_flagged_in_its_layer_and_the_run_goes_on(tmp_path):
    """An Inf in the head's gradient at step 1 (the NaN loss case is in test_probes.py): flagged, localised to the
    head, the loop skips that update as a GradScaler would, and every later step is recorded and finite."""
    model = tiny.classifier("bert").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    poison = {"on": False}
    model.classifier.weight.register_hook(lambda grad: grad.index_fill(1, torch.tensor([0]), math.inf)
                                          if poison["on"] else grad)
    with probes.attach(model, optimizer, tmp_path / "run.h5", schedule=probes.Schedule(every=1)):
        for step in range(4):
            poison["on"] = step == 1
            model(**tiny.batch(4, 8, seed=step)).loss.backward()
            if all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
                optimizer.step()
            optimizer.zero_grad()
    from probes.records import open_run

    run = open_run(tmp_path / "run.h5")
    frame, layers = run.frame("train"), run.frame("layers")
    assert list(frame.index) == [0, 1, 2, 3]
    assert list(frame["nonfinite"]) == [0, 1, 0, 0] and list(frame["skipped"]) == [0, 1, 0, 0]
    assert np.isinf(layers.loc[1, "head"]) and np.isfinite(layers.drop(columns="head").loc[1]).all()
    assert np.isfinite(layers.loc[[0, 2, 3]].to_numpy()).all()

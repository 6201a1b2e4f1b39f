"""The probes' summary in the Hugging Face Trainer's logs, read back from what the loggers wrote:
TensorBoard event files and a W&B offline run, where those packages are installed.

Run: ``python3 -m pytest tests/test_trainer_report.py``. The oracle for the numbers is twofold: they equal the
records file (the one store they mirror), and the per-layer norms add up (in squares) to the Trainer's own
``grad_norm``, which it computes itself when it clips.
"""
from __future__ import annotations

import json
import struct
import time
import warnings

import numpy as np
import pytest

import probes
import tiny
from probes.records import open_run

transformers = pytest.importorskip("transformers")
LOGGED = 2  # logging_steps


def _dataset(size: int = 24):
    batch = tiny.batch(size, 10, seed=7)
    return [{key: value[i] for key, value in batch.items()} for i in range(size)]


def _trainer(tmp_path, report_to, callbacks=(), max_steps=6):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=max_steps, per_device_train_batch_size=4,
        learning_rate=1e-3, max_grad_norm=1.0, logging_steps=LOGGED, report_to=report_to, use_cpu=True,
        save_strategy="no", disable_tqdm=True, seed=0, run_name="probes-test")
    return transformers.Trainer(model=tiny.classifier("bert"), args=args, train_dataset=_dataset(),
                                callbacks=list(callbacks))


def _check_mirrors_records(logged: dict[str, dict[int, float]], records_path, trainer_grad_norm: dict[int, float]):
    """``logged[tag][global_step]``: every layer at every logging step, equal to the records at step - 1."""
    layers = open_run(records_path).series("layers")
    steps = list(range(LOGGED, 7, LOGGED))
    for column in layers.columns:
        values = logged[f"probes/grad_norm/{column}"]
        assert sorted(values) == steps
        np.testing.assert_allclose([values[s] for s in steps], layers.column(column)[[s - 1 for s in steps]],
                                   rtol=1e-6)
    total = np.sqrt(sum(np.square([logged[f"probes/grad_norm/{c}"][s] for s in steps]) for c in layers.columns))
    np.testing.assert_allclose(total, [trainer_grad_norm[s] for s in steps], rtol=1e-4)


def test_log_history_carries_the_summary_at_logging_steps(tmp_path):
    trainer = _trainer(tmp_path, [])
    probes.ProbeCallback(tmp_path / "run.h5", schedule=probes.Schedule(every=1)).add_to(trainer)
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    logged = {key: {e["step"]: e[key] for e in history if key in e}
              for key in history[0] if key.startswith("probes/")}
    _check_mirrors_records(logged, tmp_path / "run.h5", {e["step"]: e["grad_norm"] for e in history})


def test_early_warning_decision_is_logged_once(tmp_path):
    trainer = _trainer(tmp_path, [])
    chosen = [probes.GradientNorms(), probes.EarlyWarning(4)]
    probes.ProbeCallback(tmp_path / "run.h5", schedule=probes.Schedule(every=1), probes=chosen).add_to(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the warning itself, if the tiny run collapses
        trainer.train()
    decision = open_run(tmp_path / "run.h5").series("early_warning")
    logged = [entry for entry in trainer.state.log_history if "probes/early_warning/score" in entry]
    assert [entry["step"] for entry in logged] == [6]  # decided at step 4 (0-based), first logged at step 6
    assert logged[0]["probes/early_warning/score"] == pytest.approx(float(decision.column("score")[0]), rel=1e-6)
    assert logged[0]["probes/early_warning/flagged"] == float(decision.column("flagged")[0])


def test_report_off_leaves_the_logs_alone(tmp_path):
    trainer = _trainer(tmp_path, [], callbacks=[probes.ProbeCallback(tmp_path / "run.h5", report=False)])
    trainer.train()
    assert not any(key.startswith("probes/") for entry in trainer.state.log_history for key in entry)


def _tensorboard_scalars(folder) -> dict[str, dict[int, float]]:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert len(files) == 1, files
    accumulator = event_accumulator.EventAccumulator(str(files[0]), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: {event.step: event.value for event in accumulator.Scalars(tag)}
            for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_shows_the_probes_beside_the_loss(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (extra: .[loggers]) to test this logger")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    trainer = _trainer(tmp_path, ["tensorboard"])
    probes.ProbeCallback(tmp_path / "run.h5", schedule=probes.Schedule(every=1)).add_to(trainer)
    trainer.train()
    scalars = _tensorboard_scalars(tmp_path / "tb")
    assert "train/loss" in scalars  # the Trainer's own numbers, beside which ours sit
    logged = {tag.removeprefix("train/"): values for tag, values in scalars.items()}
    _check_mirrors_records(logged, tmp_path / "run.h5", scalars["train/grad_norm"])


def test_passed_in_callbacks_runs_after_the_loggers_and_says_so(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (extra: .[loggers]) to test this logger")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    trainer = _trainer(tmp_path, ["tensorboard"], callbacks=[probes.ProbeCallback(tmp_path / "run.h5")])
    with pytest.warns(RuntimeWarning, match=r"add_to\(trainer\)"):
        trainer.train()
    assert not any(tag.startswith("train/probes/") for tag in _tensorboard_scalars(tmp_path / "tb"))


def _wandb_history(run_file) -> dict[str, dict[int, float]] | None:
    """``history[key][train/global_step]`` from a W&B offline run file: its records are protobufs framed as a
    LevelDB log (32 KiB blocks, 7-byte record headers: crc, length, type; types 1 full, 4 last piece). None until
    W&B's service process has written the run's exit record."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending, rows, finished = run_file.read_bytes(), 7, b"", [], False
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            finished |= record.WhichOneof("record_type") == "exit"
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    if not finished:
        return None
    history: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            history.setdefault(key.removeprefix("train/"), {})[row["train/global_step"]] = value
    return history


def test_wandb_offline_run_shows_the_probes(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install wandb (extra: .[loggers]) to test this logger")
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                        "WANDB_PROJECT": "probes-test", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(name, value)
    trainer = _trainer(tmp_path, ["wandb"])
    probes.ProbeCallback(tmp_path / "run.h5", schedule=probes.Schedule(every=1)).add_to(trainer)
    trainer.train()
    import wandb
    wandb.finish()
    run_files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    deadline = time.monotonic() + 60
    while (history := _wandb_history(run_files[0])) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert history is not None, "W&B's service never finished the offline run file"
    _check_mirrors_records(history, tmp_path / "run.h5", history["grad_norm"])

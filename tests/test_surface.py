"""Tests of the loss surfaces (diagnostics.surface, .interpolation, .distributed) on tiny real classifiers.

    python3 -m pytest tests/test_surface.py              # slow ones too (torchrun, kill and resume)
    python3 -m pytest tests/test_surface.py -m "not slow"

The checkpoints are tiny BERT-family classifiers whose heads are scaled per seed, so the three anchors of a plane
have clearly different losses; the oracle for a corner is the plain Hugging Face model's own loss on the same
examples. The task is a small task folder written here through diagnostics.tasks.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import tiny
from probes import records
from probes.model.interpolation import (Subspace, SubspaceError, filter_normalised, grid_axis, line_point,
                                      plane_point)
from diagnostics.surface import SurfaceConfig, main, run
from diagnostics.tasks import Example, encode, write_task
from probes.model.layers import find_layers

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = 24  # per test run: small and fast, enough to separate the anchors' losses


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def _checkpoint(arch: str, seed: int, folder: Path, head_scale: float) -> Path:
    """A tiny classifier whose head weights are scaled by ``head_scale`` (so its loss stands apart)."""
    model = tiny.classifier(arch, seed=seed)
    layers = find_layers(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if layers.group_of(name) == "head":
                param.mul_(head_scale)
    return tiny.save(model, folder)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A single-sentence task of random sentences from the tiny vocabulary, 300 train and 40 dev examples."""
    rng = random.Random(0)
    tokenizer = tiny.tokenizer()
    # tiny's vocabulary lists "a" twice, so its last ids reach len(tokenizer): keep to words inside the embedding
    words = [w for w in tiny.WORDS if max(tokenizer(w, add_special_tokens=False)["input_ids"]) < len(tokenizer)]

    def examples(count: int) -> list[Example]:
        return [Example(" ".join(rng.choices(words, k=rng.randint(3, 20))), None, rng.randint(0, 1))
                for _ in range(count)]

    folder = tmp_path_factory.mktemp("task") / "tiny-task"
    write_task(folder, examples(300), examples(40),
               {"name": "tiny-task", "kind": "single", "label_names": ["no", "yes"], "metric": "accuracy",
                "majority_baseline": 0.5})
    return folder


@pytest.fixture(scope="module")
def anchors(tmp_path_factory) -> list[Path]:
    """P, F, S: tiny BERT classifiers of seeds 0, 1, 2 with heads scaled 1, 40, 80."""
    root = tmp_path_factory.mktemp("anchors")
    return [_checkpoint("bert", seed, root / name, scale)
            for seed, name, scale in ((0, "p", 1.0), (1, "f", 40.0), (2, "s", 80.0))]


def _config(checkpoints, task_dir, **changes) -> SurfaceConfig:
    base = SurfaceConfig(checkpoints=[str(c) for c in checkpoints], task=str(task_dir), max_examples=EXAMPLES,
                         batch_size=8, precision="fp32")  # the oracle computes in fp32
    return replace(base, **changes)


def _plain(folder: Path, task_dir: Path, split: str = "train") -> tuple[float, float]:
    """The oracle: loss and accuracy of the checkpoint loaded plainly, all examples in one batch, HF's own loss."""
    from diagnostics.tasks import load_task

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    examples = getattr(load_task(task_dir), split)[:EXAMPLES]
    batch = encode(examples, tiny.tokenizer(), 64)
    if "token_type_ids" not in model.forward.__code__.co_varnames:
        batch.pop("token_type_ids", None)
    with torch.no_grad():
        out = model(**batch)
    return float(out.loss), float((out.logits.argmax(-1) == batch["labels"]).float().mean())


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------- maths


def test_grid_axis_is_inclusive_and_evenly_spaced():
    np.testing.assert_allclose(grid_axis(-1.5, 1.5, 7), [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    assert grid_axis(0, 1, 1).tolist() == [0.0]


def test_a_points_parameters_are_theta_p_plus_a_d1_plus_b_d2(anchors):
    models = [AutoModelForSequenceClassification.from_pretrained(c) for c in anchors]
    space = Subspace.from_models(models)
    p, f, s = ({n: t.detach().clone() for n, t in m.named_parameters()} for m in models)
    target = tiny.classifier("bert", seed=5)
    for a, b in ((0.3, -1.2), (1.5, 1.5), (-0.7, 0.0)):
        with space.moving(target) as move_to:
            move_to((a, b))
            moved = dict(target.named_parameters())
            for name in space.names:
                expected = plane_point(p[name], f[name] - p[name], s[name] - p[name], a, b)
                torch.testing.assert_close(moved[name].detach(), expected, rtol=1e-5, atol=1e-6)
    line = Subspace.from_models(models[:2])
    with line.moving(target) as move_to:
        move_to((0.75,))
        for name, param in target.named_parameters():
            torch.testing.assert_close(param.detach(), line_point(p[name], f[name] - p[name], 0.75),
                                       rtol=1e-5, atol=1e-6)


def test_every_point_of_the_default_grids_is_on_the_plane_and_the_line():
    generator = torch.Generator().manual_seed(0)
    p, f, s = ([torch.randn(4, 3, generator=generator, dtype=torch.float64)] for _ in range(3))
    plane, line, params = Subspace(["w"], [p, f, s]), Subspace(["w"], [p, f]), [torch.empty(4, 3, dtype=torch.float64)]
    for a in grid_axis(-1.5, 1.5, 13):
        for b in grid_axis(-1.5, 1.5, 13):
            plane.move(params, (a, b))
            torch.testing.assert_close(params[0], plane_point(p[0], f[0] - p[0], s[0] - p[0], a, b),
                                       rtol=1e-12, atol=1e-12)
        line.move(params, (a,))
        torch.testing.assert_close(params[0], line_point(p[0], f[0] - p[0], a), rtol=1e-12, atol=1e-12)


def test_corners_are_the_checkpoints_bit_for_bit(anchors):
    models = [AutoModelForSequenceClassification.from_pretrained(c) for c in anchors]
    space = Subspace.from_models(models)
    target = tiny.classifier("bert", seed=5)
    for coords, model in (((0.0, 0.0), models[0]), ((1.0, 0.0), models[1]), ((0.0, 1.0), models[2])):
        with space.moving(target) as move_to:
            move_to(coords)
            for (name, moved), (_, own) in zip(target.named_parameters(), model.named_parameters()):
                assert torch.equal(moved, own), (coords, name)


def test_moving_restores_the_weights_exactly_even_after_an_error(anchors):
    models = [AutoModelForSequenceClassification.from_pretrained(c) for c in anchors]
    space = Subspace.from_models(models)
    target = tiny.classifier("bert", seed=5)
    before = {n: t.detach().clone() for n, t in target.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with space.moving(target) as move_to:
            move_to((0.4, 0.9))
            assert not torch.equal(target.classifier.weight, before["classifier.weight"])
            raise RuntimeError("boom")
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_subspace_refuses_different_buffers(anchors):
    models = [AutoModelForSequenceClassification.from_pretrained(c) for c in anchors[:2]]
    buffer = next(b for n, b in models[1].named_buffers() if b.is_floating_point() or n.endswith("position_ids"))
    buffer.add_(1)
    with pytest.raises(SubspaceError, match="buffer"):
        Subspace.from_models(models)


def test_filter_normalised_directions_take_each_filters_norm_and_leave_biases_still():
    theta, direction = torch.randn(5, 3, 2), torch.randn(5, 3, 2)
    scaled = filter_normalised(direction, theta)
    torch.testing.assert_close(scaled.flatten(1).norm(dim=1), theta.flatten(1).norm(dim=1))
    torch.testing.assert_close(scaled / scaled.flatten(1).norm(dim=1)[:, None, None],
                               direction / direction.flatten(1).norm(dim=1)[:, None, None])
    assert torch.count_nonzero(filter_normalised(torch.randn(4), torch.randn(4))) == 0


def test_random_plane_is_centred_on_the_checkpoint_and_seeded(anchors):
    model = AutoModelForSequenceClassification.from_pretrained(anchors[0])
    space, same, other = Subspace.around(model, 3), Subspace.around(model, 3), Subspace.around(model, 4)
    for k, (name, param) in enumerate(model.named_parameters()):
        assert torch.equal(space.anchors[0][k], param)
        step = space.anchors[1][k] - param
        torch.testing.assert_close(step, filter_normalised(step, param.detach()), rtol=1e-4, atol=1e-6)
        assert torch.equal(space.anchors[2][k], same.anchors[2][k])
    assert not torch.equal(space.anchors[1][0], other.anchors[1][0])


# ----------------------------------------------------------------------------------------------- the command


def test_plane_corners_equal_the_plain_losses_of_the_three_checkpoints(anchors, task_dir):
    surface = run(_config(anchors, task_dir, range=[0.0, 1.0], grid=2))
    plain = [_plain(c, task_dir) for c in anchors]
    assert min(abs(plain[0][0] - plain[1][0]), abs(plain[1][0] - plain[2][0]), abs(plain[0][0] - plain[2][0])) > 1e-2
    for (i, j), (loss, accuracy) in zip(((0, 0), (1, 0), (0, 1)), plain):
        assert surface.loss[i, j] == pytest.approx(loss, rel=1e-5, abs=1e-6)
        assert surface.accuracy[i, j] == pytest.approx(accuracy)


def test_line_endpoints_equal_both_models(arch, tmp_path, task_dir):
    ends = [_checkpoint(arch, seed, tmp_path / f"m{seed}", scale) for seed, scale in ((0, 1.0), (1, 60.0))]
    surface = run(_config(ends, task_dir, range=[0.0, 1.0], grid=3, split="dev"))
    assert surface.loss.shape == (3,)
    for index, folder in ((0, ends[0]), (2, ends[1])):
        loss, accuracy = _plain(folder, task_dir, "dev")
        assert surface.loss[index] == pytest.approx(loss, rel=1e-5, abs=1e-6)
        assert surface.accuracy[index] == pytest.approx(accuracy)


def test_random_surface_centre_is_the_checkpoints_plain_loss(anchors, task_dir):
    surface = run(_config(anchors[:1], task_dir, grid=3))
    assert surface.attrs["kind"] == "random" and surface.attrs["seed"] == 0 and surface.loss.shape == (3, 3)
    assert surface.loss[1, 1] == pytest.approx(_plain(anchors[0], task_dir)[0], rel=1e-5)
    assert np.ptp(surface.loss) > 1e-3  # the directions do move the model


def test_cli_end_to_end_json_and_records(anchors, task_dir, tmp_path, capsys):
    out = tmp_path / "surface.h5"
    digests = [_digest(c) for c in anchors]
    command = [sys.executable, "-m", "diagnostics.surface", "--plane", *map(str, anchors), "--task", str(task_dir),
               "--precision", "fp32", "--grid", "3", "--max-examples", str(EXAMPLES), "--out", str(out),
               "--name", "fig7", "--json",
               "--labels", "pre-trained", "failed", "successful"]
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["a"] == shown["b"] == [-1.5, 0.0, 1.5]
    assert np.array(shown["loss"]).shape == np.array(shown["accuracy"]).shape == (3, 3)
    grid = records.open_run(out).grid("fig7", kind="surfaces")
    assert grid.missing == 0
    np.testing.assert_array_equal(grid.fields["loss"], np.array(shown["loss"]))
    np.testing.assert_array_equal(grid.axes["b"], [-1.5, 0.0, 1.5])
    assert grid.attrs["kind"] == "plane" and grid.attrs["labels"] == ["pre-trained", "failed", "successful"]
    assert grid.attrs["range"] == [-1.5, 1.5] and grid.attrs["grid"] == 3 and grid.attrs["task"] == "tiny-task"
    assert shown["loss"][1][1] == pytest.approx(_plain(anchors[0], task_dir)[0], rel=1e-5)
    assert [_digest(c) for c in anchors] == digests  # the checkpoints are read, never written

    assert main(command[3:]) == 0  # the same command again, in process: the grid is complete, nothing recomputed
    assert json.loads(capsys.readouterr().out)["computed"] == 0


@pytest.mark.slow
def test_two_gloo_ranks_give_the_same_grid_as_one(anchors, task_dir, tmp_path):
    out = tmp_path / "two.h5"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "diagnostics.surface", "--plane",
               *map(str, anchors), "--task", str(task_dir), "--precision", "fp32", "--grid", "3", "--max-examples",
               str(EXAMPLES),
               "--out", str(out), "--json", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # torchrun and the ranks it started, nothing else
            process.wait()
    assert process.returncode == 0, stderr[-3000:]
    two = json.loads(stdout)
    one = run(_config(anchors, task_dir, grid=3))
    np.testing.assert_allclose(np.array(two["loss"]), one.loss, rtol=1e-6)
    np.testing.assert_allclose(np.array(two["accuracy"]), one.accuracy)
    assert records.open_run(out).grid("plane").missing == 0


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "Ctrl-C", "SIGTERM"])
def test_a_stopped_run_resumes_and_matches_an_uninterrupted_one(anchors, task_dir, tmp_path, stop):
    out, grid_points, examples = tmp_path / "stopped.h5", 9, 200
    command = [sys.executable, "-m", "diagnostics.surface", "--plane", *map(str, anchors), "--task", str(task_dir),
               "--precision", "fp32", "--grid", str(grid_points), "--max-examples", str(examples), "--out",
               str(out)]
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=stderr)
    missing, deadline = grid_points ** 2, time.monotonic() + 300  # loading is slow on busy cores
    try:
        while missing > grid_points ** 2 - 3 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
            if out.exists():
                try:
                    missing = records.open_run(out).grid("plane").missing
                except records.RecordsError:
                    pass  # the file is still being declared
    finally:
        process.send_signal(stop)
        process.wait(timeout=60)
    if stop != signal.SIGKILL:
        assert process.returncode == 128 + stop
        last = (tmp_path / "stderr").read_text().replace("\r", "\n").strip().splitlines()[-1]
        assert last.startswith(f"interrupted by {signal.Signals(stop).name}; every finished point is saved")
    left = records.open_run(out).grid("plane").missing
    assert 0 < left < grid_points ** 2, f"stopped with {left} points missing; the run must be stopped part-way"

    done = subprocess.run(command + ["--json"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads(done.stdout)
    assert resumed["computed"] == left
    whole = run(_config(anchors, task_dir, grid=grid_points, max_examples=examples))
    np.testing.assert_allclose(np.array(resumed["loss"]), whole.loss, rtol=1e-6)
    np.testing.assert_allclose(np.array(resumed["accuracy"]), whole.accuracy)


# ----------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def odd_checkpoints(tmp_path_factory, tiny_mlm_dir) -> dict[str, Path]:
    """Checkpoints that must be refused beside the bert anchors: another architecture, another size, an MLM."""
    root = tmp_path_factory.mktemp("odd")
    wider = AutoModelForSequenceClassification.from_config(tiny.config("bert", len(tiny.tokenizer()) + 7))
    (root / "empty").mkdir()
    retokenised = tiny.save(tiny.classifier("bert", seed=1), root / "retokenised")
    other_vocabulary = tiny.tokenizer()
    other_vocabulary.add_tokens(["zebra"])
    other_vocabulary.save_pretrained(retokenised)
    return {"retokenised": retokenised, "roberta": tiny.save(tiny.classifier("roberta", seed=1), root / "roberta"),
            "vocab": tiny.save(wider, root / "vocab"),
            "deeper": tiny.save(tiny.classifier("bert", seed=1, layers=5), root / "deeper"),
            "mlm": tiny_mlm_dir, "empty": root / "empty", "missing": root / "nowhere"}


def _refused(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err and "Traceback" not in "\n".join(err)
    message = err[-1]
    assert message.startswith("error: ")
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize("odd, needle", [("roberta", "same architecture"), ("vocab", "same architecture and size"),
                                         ("deeper", "same architecture"),
                                         ("mlm", "not a *ForSequenceClassification model"),
                                         ("empty", "no config.json"), ("missing", "does not exist"),
                                         ("retokenised", "another vocabulary")])
def test_bad_checkpoints_are_refused(capsys, anchors, task_dir, odd_checkpoints, odd, needle):
    _refused(capsys, ["--plane", str(anchors[0]), str(odd_checkpoints[odd]), str(anchors[2]),
                      "--task", str(task_dir), "--grid", "2"], needle)


@pytest.mark.parametrize("args, needle", [(["--grid", "0"], "at least one point"),
                                          (["--grid", "-3"], "at least one point"),
                                          (["--range", "1", "1"], "LO < HI"), (["--range", "2", "-1"], "LO < HI"),
                                          (["--max-examples", "0"], "--max-examples"),
                                          (["--labels", "only-one"], "one label per checkpoint")])
def test_bad_grids_are_refused(capsys, anchors, task_dir, args, needle):
    _refused(capsys, ["--plane", *map(str, anchors), "--task", str(task_dir), *args], needle)


def test_bad_tasks_are_refused(capsys, anchors, task_dir, tmp_path):
    _refused(capsys, ["--line", *map(str, anchors[:2]), "--task", "no-such-task"], "unknown task")
    empty = tmp_path / "empty-task"
    shutil.copytree(task_dir, empty)
    (empty / "dev.jsonl").write_text("")
    _refused(capsys, ["--line", *map(str, anchors[:2]), "--task", str(empty), "--split", "dev"], "no examples")


def test_bad_output_files_are_refused_and_left_alone(capsys, anchors, task_dir, tmp_path):
    taken = tmp_path / "taken.h5"
    assert main(["--line", *map(str, anchors[:2]), "--task", str(task_dir), "--grid", "2",
                 "--max-examples", "4", "--out", str(taken)]) == 0
    foreign, text, truncated = tmp_path / "foreign.h5", tmp_path / "notes.h5", tmp_path / "truncated.h5"
    with h5py.File(foreign, "w") as file:
        file["x"] = np.arange(3)
    text.write_text("not a records file\n")
    truncated.write_bytes(taken.read_bytes()[:1500])
    cases = [(taken, "different"), (foreign, "not an instability-diagnostics"), (text, "not an HDF5"),
             (truncated, "")]
    for path, needle in cases:
        before = path.read_bytes()
        _refused(capsys, ["--line", *map(str, anchors[:2]), "--task", str(task_dir), "--grid", "3",
                          "--max-examples", "4", "--out", str(path)], needle)
        assert path.read_bytes() == before, path


def test_a_bad_input_exits_with_one_line_in_a_real_process(anchors, task_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "diagnostics.surface", "--line", str(anchors[0]),
                           str(tmp_path / "nowhere"), "--task", str(task_dir)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "does not exist" in done.stderr

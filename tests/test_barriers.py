"""Generalisation variance: the loss-barrier matrix (``diagnostics.surface --barriers``) on tiny real
classifiers, and the barrier maths.

Oracles: a run's line with itself is flat (barrier 0) and the matrix is symmetric; every line's ends are the plain
Hugging Face losses of the two checkpoints; a pair built to have a bump (the second run is the first with its
pooler units permuted, the same function, so the midpoint is a different, worse model) gives exactly the bump of
the averaged model, loaded and evaluated plainly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import tiny
from diagnostics.barriers import BarriersConfig, cells, missing_items, run, work_items
from diagnostics.surface import main
from diagnostics.tasks import Example, encode, load_task, write_task
from probes import records
from probes.model.barriers import barrier_height, barrier_matrix

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = 24


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


# ----------------------------------------------------------------------------------------------- maths


def test_barrier_height_of_hand_made_lines():
    assert barrier_height([1.0, 3.0, 2.0]) == pytest.approx(1.5)  # 3 - (1 + 2) / 2
    assert barrier_height([1.0, 0.5, 2.0]) == pytest.approx(0.5)  # the higher end is the maximum
    assert barrier_height([2.0, 1.0, 1.0, 2.0]) == 0.0  # a valley: no barrier
    assert barrier_height([0.9, 0.5, 0.8], higher_is_worse=False) == pytest.approx(0.35)  # accuracy drops
    assert np.isnan(barrier_height([1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="both ends"):
        barrier_height([1.0])


def test_barrier_matrix_is_elementwise():
    lines = np.random.default_rng(0).random((3, 3, 5))
    matrix = barrier_matrix(lines)
    for i in range(3):
        for j in range(3):
            assert matrix[i, j] == pytest.approx(lines[i, j].max() - (lines[i, j, 0] + lines[i, j, -1]) / 2)


def test_work_items_fill_every_cell_once_and_mark_last():
    runs, points = 4, 5
    filled = np.zeros((runs, runs, points), dtype=int)
    for item in work_items(runs, points):
        for cell in cells(item, runs, points):
            filled[cell] += 1
    diagonal = np.arange(runs)
    assert (filled[diagonal, diagonal] == 1).all()  # a run's own line: once each
    off = ~np.eye(runs, dtype=bool)
    assert (filled[off][:, 1:-1] == 1).all() and (filled[off][:, [0, -1]] == 1).all()
    assert len(work_items(runs, points)) == runs + runs * (runs - 1) // 2 * (points - 2)
    values = {f: np.zeros((runs, runs, points)) for f in ("loss", "accuracy")}
    values["accuracy"][1, 3, 2] = np.nan  # one inner point half written: only it is missing
    values["loss"][2, 2, 0] = np.nan  # run 2's own loss marker missing
    assert missing_items(values, points) == [(2,), (1, 3, 2)]


# ----------------------------------------------------------------------------------------------- fixtures


def _plain(folder: Path, task_dir: Path) -> float:
    """The oracle: the plain HF loss of a checkpoint on the first EXAMPLES training examples, one batch."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = encode(load_task(task_dir).train[:EXAMPLES], tiny.tokenizer(), 64)
    with torch.no_grad():
        return float(model(**batch).loss)


@pytest.fixture(scope="module")
def bump(tmp_path_factory) -> dict[str, Path]:
    """Run A (head scaled up), run B = A with its pooler units permuted (the same function), their average M, and
    a task labelled by A's own predictions (so A and B are right and confident and M is not)."""
    root = tmp_path_factory.mktemp("bump")
    first = tiny.classifier("bert", seed=3)
    with torch.no_grad():
        first.classifier.weight.mul_(60)
    second = tiny.classifier("bert", seed=3)
    permutation = torch.randperm(first.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        second.load_state_dict(first.state_dict())
        second.bert.pooler.dense.weight.copy_(first.bert.pooler.dense.weight[permutation])
        second.bert.pooler.dense.bias.copy_(first.bert.pooler.dense.bias[permutation])
        second.classifier.weight.copy_(first.classifier.weight[:, permutation])
    middle = tiny.classifier("bert", seed=3)
    middle.load_state_dict({name: (value + second.state_dict()[name]) / 2 if value.is_floating_point() else value
                            for name, value in first.state_dict().items()})
    rng = np.random.default_rng(0)
    words = tiny.WORDS[:60]
    sentences = [" ".join(rng.choice(words, size=rng.integers(3, 15))) for _ in range(EXAMPLES + 8)]
    with torch.no_grad():
        labels = first.eval()(**tiny.tokenizer()(sentences, padding=True, return_tensors="pt")).logits.argmax(-1)
    examples = [Example(text, None, int(label)) for text, label in zip(sentences, labels)]
    task = root / "bump-task"
    write_task(task, examples, examples[:8], {"name": "bump-task", "kind": "single", "label_names": ["no", "yes"],
                                              "metric": "accuracy", "majority_baseline": 0.5})
    return {"a": tiny.save(first, root / "a"), "b": tiny.save(second, root / "b"),
            "middle": tiny.save(middle, root / "middle"), "task": task}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, bump) -> list[Path]:
    """Three run folders as diagnostics.finetune leaves them (``final/`` and ``run.h5`` with a summary)."""
    root = tmp_path_factory.mktemp("runs")
    folders = []
    for seed, scale, failed in ((0, 1.0, True), (1, 30.0, False), (2, 60.0, False)):
        model = tiny.classifier("bert", seed=seed)
        with torch.no_grad():
            model.classifier.weight.mul_(scale)
        folder = root / f"tiny-mosbach-s{seed}"
        tiny.save(model, folder / "final")
        with records.RunWriter.create(folder / "run.h5", records.RunMeta(seed=seed, task="bump-task")) as writer:
            writer.start()
        records.write_summary(folder / "run.h5", {"final_dev_metric": 0.5 + 0.1 * seed, "metric": "accuracy",
                                                  "majority": 0.5, "failed": failed})
        folders.append(folder)
    return folders


def _config(run_dirs, task, **changes) -> BarriersConfig:
    return replace(BarriersConfig(runs=[str(r) for r in run_dirs], task=str(task), max_examples=EXAMPLES,
                                  batch_size=8), **changes)


# ----------------------------------------------------------------------------------------------- the command


def test_self_barrier_is_zero_matrix_symmetric_ends_are_the_plain_losses(runs, bump):
    result = run(_config(runs, bump["task"], grid=5))
    plain = [_plain(r / "final", bump["task"]) for r in runs]
    assert result.labels == ["tiny-mosbach-s0", "tiny-mosbach-s1", "tiny-mosbach-s2"]
    assert result.attrs["failed"] == [True, False, False] and result.attrs["metric"] == "accuracy"
    assert not np.isnan(result.loss).any() and result.computed == 3 + 3 * 3
    for i in range(3):
        assert result.loss[i, i] == pytest.approx([plain[i]] * 5, rel=1e-5)
        for j in range(3):
            assert result.loss[i, j, 0] == pytest.approx(plain[i], rel=1e-5)
            assert result.loss[i, j, -1] == pytest.approx(plain[j], rel=1e-5)
            np.testing.assert_array_equal(result.loss[j, i], result.loss[i, j][::-1])
    barriers = result.loss_barriers
    np.testing.assert_array_equal(np.diag(barriers), 0.0)
    np.testing.assert_array_equal(barriers, barriers.T)
    np.testing.assert_array_equal(result.accuracy_barriers, result.accuracy_barriers.T)


def test_a_pair_with_a_known_bump_gives_that_bump(bump):
    result = run(_config([bump["a"], bump["b"]], bump["task"], grid=3))
    ends = [_plain(bump[k], bump["task"]) for k in ("a", "b")]
    middle = _plain(bump["middle"], bump["task"])
    assert ends[0] == pytest.approx(ends[1], rel=1e-4)  # the same function: the permutation changes nothing
    assert middle > ends[0] + 0.1  # by construction the average of the two is a worse model
    assert result.loss[0, 1, 1] == pytest.approx(middle, rel=1e-5)
    assert result.loss_barriers[0, 1] == pytest.approx(middle - (ends[0] + ends[1]) / 2, rel=1e-4)
    assert result.accuracy[0, 1, 0] == 1.0 and result.accuracy_barriers[0, 1] > 0


def test_cli_records_resume_and_json(runs, bump, tmp_path, capsys):
    out = tmp_path / "barriers.h5"
    argv = ["--barriers", *map(str, runs), "--task", str(bump["task"]), "--grid", "4",
            "--max-examples", str(EXAMPLES), "--batch-size", "8", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "diagnostics.surface", *argv, "--json"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "3 runs, 3 pairs, 4 points a line: 9 of 9 evaluations to do" in done.stderr
    assert "the first point took" in done.stderr and "minutes in all" in done.stderr
    shown = json.loads(done.stdout)
    grid = records.open_run(out).grid("barriers", kind="surfaces")
    assert grid.missing == 0 and list(grid.axes) == ["first", "second", "a"]
    assert grid.attrs["kind"] == "barriers" and grid.attrs["labels"] == shown["labels"]
    np.testing.assert_array_equal(grid.fields["loss"], np.array(shown["loss"]))
    np.testing.assert_allclose(np.array(shown["loss_barrier"]), barrier_matrix(grid.fields["loss"]))

    with h5py.File(out, "r+") as file:  # as if killed part-way: a run's own loss and one line's inner point lost
        for field in ("loss", "accuracy"):
            file["surfaces/barriers"][field][1, 1, :] = np.nan
            file["surfaces/barriers"][field][0, 2, 2] = np.nan
    assert main(argv + ["--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["computed"] == 2
    np.testing.assert_allclose(np.array(resumed["loss"]), np.array(shown["loss"]), rtol=1e-6)
    assert records.open_run(out).grid("barriers").missing == 0

    assert main(argv) == 0  # complete: nothing recomputed; the text table names every run
    text = capsys.readouterr().out
    assert "tiny-mosbach-s2" in text and "FAILED" in text and "9 of 9" not in text


@pytest.mark.slow
def test_two_gloo_ranks_give_the_same_matrix_as_one(runs, bump, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "diagnostics.surface", "--barriers",
               *map(str, runs), "--task", str(bump["task"]), "--grid", "3", "--max-examples", str(EXAMPLES),
               "--out", str(tmp_path / "two.h5"), "--json", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # torchrun and the ranks it started, nothing else
            process.wait()
    assert process.returncode == 0, stderr[-3000:]
    one = run(_config(runs, bump["task"], grid=3))
    np.testing.assert_allclose(np.array(json.loads(stdout)["loss"]), one.loss, rtol=1e-6)
    assert records.open_run(tmp_path / "two.h5").grid("barriers").missing == 0


@pytest.mark.parametrize("args, needle", [(["--grid", "2"], "--grid 3 or more"),
                                          (["--range", "0", "2"], "--range does not apply"),
                                          (["--labels", "x", "y"], "--labels does not apply"),
                                          (["--max-examples", "0"], "--max-examples")])
def test_bad_barrier_arguments_are_one_line(runs, bump, capsys, args, needle):
    assert main(["--barriers", *map(str, runs[:2]), "--task", str(bump["task"]), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]


def test_one_run_or_the_same_run_twice_is_refused(runs, bump, capsys):
    assert main(["--barriers", str(runs[0]), "--task", str(bump["task"])]) == 1
    assert "at least two runs" in capsys.readouterr().err
    assert main(["--barriers", str(runs[0]), str(runs[0] / "final"), "--task", str(bump["task"])]) == 1
    assert "same checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- the figure


def _two_basins(path: Path) -> Path:
    """A barrier grid of five runs by hand: runs 0 and 2 share a basin, 1 and 3 another, 4 failed, alone."""
    points, basin, own = 5, [0, 1, 0, 1, 2], np.array([0.30, 0.32, 0.31, 0.29, 0.69])
    a = np.linspace(0, 1, points)
    loss = np.array([[(1 - a) * own[i] + a * own[j] + (0.5 * np.sin(np.pi * a) if basin[i] != basin[j] else 0.0)
                      for j in range(5)] for i in range(5)])
    records.write_grid(path, "barriers", {"first": np.arange(5), "second": np.arange(5), "a": a},
                       {"loss": loss, "accuracy": 1 - loss / 2}, kind="surfaces",
                       attrs={"kind": "barriers", "labels": [f"hedge-mosbach-s{k}" for k in range(5)],
                              "failed": [False] * 4 + [True], "dev_metric": [0.45, 0.47, 0.44, 0.48, 0.0],
                              "metric": "mcc", "split": "train"})
    return path


def test_barrier_figure_clusters_the_basins_and_marks_failed_runs(tmp_path):
    import matplotlib.pyplot as plt
    from plots.barriers import cluster_order, plot_barriers
    from plots.cli import main as plots_main
    from plots.style import FAILED_COLOUR

    path = _two_basins(tmp_path / "barriers.h5")
    order, _ = cluster_order(barrier_matrix(records.open_run(path).grid("barriers").fields["loss"]))
    position = {run: order.index(run) for run in range(5)}
    assert abs(position[0] - position[2]) == 1 and abs(position[1] - position[3]) == 1  # basins side by side
    assert position[4] in (0, 4)  # the failed run at one end, joined last
    figure = plot_barriers(path)
    heat = figure.axes[1]
    names = [tick.get_text() for tick in heat.get_yticklabels()]
    assert names == [f"s{k} ({v})" for k, v in ((k, ("45.0", "47.0", "44.0", "48.0", "0.0")[k]) for k in order)]
    failed_tick = heat.get_yticklabels()[position[4]]
    assert failed_tick.get_color() == FAILED_COLOUR
    assert heat.images[0].get_array()[position[0], position[2]] == pytest.approx(0.005)  # |0.31 - 0.30| / 2
    plt.close(figure)
    assert plots_main(["barriers", str(path), "-o", str(tmp_path / "barriers.png")]) == 0
    assert (tmp_path / "barriers.png").stat().st_size > 10_000

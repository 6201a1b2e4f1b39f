"""Figures: every figure drawn from real records files (written by records_factory through RunWriter), checked for
what it shows; valid PDFs; refusals; missing-record messages; torch never imported; the CLI end to end.

    python3 -m pytest tests/test_plots.py            # add -m "not slow" to skip `plots all` in a subprocess
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

import records_factory as factory
from probes.records import RunMeta, RunWriter, open_run, write_grid, write_summary
from plots import (plot_forgetting, plot_generalisation, plot_gradients, plot_interpolation, plot_line, plot_seeds,
                   plot_surface, plot_training, sources)
from plots.batch import draw_figures
from plots.cli import main
from plots.gradients import select_layers
from plots.registry import FIGURES
from plots.runs import LeftOut, load_runs
from plots.sources import MissingRecord
from plots.style import FigureError, log_scale_if_wide, save

REPO = Path(__file__).resolve().parents[1]
PLOT_MODULES = ["plots", *(f"plots.{p.stem}" for p in sorted((REPO / "plots").glob("*.py")) if p.stem != "__init__")]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("records")
    factory.example_runs(folder)
    return folder


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def assert_pdf(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert data.count(b"/Type /Page") - data.count(b"/Type /Pages") == 1
    assert len(data) > 8_000


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plots", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


# ----------------------------------------------------------------------------------------------- figures


def test_gradients_failed_and_successful_panels(example):
    figure = plot_gradients([example / "successful.h5", example / "failed.h5"])
    left, right = figure.axes[:2]
    assert left.get_title(loc="left").startswith("(a) failed run") and "successful" in right.get_title(loc="left")
    assert left.get_yscale() == "log" and left.get_shared_y_axes().joined(left, right)
    labels = [line.get_label() for line in left.get_lines()]
    assert labels[:6] == [f"layer {d}" for d in range(1, 7)] and {"pooler", "head (classifier)"} <= set(labels)
    warmup = [line for line in left.get_lines() if line.get_linestyle() == ":"]
    assert [line.get_xdata()[0] for line in warmup] == [30]  # 10% of 300 steps
    failed = open_run(example / "failed.h5").series("layers")
    layer1 = next(line for line in left.get_lines() if line.get_label() == "layer 1")
    np.testing.assert_allclose(layer1.get_ydata(), failed.column("encoder.1"), rtol=1e-6)
    assert np.nanmax(layer1.get_ydata()[100:]) < 1e-4 < np.nanmin(layer1.get_ydata()[:20])  # the collapse


def test_gradients_one_matrix_per_layer(example):
    figure = plot_gradients([example / "failed.h5"], matrix="attention.self.key.weight", layers="all")
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    components = open_run(example / "failed.h5").series("components")
    np.testing.assert_allclose(lines["layer 2"].get_ydata(), components.column("encoder.2/attention.self.key.weight"))
    np.testing.assert_allclose(lines["pooler"].get_ydata(), components.column("pooler/dense.weight"))
    assert "embeddings" in lines and "matrix" in figure.axes[0].get_ylabel()


def test_gradients_of_block_outputs_per_depth(example):
    figure = plot_gradients(example / "failed.h5", activations=True)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert [name for name in lines if name.startswith("layer")] == [f"layer {d}" for d in range(1, 7)]
    assert "pooler" not in lines and figure.axes[0].get_ylabel().startswith("activation-gradient norm")
    expected = open_run(example / "failed.h5").series("activations", kind="activation_gradients").column("encoder.3")
    np.testing.assert_allclose(lines["layer 3"].get_ydata(), expected)


def test_log_axis_only_over_a_wide_range():
    figure, (narrow, wide) = plt.subplots(1, 2)
    assert not log_scale_if_wide(narrow, [0.66, 0.68, 0.70]) and narrow.get_yscale() == "linear"
    assert log_scale_if_wide(wide, [0.003, 0.05, 0.69], "x") and wide.get_xscale() == "log"


def test_layer_subset_like_the_paper():
    names = ["embeddings", *(f"encoder.{d}" for d in range(1, 25)), "pooler", "head"]
    assert select_layers(names, "subset") == ["encoder.1", *(f"encoder.{d}" for d in range(4, 25, 4)),
                                              "pooler", "head"]
    assert select_layers(names, [2, 3]) == ["encoder.2", "encoder.3", "pooler", "head"]
    assert select_layers(names, "all") == names
    assert select_layers(["encoder.shared", "pooler", "head"], "subset") == ["encoder.shared", "pooler", "head"]


def test_forgetting_panels_scales_and_pretrained_line(example):
    figure = plot_forgetting(sorted(example.glob("*.h5")))
    failed, successful, history = figure.axes[:3]
    assert failed.get_yscale() == "log" and successful.get_yscale() == "linear"
    assert len([l for l in failed.get_lines() if l.get_label().startswith("rte default s")]) == 2
    dashed = [l for l in successful.get_lines() if l.get_label() == "pre-trained"]
    assert dashed[0].get_linestyle() == "--" and dashed[0].get_ydata()[0] == pytest.approx(9.4)
    loss = next(l for l in history.get_lines() if l.get_label() == "training loss")
    assert np.mean(loss.get_ydata()) == pytest.approx(np.log(2), abs=0.03)
    assert len(plot_forgetting(sorted(example.glob("*.h5")), training=False).axes) == 2


def test_surface_contours_log_levels_and_models_marked(example):
    figure = plot_surface(example / "surface.h5")
    axis = figure.axes[0]
    levels = axis.collections[0].levels
    np.testing.assert_allclose(np.diff(np.log(levels)), np.diff(np.log(levels))[0])  # log-spaced
    marks = [tuple(l.get_xydata()[0]) for l in axis.get_lines()]
    assert marks == [(0, 0), (1, 0), (0, 1)]
    assert [t.get_text() for t in axis.texts] == ["pre-trained", "failed", "successful"]


def _boxes(figure, texts) -> list:
    """The drawn extents of ``texts`` (display units), after a full draw."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    return [text.get_window_extent(renderer) for text in texts]


@pytest.mark.parametrize("span", [1.5, 1.0, 3.0])
def test_surface_labels_never_overlap_and_stay_in_the_figure(tmp_path, span):
    """The three models' labels, drawn at the default and at narrower and wider ranges: no two meet, none leaves
    the figure (the pre-trained and failed labels once ran into each other)."""
    axis = np.linspace(-span, span, 7)
    a, b = np.meshgrid(axis, axis, indexing="ij")
    write_grid(tmp_path / "s.h5", "plane", {"a": axis, "b": axis}, {"loss": 0.7 + a ** 2 + b ** 2, "accuracy": a * 0},
               kind="surfaces", attrs={"kind": "plane", "labels": ["pre-trained", "failed", "successful"]})
    figure = plot_surface(tmp_path / "s.h5")
    boxes = _boxes(figure, figure.axes[0].texts)
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(3) for j in range(i + 1, 3))
    frame = figure.bbox
    assert all(frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
               for box in boxes)


def test_barrier_numbers_are_readable_and_fit_their_cells(example):
    """The barrier heat map's numbers: as large as the tick labels for a few runs (they were 5 pt), each inside
    its own cell; white on dark cells, black on light ones."""
    from matplotlib import font_manager
    from plots.barriers import plot_barriers, value_size

    figure = plot_barriers(example / "surface.h5")
    heat = figure.axes[-2]  # dendrogram, heat map, colour bar
    numbers = heat.texts
    assert len(numbers) == 4 * 3
    tick_size = font_manager.FontProperties(size=heat.get_yticklabels()[0].get_fontsize()).get_size_in_points()
    assert all(text.get_fontsize() >= 0.85 * tick_size for text in numbers)
    cell = heat.transData.transform((1, 0))[0] - heat.transData.transform((0, 0))[0]
    assert all(box.width < 0.9 * cell for box in _boxes(figure, numbers))
    colours = {text.get_color() for text in numbers}
    assert colours <= {"white", "black"} and len(colours) == 2  # the factory's matrix has light and dark cells
    assert value_size(4) == 8.0 and value_size(10) == pytest.approx(6.4) and value_size(20) is None


def test_surface_with_points_still_missing(tmp_path):
    axis = np.linspace(-1, 1, 5)
    loss = np.full((5, 5), np.nan)
    loss[:3] = np.linspace(0.1, 2, 15).reshape(3, 5)
    write_grid(tmp_path / "s.h5", "plane", {"a": axis, "b": axis}, {"loss": loss, "accuracy": loss},
                       kind="surfaces", attrs={"kind": "plane", "labels": ["p", "x", "y"]})
    assert_pdf(save(plot_surface(tmp_path / "s.h5"), tmp_path / "s.pdf"))


def test_line_loss_and_accuracy_twin(example):
    figure = plot_line(example / "surface.h5")
    assert len(figure.axes) == 2 and figure.axes[1].get_ylabel() == "accuracy"
    assert [t.get_text() for t in figure.axes[0].texts] == ["failed", "successful"]


def test_interpolation_heat_maps_on_one_scale_and_curves_at_a_few_steps(example):
    figure = plot_interpolation([example / "successful.h5", example / "failed.h5"])
    failed_map, successful_map, failed_curves, successful_curves, bar = figure.axes
    assert failed_map.get_title(loc="left").startswith("(a) failed run") and bar.get_ylabel().startswith("training")
    record = open_run(example / "successful.h5").series("start", "interpolation")
    loss = record.values[:, record.axes["field"] == "loss"]
    mesh = successful_map.collections[0]
    np.testing.assert_allclose(mesh.get_array().reshape(loss.shape), loss, rtol=1e-6)
    other = failed_map.collections[0].norm
    assert (mesh.norm.vmin, mesh.norm.vmax) == (other.vmin, other.vmax) == (loss.min(), loss.max())  # one scale
    assert len(successful_map.collections) > 1 and successful_curves.get_yscale() == "log"  # contours; wide range
    lines = [line for line in successful_curves.get_lines() if line.get_label().startswith("step")]
    assert [line.get_label() for line in lines] == [f"step {s}" for s in (29, 119, 209, 299)]
    np.testing.assert_allclose(lines[-1].get_ydata(), loss[-1], rtol=1e-6)
    flat = [line.get_ydata() for line in failed_curves.get_lines() if line.get_label().startswith("step")]
    assert np.ptp(flat) < 0.02  # the failed run's plateau
    with pytest.raises(MissingRecord, match=r"no interpolation/last_update record.*probes.Interpolation"):
        plot_interpolation(example / "failed.h5", name="last_update")


def test_seeds_box_per_recipe_panel_per_task(example):
    figure = plot_seeds(example / "study")
    assert [a.get_title(loc="left") for a in figure.axes] == ["(a) mrpc (10 runs)", "(b) rte (10 runs)"]
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["default", "mosbach"]
    baseline = [l for l in figure.axes[1].get_lines() if l.get_linestyle() == "--"]
    assert baseline[0].get_ydata()[0] == pytest.approx(factory.MAJORITY["rte"])
    points = [l for l in figure.axes[0].get_lines() if l.get_marker() == "o"]
    assert len(points) == 10


def test_generalisation_log_loss_axis_and_task_choice(example):
    figure = plot_generalisation(example / "study", task="rte", successful_only=True)
    history, scatter = figure.axes
    assert scatter.get_xscale() == "log" and history.get_title(loc="left").startswith("(a) rte: 7 seeds")
    with pytest.raises(MissingRecord, match="pass --task"):
        plot_generalisation(example / "study", task="cola")


def test_training_loss_and_lr(example):
    figure = plot_training([example / "failed.h5", example / "successful.h5"])
    loss, lr = figure.axes
    assert [l.get_label() for l in loss.get_lines()] == ["rte default s3 (failed)", "rte default s4"]
    assert max(lr.get_lines()[0].get_ydata()) == pytest.approx(2e-5)


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_figure_is_a_valid_pdf(example, tmp_path, name):
    report = draw_figures({name: tmp_path / f"{name}.pdf"}, [example])
    assert_pdf(report.drawn[name])


def test_figures_draw_into_given_axes_and_leave_global_style_alone(example):
    before = dict(matplotlib.rcParams)
    figure, axis = plt.subplots()
    assert plot_surface(example / "surface.h5", ax=axis) is figure
    with pytest.raises(FigureError, match="2 panel"):
        plot_gradients([example / "failed.h5", example / "successful.h5"], ax=axis)
    assert dict(matplotlib.rcParams) == before


def test_verdicts_from_the_caller_override_summaries(example):
    runs = load_runs([example / "successful.h5"], failed=[example / "failed-2.h5"],
                     successful=[example / "failed.h5"])
    assert [(r.records.path.name, r.failed) for r in runs] == [("successful.h5", False), ("failed-2.h5", True),
                                                               ("failed.h5", False)]
    figure = plot_gradients([example / "failed.h5"], successful=str(example / "failed.h5"))  # one path, not a list
    assert figure.axes[0].get_title(loc="left").startswith("(a) successful run")


def test_warmup_from_the_finetune_runner_config(tmp_path):
    meta = RunMeta(config={"warmup_ratio": None, "resolved_recipe": {"warmup_ratio": 0.1}})
    with RunWriter.create(tmp_path / "run.h5", meta) as run:
        run.add_series("train", ["loss", "lr"])
        run.start()
    write_summary(tmp_path / "run.h5", {"steps": 463})
    assert sources.warmup_end(open_run(tmp_path / "run.h5")) == 46


def test_probe_series_stands_in_for_train(tmp_path):
    with RunWriter.create(tmp_path / "own-loop.h5", RunMeta(seed=0)) as run:
        run.add_series("probe", ["loss", "lr", "grad_norm_pre_clip"])
        run.start()
        for step in range(20):
            run.append("probe", step, [1 / (step + 1), 1e-3, 1.0])
    figure = plot_training(tmp_path / "own-loop.h5")
    np.testing.assert_allclose(figure.axes[0].get_lines()[0].get_ydata(), 1 / np.arange(1, 21), rtol=1e-6)


# ----------------------------------------------------------------------------------------------- refusals


def test_missing_record_names_the_record_and_the_command(example, tmp_path):
    with pytest.raises(MissingRecord, match=r"failed-2.h5 has no gradient_norms/layers record.*diagnostics.finetune"):
        plot_gradients(example / "failed-2.h5")
    with pytest.raises(MissingRecord, match=r"no forgetting record.*diagnostics.forgetting"):
        plot_forgetting(example / "study")
    with pytest.raises(MissingRecord, match=r"no surfaces record of kind 'plane'.*diagnostics.surface"):
        plot_surface(example / "failed.h5")


def test_unfinished_run_left_out_with_a_note(example, tmp_path):
    with RunWriter.create(tmp_path / "killed.h5", RunMeta(task="rte", recipe="default", seed=9)) as run:
        run.add_series("train", ["loss", "lr"])
        run.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure = plot_seeds([example / "study", tmp_path / "killed.h5"])
    notes = [str(w.message) for w in caught if issubclass(w.category, LeftOut)]
    assert len(notes) == 1 and "killed.h5 has no summary 'final_dev_metric'" in notes[0]
    assert figure.axes[1].get_title(loc="left") == "(b) rte (10 runs)"


def test_cli_refuses_existing_output_and_options_that_do_not_apply(example, tmp_path, capsys):
    out = tmp_path / "g.pdf"
    out.write_bytes(b"keep me")
    assert main(["gradients", str(example / "failed.h5"), "-o", str(out)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["seeds", str(example / "study"), "--layers", "all", "-o", str(tmp_path / "s.pdf")]) == 1
    assert "--layers does not apply to the seeds figure" in capsys.readouterr().err
    assert main(["all", str(example), "-o", str(tmp_path / "figures.pdf")]) == 1
    assert "pass a folder to -o" in capsys.readouterr().err and not (tmp_path / "s.pdf").exists()


def test_cli_missing_record_is_one_line_and_writes_nothing(example, tmp_path):
    missing = run_cli("gradients", example / "failed-2.h5", "-o", tmp_path / "new.pdf")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "no gradient_norms/layers record" in missing.stderr and "python -m diagnostics.finetune" in missing.stderr
    assert not (tmp_path / "new.pdf").exists() and "Traceback" not in missing.stderr


def test_cli_draws_and_overwrites_only_when_asked(example, tmp_path):
    out = tmp_path / "g.pdf"
    out.write_bytes(b"old")
    done = run_cli("gradients", example / "failed.h5", "--successful", example / "successful.h5",
                   "--matrix", "--layers", "1,6", "-o", out, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert f"wrote gradients: {out}" in done.stdout
    assert_pdf(out)
    assert not list(tmp_path.glob(".*partial"))


def test_interrupted_save_leaves_nothing(example, tmp_path):
    figure = plot_line(example / "surface.h5")

    def interrupted(path, **kwargs):
        Path(path).write_bytes(b"%PDF-half")
        raise KeyboardInterrupt

    figure.savefig = interrupted
    with pytest.raises(KeyboardInterrupt):
        save(figure, tmp_path / "line.pdf")
    assert list(tmp_path.iterdir()) == []


def test_plots_never_imports_torch():
    code = f"import {', '.join(PLOT_MODULES)}; import sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(PLOT_MODULES) >= 12


@pytest.mark.slow
def test_cli_all_draws_what_records_allow_and_says_what_it_skipped(example, tmp_path):
    everything = run_cli("all", example, "-o", tmp_path / "figures")
    assert everything.returncode == 0, everything.stderr
    for name in FIGURES:
        assert_pdf(tmp_path / "figures" / f"{name}.pdf")
    assert "plots: note" not in everything.stderr  # no record of a fine-tuning run is half there
    study = run_cli("all", example / "study", "-o", tmp_path / "study")
    assert study.returncode == 0, study.stderr
    drawn = ["early.pdf", "generalisation.pdf", "seeds.pdf", "training.pdf"]
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == drawn
    skipped = [line for line in study.stdout.splitlines() if line.startswith("skipped")]
    assert len(skipped) == len(FIGURES) - len(drawn) and any("gradients: " in s and "diagnostics.finetune" in s for s in skipped)
    again = run_cli("all", example / "study", "-o", tmp_path / "study")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_short_run_has_integer_iterations_and_output_folders_are_made(tmp_path):
    run = factory.finetune_run(tmp_path / "short.h5", failed=True, steps=12, forgetting=False)
    figure = plot_gradients([run])
    ticks = [t for t in figure.axes[0].get_xticks() if 0 <= t <= 11]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    out = save(figure, tmp_path / "figures" / "new" / "gradients.png", overwrite=False)
    assert out.read_bytes().startswith(b"\x89PNG")
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(FigureError, match="notes.txt is a file, not a folder"):
        save(figure, tmp_path / "notes.txt" / "gradients.png", overwrite=False)


def test_forgetting_profile_panels_failed_against_successful(example, tmp_path):
    """Weight change, CKA and 'only this layer fine-tuned' per layer, failed runs dashed and labelled."""
    from plots import plot_forgetting_profile

    figure = plot_forgetting_profile(sorted(example.glob("*.h5")))
    change, cka, alone = figure.axes[:3]
    labels = [line.get_label() for line in change.get_lines()]
    assert sorted(labels[:2]) == ["rte default s3 (failed)", "rte default s5 (failed)"]  # failed runs first
    assert sorted(labels[2:]) == ["rte default s4", "rte default s6"]
    assert [t.get_text() for t in change.get_xticklabels()] == ["emb", "1", "2", "3", "4", "5", "6"]
    assert change.get_lines()[0].get_linestyle() == "--" and cka.get_ylim()[1] <= 1.02
    assert alone.get_yscale() == "log" and any(l.get_label() == "pre-trained" for l in alone.get_lines())
    assert main(["profile", str(example), "-o", str(tmp_path / "profile.png")]) == 0
    assert (tmp_path / "profile.png").read_bytes().startswith(b"\x89PNG")


def test_labels_tell_runs_of_one_seed_apart(tmp_path):
    """The same task, recipe and seed with other settings are labelled by the settings that differ."""
    from plots.runs import load_runs, run_labels

    paths = []
    for folder, lr, decay in (("a", 1e-4, 1.0), ("b", 2e-4, 1.0), ("c", 2e-4, 0.5), ("d", 2e-4, 0.5)):
        path = tmp_path / folder / "hedge-default-s0" / "run.h5"
        path.parent.mkdir(parents=True)
        config = {"lr": lr, "out": str(tmp_path / folder), "resolved_recipe": {"lr": lr, "layerwise_lr_decay": decay}}
        with RunWriter.create(path, RunMeta(task="hedge", recipe="default", seed=0, config=config)) as run:
            run.start()
        paths.append(path)
    assert run_labels(load_runs(paths)) == [
        "hedge default s0 lr decay 1.0 lr 0.0001", "hedge default s0 lr decay 1.0 lr 0.0002",
        "hedge default s0 lr decay 0.5 lr 0.0002 (c/hedge-default-s0)",
        "hedge default s0 lr decay 0.5 lr 0.0002 (d/hedge-default-s0)"]
    assert run_labels(load_runs(paths[:1])) == ["hedge default s0"]

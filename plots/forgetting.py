"""Forgetting (Mosbach et al., Fig. 2): MLM perplexity after resetting the top k blocks to pre-trained weights.

(a) failed runs on a log axis (linear if they span less than a factor of 10), (b) successful runs on a linear one, one line per run, the pre-trained model's
perplexity dashed; (c) the failed runs' training loss and dev accuracy over training, mean +/- std, when their
scalars are there. From the command line: ``python -m plots forgetting RUNS... -o forgetting.pdf``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from plots import sources
from plots.runs import RecordsLike, Run, fetch_each, load_runs, require_verdicts, run_labels
from plots.sources import Curve, MissingRecord
from plots.style import NEUTRAL, PAGE, PALETTE, log_scale_if_wide, panel_title, panels, styled


@styled
def plot_forgetting(records: RecordsLike | Sequence[RecordsLike], ax: Axes | Sequence[Axes] | None = None, *,
                    failed: Sequence[RecordsLike] = (), successful: Sequence[RecordsLike] = (),
                    name: str | None = None, training: bool | None = None) -> Figure:
    """``name`` picks the forgetting record (default: the top-k one); ``training`` forces the (c) panel on or off
    (default: drawn when the failed runs have training loss and dev accuracy)."""
    runs = load_runs(records, failed, successful)
    curves = fetch_each(runs, lambda r: sources.forgetting_curve(r, name), "forgetting figure")
    require_verdicts([run for run, _ in curves], "forgetting")
    labels = dict(zip((id(run) for run, _ in curves), run_labels([run for run, _ in curves])))
    groups = [(verdict, [(labels[id(r)], c) for r, c in curves if r.failed is verdict]) for verdict in (True, False)]
    groups = [(verdict, members) for verdict, members in groups if members]
    tasks = {sources.task(run.records) for run, _ in curves}
    history = _failed_history([run for run in runs if sources.task(run.records) in tasks], training)
    figure, axes = panels(ax, len(groups) + bool(history), (PAGE if len(groups) + bool(history) > 1 else 3.3, 2.4))
    for index, (axis, (verdict, members)) in enumerate(zip(axes, groups)):
        _draw_curves(axis, members, log=verdict)
        panel_title(axis, index, "failed runs" if verdict else "successful runs")
    if history:
        _draw_history(axes[-1], *history)
        count = len(history[0])
        panel_title(axes[-1], len(axes) - 1, f"training of {count} failed run{'s' if count != 1 else ''}")
    return figure


def _draw_curves(axis: Axes, members: list[tuple[str, sources.ForgettingCurve]], *, log: bool) -> None:
    for label, curve in members:
        axis.plot(curve.k, curve.perplexity, marker="o", markersize=2.5, label=label)
    pretrained = [c.pretrained for _, c in members if c.pretrained is not None]
    if pretrained:
        axis.axhline(float(np.median(pretrained)), color=NEUTRAL, linestyle="--", linewidth=1, label="pre-trained")
    if log:  # failed runs: orders of magnitude above the pre-trained perplexity (linear when they are not)
        log_scale_if_wide(axis, np.concatenate([c.perplexity for _, c in members] + [pretrained]))
    axis.set_xlabel(f"{members[0][1].direction} layers reset")
    axis.set_ylabel("MLM perplexity")
    axis.xaxis.get_major_locator().set_params(integer=True)
    # under the panel: run labels (task, recipe, seed, settings) are too long to sit among the curves
    axis.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.3))


def _failed_history(runs: list[Run], wanted: bool | None) -> tuple[list[Curve], list[Curve], str] | None:
    """Training loss and dev accuracy of the failed runs that have both (runs of the tasks in the other panels),
    or None when the panel is not drawn."""
    if wanted is False:
        return None
    failed = [run for run in runs if run.failed]
    try:
        pairs = fetch_each(failed, lambda r: (sources.train_loss(r), sources.dev_metric(r)),
                           "failed runs' training panel")
    except MissingRecord:
        if wanted:
            raise
        return None
    return [loss for _, (loss, _) in pairs], [metric for _, (_, (metric, _)) in pairs], pairs[0][1][1][1]


def _draw_history(axis: Axes, losses: list[Curve], metrics: list[Curve], metric: str) -> None:
    """Both on one axis, as in the paper: a loss stuck at ln 2 next to an accuracy stuck at the majority class."""
    for curves, colour, label in ((losses, PALETTE[0], "training loss"), (metrics, PALETTE[2], f"dev {metric}")):
        steps, mean, std = mean_band(curves)
        axis.plot(steps, mean, color=colour, label=label)
        axis.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.25, linewidth=0)
    axis.axhline(np.log(2), color=NEUTRAL, linestyle=":", linewidth=1, label="ln 2")
    low, high = axis.get_ylim()
    axis.set_ylim(min(low, 0.4), max(high, 0.8))
    axis.set_xlabel("iteration")
    axis.set_ylabel("mean +/- std over runs")
    axis.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.3))


def mean_band(curves: list[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard deviation over runs on the first run's steps (up to the shortest run's end)."""
    end = min(c.steps[-1] for c in curves)
    steps = curves[0].steps[curves[0].steps <= end].astype("f8")
    stacked = np.stack([np.interp(steps, c.steps, c.values) for c in curves])
    return steps, stacked.mean(axis=0), stacked.std(axis=0)

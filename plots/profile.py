"""Where a run forgot, layer by layer: failed and successful runs side by side, one line per run.

(a) relative weight change ||theta_ft - theta_pt|| / ||theta_pt|| per layer; (b) linear CKA between the pre-trained
and the fine-tuned model's hidden states after each layer (1 = the same representation); (c) MLM perplexity of the
pre-trained model with only that layer fine-tuned (log y when it spans a decade), the pre-trained perplexity dashed.
Failed runs in vermillion, dashed. From the command line: ``python -m plots profile RUNS... -o profile.pdf``; the
records come from ``python -m diagnostics.forgetting CKPT --out RUN.h5``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from plots import sources
from plots.runs import RecordsLike, fetch_each, load_runs, require_verdicts, run_labels
from plots.style import FAILED_COLOUR, NEUTRAL, PAGE, RUN_COLOURS, log_scale_if_wide, panel_title, panels, styled


MARKERS = ("o", "s", "^", "D", "v", "P")


@styled
def plot_forgetting_profile(records: RecordsLike | Sequence[RecordsLike], ax: Sequence[Axes] | None = None, *,
                            failed: Sequence[RecordsLike] = (), successful: Sequence[RecordsLike] = (),
                            name: str | None = None) -> Figure:
    """``name`` picks the profile record (default: the one measured with the top-k curve)."""
    runs = load_runs(records, failed, successful)
    found = fetch_each(runs, lambda r: sources.forgetting_profile(r, name), "forgetting profile figure")
    require_verdicts([run for run, _ in found], "forgetting profile")
    found.sort(key=lambda pair: not pair[0].failed)  # failed runs first in the legend
    labels = run_labels([run for run, _ in found])
    figure, axes = panels(ax, 3, (PAGE, 2.6))
    failures = successes = 0
    for (run, profile), label in zip(found, labels):
        if run.failed:  # one colour for failed runs, told apart by their markers
            style = {"color": FAILED_COLOUR, "linestyle": "--", "marker": MARKERS[failures % len(MARKERS)],
                     "label": f"{label} (failed)"}
            failures += 1
        else:
            style = {"color": RUN_COLOURS[successes % len(RUN_COLOURS)], "linestyle": "-",
                     "marker": MARKERS[successes % len(MARKERS)], "label": label}
            successes += 1
        where = np.arange(len(profile.layers))
        for axis, values in zip(axes, (profile.weight_change, profile.cka, profile.alone)):
            axis.plot(where, values, markersize=3, **style)
    pretrained = [p.pretrained for _, p in found if p.pretrained is not None]
    if pretrained:
        axes[2].axhline(float(np.median(pretrained)), color=NEUTRAL, linestyle="--", linewidth=1,
                        label="pre-trained")
    log_scale_if_wide(axes[2], np.concatenate([p.alone for _, p in found] + [pretrained]))
    ticks = [_short(layer) for layer in max((p.layers for _, p in found), key=len)]
    titles = ("weight change", "similarity to pre-trained", "only this layer tuned")
    ylabels = ("||ft - pt|| / ||pt||", "linear CKA of hidden states", "MLM perplexity")
    for index, axis in enumerate(axes):
        axis.set_xticks(range(len(ticks)), ticks)
        axis.set_xlabel("layer")
        axis.set_ylabel(ylabels[index])
        panel_title(axis, index, titles[index])
    axes[1].set_ylim(top=1.02)
    figure.legend(*axes[2].get_legend_handles_labels(), loc="outside lower center", ncol=min(4, len(found) + 1),
                  fontsize="small")
    return figure


def _short(layer: str) -> str:
    """``emb``, ``1`` ... ``L`` for the x axis."""
    return "emb" if layer == "embeddings" else layer.rpartition(".")[2]

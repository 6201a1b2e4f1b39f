"""The figures ``plots`` can draw, by command-line name, each with its function and a line on what it shows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from matplotlib.figure import Figure

from plots.barriers import plot_barriers
from plots.early import plot_early
from plots.forgetting import plot_forgetting
from plots.generalisation import plot_generalisation
from plots.gradients import plot_gradients
from plots.interpolation import plot_interpolation
from plots.line import plot_line
from plots.profile import plot_forgetting_profile
from plots.seeds import plot_seeds
from plots.surface import plot_surface
from plots.training import plot_training


@dataclass(frozen=True)
class FigureKind:
    draw: Callable[..., Figure]
    shows: str


FIGURES = {
    "gradients": FigureKind(plot_gradients, "gradient norm per layer over training, a failed and a successful run"),
    "forgetting": FigureKind(plot_forgetting, "MLM perplexity against the number of top layers reset to pre-trained"),
    "profile": FigureKind(plot_forgetting_profile, "per layer: weight change, CKA with the pre-trained model and "
                                                   "perplexity with only that layer fine-tuned, failed vs successful"),
    "surface": FigureKind(plot_surface, "training loss on the plane through pre-trained, failed, successful"),
    "line": FigureKind(plot_line, "loss and accuracy along the line between two checkpoints"),
    "interpolation": FigureKind(plot_interpolation, "loss on the line from the start over training, failed and "
                                                    "successful run"),
    "seeds": FigureKind(plot_seeds, "final dev metric over seeds per recipe and task, majority baseline"),
    "generalisation": FigureKind(plot_generalisation, "dev accuracy over training, and against final loss"),
    "training": FigureKind(plot_training, "training loss and learning rate per run"),
    "barriers": FigureKind(plot_barriers, "loss barrier between every pair of runs, clustered; failed runs marked"),
    "early": FigureKind(plot_early, "early-failure predictor: held-out precision/recall/AUC vs training seen"),
}

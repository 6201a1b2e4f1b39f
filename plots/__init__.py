"""Redraw the papers' figures as PDF from HDF5 records; never imports torch.

Command line: ``python -m plots FIGURE RECORDS... -o FILE.pdf`` or ``python -m plots all RUNS_DIR -o DIR`` (see
:mod:`plots.cli`). In a notebook each figure is a function ``plot_<figure>(records, ax=None, ...) -> Figure``
taking records files, folders or :class:`probes.records.RunRecords`::

    from plots import plot_gradients
    plot_gradients(["runs/rte-default-s1/run.h5", "runs/rte-default-s2/run.h5"], layers="all")
"""
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

__all__ = ["plot_barriers", "plot_early", "plot_forgetting", "plot_forgetting_profile", "plot_generalisation",
           "plot_gradients", "plot_interpolation", "plot_line", "plot_seeds", "plot_surface", "plot_training"]

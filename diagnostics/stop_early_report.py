"""What stopping doomed seeds early saved and cost, against running every seed to the end.

    savings(Path("runs/bank-dodge"), against=Path("runs/bank")).markdown()

Compute is counted in optimiser steps: the steps the runs under ``root`` took over the steps they would have taken
run to the end (a stopped run's summary keeps its ``planned_steps``). A run stopped early has no outcome of its own;
``against`` is a sweep of the same runs (same grid, seeds and sizes: runs are reproducible, so the stopped run's
first steps are the same) run to the end, whose outcomes say which stopped runs would have succeeded (good runs
lost) and which would have failed (failures caught). Runs are matched by their path under each root and must
agree on the recipe and the data (:data:`SAME`); the stopped runs without such a match are counted apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from probes.records import open_run

SAME = ("resolved_recipe", "model", "max_length", "train_examples", "dev_examples", "precision")


@dataclass(frozen=True)
class Savings:
    """Steps run and planned over ``runs`` runs, of which ``stopped`` stopped early; ``lost`` / ``caught``: the
    stopped runs that succeeded / failed when run to the end (None without such a sweep), ``unmatched`` the stopped
    runs it does not hold, ``failed_kept`` the runs that went on and failed."""

    runs: int
    stopped: int
    steps_run: int
    steps_planned: int
    failed_kept: int
    lost: tuple[str, ...] | None = None
    caught: tuple[str, ...] | None = None
    unmatched: tuple[str, ...] = ()

    @property
    def saved(self) -> float:
        """The share of the optimiser steps not run."""
        return 1 - self.steps_run / self.steps_planned if self.steps_planned else 0.0

    def markdown(self) -> str:
        rows = [("runs (stopped early)", f"{self.runs} ({self.stopped})"),
                ("optimiser steps run / to the end", f"{self.steps_run} / {self.steps_planned}"),
                ("compute saved", f"{self.saved:.0%}"),
                ("runs that went on and failed", str(self.failed_kept))]
        if self.lost is None:
            rows.append(("good runs lost", "unknown: run the same sweep to the end elsewhere and compare"))
        else:
            rows += [("good runs lost (stopped, succeeded when run to the end)",
                      f"{len(self.lost)}" + (f": {', '.join(self.lost)}" if self.lost else "")),
                     ("failures caught (stopped, failed when run to the end)", str(len(self.caught)))]
            if self.unmatched:
                rows.append(("stopped runs not in the sweep run to the end", str(len(self.unmatched))))
        return "| | |\n|---|---|\n" + "".join(f"| {name} | {value} |\n" for name, value in rows)


def run_summaries(root: Path) -> dict[str, dict]:
    """The summary of every run folder under ``root`` that has one, with the settings of :data:`SAME` under
    ``"same"``, by its path under ``root`` (folders set aside as ``<run>.interrupted-N`` are left out)."""
    found = {}
    for path in sorted(Path(root).rglob("run.h5")):
        if ".interrupted-" in path.parent.name:
            continue
        run = open_run(path)
        config = run.meta.get("config", {}) or {}
        if "steps" in run.summary:
            found[str(path.parent.relative_to(root))] = {**run.summary, "same": [config.get(k) for k in SAME]}
    return found


def savings(root: Path, against: Path | None = None) -> Savings:
    """Compute saved by the runs under ``root``, and with ``against`` the good runs lost and failures caught."""
    runs = run_summaries(root)
    stopped = sorted(name for name, summary in runs.items() if "stopped_at" in summary)
    steps_run = sum(int(summary["steps"]) for summary in runs.values())
    planned = sum(int(summary.get("planned_steps", summary["steps"])) for summary in runs.values())
    failed_kept = sum(bool(summary.get("failed")) for summary in runs.values())
    if against is None:
        return Savings(len(runs), len(stopped), steps_run, planned, failed_kept)
    ended = {name: summary for name, summary in run_summaries(against).items()
             if "final_dev_metric" in summary and name in runs and summary["same"] == runs[name]["same"]}
    lost = tuple(name for name in stopped if name in ended and not ended[name]["failed"])
    caught = tuple(name for name in stopped if name in ended and ended[name]["failed"])
    unmatched = tuple(name for name in stopped if name not in ended)
    return Savings(len(runs), len(stopped), steps_run, planned, failed_kept, lost, caught, unmatched)

"""Multi-seed statistics of fine-tuning outcomes: failed-run counts, spread of the dev metric, Levene's test.

Pure functions over plain numbers, so the report command, the study and the tests share one definition. A run
*failed* when its final dev metric is at or below the majority-class baseline (Dodge et al. 2020; the papers'
definition).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Outcome:
    """What one finished run reports: where it came from and how it ended."""

    task: str
    recipe: str
    seed: int
    metric: str
    value: float
    majority: float
    final_train_loss: float = float("nan")
    path: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.value <= self.majority + 1e-9)


@dataclass(frozen=True)
class GroupRow:
    """One line of the report: all seeds of one recipe on one task."""

    task: str
    recipe: str
    metric: str
    seeds: int
    failed: int
    std: float
    mean: float
    median: float
    max: float
    majority: float
    values: list[float] = field(default_factory=list)


def group_rows(outcomes: list[Outcome]) -> list[GroupRow]:
    """One :class:`GroupRow` per (task, recipe), sorted by task then recipe."""
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.task, outcome.recipe), []).append(outcome)
    rows = []
    for (task, recipe), members in sorted(groups.items()):
        values = np.array([m.value for m in members], dtype=float)
        rows.append(GroupRow(
            task=task, recipe=recipe, metric=members[0].metric, seeds=len(members),
            failed=sum(m.failed for m in members),
            std=float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
            mean=float(values.mean()), median=float(np.median(values)), max=float(values.max()),
            majority=members[0].majority, values=[float(v) for v in values],
        ))
    return rows


def levene_by_task(rows: list[GroupRow]) -> dict[str, tuple[float, float]]:
    """Levene's test for equal variance of the dev metric across the recipes of each task: (statistic, p).

    Tasks with fewer than two recipes of at least two seeds each are left out; so are tasks where a recipe gave
    the same value on every seed (all seeds failed, say): the statistic is infinite or undefined there.
    """
    by_task: dict[str, list[list[float]]] = {}
    for row in rows:
        if row.seeds >= 2:
            by_task.setdefault(row.task, []).append(row.values)
    results = {}
    for task, samples in by_task.items():
        if len(samples) < 2 or any(np.ptp(s) == 0 for s in samples):
            continue
        statistic, p_value = stats.levene(*samples)
        results[task] = (float(statistic), float(p_value))
    return results

"""Redraw the ``*-example.png`` figures of the README from the synthetic records of ``tests/records_factory.py``.

    python3 docs/figures/make_examples.py

These show what each figure looks like; their numbers are made up by the test factory, not measured. Figures from
real runs of the embedded default are the ones without ``-example`` in their name.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import records_factory  # noqa: E402
from plots.batch import draw_figures  # noqa: E402
from plots.registry import FIGURES  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        records_factory.example_runs(folder)
        report = draw_figures({name: HERE / f"{name}-example.png" for name in FIGURES}, [Path(folder)],
                              overwrite=True, strict=False)
    for name, path in report.drawn.items():
        print(f"wrote {name}: {path.relative_to(REPO)}")
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    return 0 if not report.skipped else 1


if __name__ == "__main__":
    raise SystemExit(main())

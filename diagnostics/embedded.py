"""Where the embedded default lives: the small pre-trained model, its held-out text and the few-sample tasks.

Everything here is built by the scripts in ``data/`` (see data/README.md). ``INSTABILITY_DATA`` overrides the
folder, for a checkout whose data lives elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_DIR = Path(os.environ.get("INSTABILITY_DATA", Path(__file__).resolve().parents[1] / "data"))
DEFAULT_MODEL = DATA_DIR / "model"
HELDOUT_TEXT = DATA_DIR / "corpus" / "heldout.txt"
TASKS_DIR = DATA_DIR / "tasks"

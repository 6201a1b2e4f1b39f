"""Keep stderr for the toolkit's own messages: no model-loading reports or progress bars from transformers.

Every command calls :func:`quiet_transformers` once before it loads a model. Loading a checkpoint into a class
with another head (a new classifier, an unused MLM head) is what the diagnostics do on purpose, so transformers'
"newly initialised / unexpected weights" reports would only bury the real output.
"""
from __future__ import annotations

import os


def quiet_transformers() -> None:
    """Offline hub, transformers' logging at error level, its progress bars off."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()

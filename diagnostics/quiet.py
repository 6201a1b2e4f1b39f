"""Keep stderr for the toolkit's own messages: no model-loading reports or progress bars from transformers.

Every command calls :func:`quiet_transformers` once before it loads a model. Loading a checkpoint into a class
with another head (a new classifier, an unused MLM head) is what the diagnostics do on purpose, so transformers'
"newly initialised / unexpected weights" reports would only bury the real output. :func:`warnings_as_log_lines`
turns Python's warnings into one logged line each, which a progress bar can print above itself.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator


def quiet_transformers() -> None:
    """Offline hub, transformers' logging at error level, its progress bars off."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


@contextlib.contextmanager
def warnings_as_log_lines() -> Iterator[None]:
    """Inside: each Python warning as one line ("UserWarning: message") on logger ``py.warnings``, without the
    echo of the source line that would otherwise cut through a progress bar."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        logging.getLogger("py.warnings").warning(f"{category.__name__}: {message}")

    previous, warnings.showwarning = warnings.showwarning, show
    try:
        yield
    finally:
        warnings.showwarning = previous

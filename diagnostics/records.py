"""The records format lives in :mod:`probes.records`; this name is kept so that 0.1 code
(``from diagnostics.records import open_run``) keeps working."""
from probes.records import *  # noqa: F401,F403

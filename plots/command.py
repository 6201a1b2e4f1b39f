"""What ``python -m plots`` and ``python -m plots watch`` share: an argument argparse refuses is one line.

argparse prints its whole usage block before the line that names the problem (``-o`` missing, an unknown
figure); here that line stands alone, in the ``plots: error: ...`` form of every other refusal, with ``see --help``
for the usage, and the status is 1 as for any bad input of ``plots``.
"""
from __future__ import annotations

import argparse

BAD_INPUT = 1  # the exit status of plots for input it cannot use


class PlotsParser(argparse.ArgumentParser):
    """argparse, answering an argument it refuses with ``plots: error: ...; see --help`` and status 1."""

    def error(self, message: str) -> None:
        self.exit(BAD_INPUT, f"plots: error: {message}; see --help\n")

"""What every ``python -m diagnostics.<command>`` shares: bad input is one ``error: ...`` line and exit status 1.

    parser = CommandParser(prog="python -m diagnostics.x", description=summary(__doc__))   # argparse; refusals too
    try:
        ...
    except ValueError as error:
        return fail(error)                                                    # prints "error: ...", returns 1
"""
from __future__ import annotations

import argparse
import sys

BAD_INPUT = 1  # the exit status of every command for input it cannot use


class CommandParser(argparse.ArgumentParser):
    """argparse, answering an argument it refuses (a missing required one, an unknown choice, a bad number) with
    one line, ``error: ...; see --help``, and status 1: the usage block argparse prints first would bury the line
    that names the problem (``--help`` still prints it)."""

    def error(self, message: str) -> None:
        self.exit(BAD_INPUT, f"error: {message}; see --help\n")


def summary(docstring: str | None) -> str:
    """A module docstring's first paragraph as one line: the description ``--help`` prints (argparse reflows it,
    so a sentence wrapped in the source is not cut at its first line break)."""
    return " ".join((docstring or "").strip().split("\n\n")[0].split())


def fail(error: BaseException) -> int:
    """Print ``error: `` and the first line of the error's message on stderr; return the bad-input status."""
    text = str(error).strip()
    print(f"error: {text.splitlines()[0] if text else type(error).__name__}", file=sys.stderr)
    return BAD_INPUT

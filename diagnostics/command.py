"""What every ``python -m diagnostics.<command>`` shares: bad input is one ``error: ...`` line and exit status 1.

    parser = CommandParser(prog="python -m diagnostics.x", description=...)   # argparse; its refusals too
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
    """argparse, answering an argument it refuses with its usage, then ``error: ...; see --help``, status 1."""

    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        self.exit(BAD_INPUT, f"error: {message}; see --help\n")


def fail(error: BaseException) -> int:
    """Print ``error: `` and the first line of the error's message on stderr; return the bad-input status."""
    text = str(error).strip()
    print(f"error: {text.splitlines()[0] if text else type(error).__name__}", file=sys.stderr)
    return BAD_INPUT

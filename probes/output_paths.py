"""Output paths: every command and writer creates the folders above its output, as TensorBoard's writer and the
Trainer's ``output_dir`` do, and never replaces a file to do so.

:func:`check_parent` says, without touching the disk, whether the folders above a path can be made (a regular file
in the way is refused in one line); :func:`make_parent` makes them. Commands check before any work and make the
folders only when they write, so a refused command leaves nothing behind.
"""
from __future__ import annotations

import os
from pathlib import Path


def check_parent(path: str | os.PathLike, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` (one line) when the folder of ``path`` cannot be created because a file is in the way."""
    parent = Path(path).parent
    existing = next(folder for folder in (parent, *parent.parents) if folder.exists() or folder == folder.parent)
    if existing.exists() and not existing.is_dir():
        raise error(f"folder {parent} does not exist and cannot be created: {existing} is a file, not a folder; "
                    "pass another output path")


def make_parent(path: str | os.PathLike, error: type[Exception] = ValueError) -> Path:
    """Create the folders above ``path`` (nothing if they exist); returns the folder."""
    check_parent(path, error)
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as problem:
        raise error(f"cannot create folder {parent} ({problem.strerror}); pass an output path in a writable "
                    "folder") from None
    return parent

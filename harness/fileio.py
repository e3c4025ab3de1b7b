"""Atomic file writes: the one helper every cache, artifact and export goes through.

A reader (or a crash) never sees half a file: the data goes to a temporary file
in the target's folder, is flushed to disk, then renamed over the target.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness.errors import UserError


def atomic_write(path: str | Path, data: bytes, *, mkdir: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_output(path: str | Path, data: bytes, what: str = "-o") -> None:
    """A user-named output file, written atomically; any reason it can't be is a UserError.

    The folder must exist (a typo must not create folders), the target must not be a
    folder, and an existing file must be writable: replacing a read-only file through
    a rename would silently ignore its protection.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} '{path}' is a directory: give a file path, e.g. {path / 'out.txt'}")
    if not path.parent.is_dir():
        raise UserError(f"{what} '{path}': the folder '{path.parent}' does not exist: create it "
                        "or write elsewhere")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} '{path}' is not writable: make it writable (chmod u+w, chattr -i) "
                        "or write elsewhere")
    try:
        atomic_write(path, data, mkdir=False)
    except OSError as exc:
        raise UserError(f"{what} '{path}' could not be written ({exc.strerror or exc}): choose a "
                        "writable folder") from None

"""Paths a command writes to: checked before any work, so that a bad one is one line naming it
(a file where a directory is wanted, a directory it cannot create or write), not a traceback
after a long run."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DifftestError, os_reason


def writable_dir(path, what: str) -> Path:
    """The output directory ``path`` (named ``what`` in errors), created if missing and writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DifftestError(f"{what} {p} is a file, not a directory; give a directory (it is created if missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DifftestError(f"{what} {p}: cannot create this directory: {os_reason(exc)}") from exc
    if not os.access(p, os.W_OK | os.X_OK):
        raise DifftestError(f"{what} {p} is not writable; fix its permissions or choose another directory")
    return p


def writable_file(path, what: str) -> Path:
    """The output file ``path``: not a directory, its directory created if missing and writable."""
    p = Path(path)
    if p.is_dir():
        raise DifftestError(f"{what} {p} is a directory; give a file path")
    writable_dir(p.parent if str(p.parent) else Path("."), f"{what} {p}: its directory")
    return p

"""One writer per result directory: ``DIR/.lock``.

The lock file is created with ``O_EXCL`` and holds ``pid``, ``host``, ``started`` and a token, so
only its owner removes it. A second writer refuses the directory, naming the holder; a lock
whose process is gone (on this host; a reused pid is told apart by its start time) is stale and
taken over.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

from ..errors import DifftestError

LOCK = ".lock"

#: An unreadable lock (being written, or torn by a crash) younger than this is taken as held.
_LOCK_GRACE_S = 10.0


class DirectoryInUse(DifftestError):
    """Another difftest process has the result directory open for writing."""


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the process that wrote a lock still runs (assumed so when it is on another host)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        pid = int(holder["pid"])
        os.kill(pid, 0)
    except (KeyError, TypeError, ValueError):
        return False
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    started = holder.get("proc_start")
    now = _proc_start(pid)
    return started is None or now is None or started == now  # a reused pid is another process


def holder_text(holder: dict) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


class DirectoryLock:
    """``DIR/.lock``, created with ``O_EXCL`` and holding ``pid``, ``host``, ``started``: one writer per
    result directory. A lock whose process is gone (on this host) is stale and taken over."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK
        self.token = secrets.token_hex(8)
        self.held = False

    def holder(self) -> dict | None:
        """The live holder's lock contents, or None when the lock is free or stale."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        holder = _parse_lock(text)
        if holder is None:  # being written right now, or torn by a crash
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            return {"pid": "?", "host": "?", "started": "just now"} if age < _LOCK_GRACE_S else None
        return holder if _alive(holder) else None

    def acquire(self) -> None:
        import sys

        content = json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "proc_start": _proc_start(os.getpid()), "token": self.token,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv else "",
        }) + "\n"
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    stale_text = self.path.read_text(encoding="utf-8")
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                holder = self.holder()
                if holder is not None:
                    raise DirectoryInUse(
                        f"{self.path.parent} is in use by another difftest run ({holder_text(holder)}); wait "
                        f"for it to finish or choose another directory (if that run is gone, delete {self.path})")
                try:  # stale: remove it, unless someone replaced it meanwhile
                    if self.path.read_text(encoding="utf-8") == stale_text:
                        self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            try:
                os.write(fd, content.encode())
            finally:
                os.close(fd)
            self.held = True
            return
        raise DirectoryInUse(f"could not lock {self.path.parent}: other processes keep taking it; try again")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            if (_parse_lock(self.path.read_text(encoding="utf-8")) or {}).get("token") == self.token:
                self.path.unlink()
        except FileNotFoundError:
            pass


def _parse_lock(text: str) -> dict | None:
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        return None
    return d if isinstance(d, dict) and "pid" in d else None


def lock_holder(directory: Path) -> dict | None:
    """Who has ``directory`` open for writing (its ``.lock``), or None."""
    return DirectoryLock(directory).holder()



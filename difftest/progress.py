"""Progress of a long run: a live line on a terminal, plain lines in logs."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


@dataclass
class Progress:
    """Cases done, findings so far, elapsed: a live line on a terminal, plain lines in logs."""

    stream: object = field(default_factory=lambda: sys.stderr)
    enabled: bool = True
    started: float = field(default_factory=time.monotonic)
    cases: int = 0
    findings: int = 0
    _last: float = 0.0

    @property
    def live(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, note: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        period = 0.25 if self.live else 15.0
        if not force and now - self._last < period:
            return
        self._last = now
        line = f"difftest: {self.cases} cases, {self.findings} findings, {now - self.started:.0f}s elapsed {note}"
        if self.live:
            self.stream.write("\r" + line[:120].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (not overwritten by the live line)."""
        if self.live:
            self.stream.write("\n")
        self.stream.write(f"difftest: {text}\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.live:
            self.stream.write("\n")
            self.stream.flush()

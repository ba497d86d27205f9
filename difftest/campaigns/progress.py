"""Progress of a long run: a live line on a terminal, plain lines in logs."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field


@dataclass
class Progress:
    """Cases done, findings so far, elapsed (of the time budget, when given): a live line on a
    terminal, plain lines in logs. A stream that can no longer be written (a closed pipe)
    silences it; the run goes on."""

    stream: object = field(default_factory=lambda: sys.stderr)
    enabled: bool = True
    started: float = field(default_factory=time.monotonic)
    cases: int = 0
    findings: int = 0
    _last: float = 0.0
    budget: float | None = None  # seconds: the lines say "18 s of 60 s" (None or inf: "18s elapsed")

    @property
    def live(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()

    def elapsed_text(self, now: float | None = None) -> str:
        """``18 s of 60 s`` with a budget, ``18s elapsed`` without."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        if self.budget is not None and math.isfinite(self.budget):
            return f"{elapsed:.0f} s of {self.budget:g} s"
        return f"{elapsed:.0f}s elapsed"

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # closed pipe or stream: stop writing, keep running
            self.enabled = False

    def update(self, note: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        period = 0.25 if self.live else 15.0
        if not force and now - self._last < period:
            return
        self._last = now
        line = f"difftest: {self.cases} cases, {self.findings} findings, {self.elapsed_text(now)} {note}"
        if self.live:
            self._write("\r" + line[:120].ljust(120))
        else:
            self._write(line + "\n")

    def note(self, text: str) -> None:
        """A line of its own (not overwritten by the live line); nothing when disabled (--quiet)."""
        if not self.enabled:
            return
        self._write(("\n" if self.live else "") + f"difftest: {text}\n")

    def done(self) -> None:
        if self.enabled and self.live:
            self._write("\n")

"""Expected findings: known, accepted behaviours that must not fail a run, and must stay true.

A nightly job that fails on every known behaviour (bfloat16 subnormals flushed by torch's
kernels, reassociated float32 bias sums) is red forever and gets ignored. An expectations file
declares such findings, each with the reason it is accepted, in the spirit of PyTorch OpInfo's
``DecorateInfo``::

    [[expected]]
    backend = "torch-cpu-bfloat16"     # fnmatch pattern
    gradient = "*"                     # pattern (default "*")
    verdict = "precision"              # order, precision, domain or error
    format = "bfloat16"                # optional
    geometry = { C = [1, 16] }         # optional: field = value, or [min, max] (either may be omitted as "")
    reason = "torch's CPU kernels flush bfloat16 subnormals to zero"

A finding an entry matches is *expected*: shown as such, and it does not fail the exit code.
Anything not declared fails as before. Each entry's *coverage* counts the searched cases it
could have shown on (its backend, a requested gradient it names, its format and geometry): an
entry that matched no finding in a run that searched at least :data:`REACHED_CASES` such cases
is reported as *not seen any more*, so the list stays true; with fewer, as *not reached in this
run* (a short random campaign is no evidence that a behaviour is gone).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import tomlfile
from ..errors import DifftestError
from ..values.verdicts import FINDINGS, fails, is_finding

GEOMETRY_FIELDS = ("N", "C", "H", "W", "O", "kH", "kW", "stride", "padding", "dilation", "groups")
#: Searched cases an entry must have been able to show on before its absence says it is gone.
REACHED_CASES = 100
#: Fields an older record lacks, and the value they had there.
GEOMETRY_DEFAULTS = {"dilation": 1, "groups": 1}


@dataclass(frozen=True)
class Expected:
    """One declared finding: patterns for backend and gradient, a verdict, optional constraints."""

    backend: str
    verdict: str
    reason: str
    gradient: str = "*"
    format: str | None = None
    geometry: dict = field(default_factory=dict, hash=False)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Expected":
        if not isinstance(d, dict):
            raise DifftestError(f"{where}: must be a table (backend, verdict, reason, ...)")
        unknown = set(d) - {"backend", "verdict", "reason", "gradient", "format", "geometry"}
        if unknown:
            raise DifftestError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        for key in ("backend", "verdict", "reason"):
            if not isinstance(d.get(key), str) or not d[key].strip():
                raise DifftestError(f"{where}: '{key}' must be a non-empty string")
        for key in ("gradient", "format"):
            if key in d and (not isinstance(d[key], str) or not d[key].strip()):
                raise DifftestError(f"{where}: '{key}' must be a non-empty string")
        if not is_finding(d["verdict"]):
            raise DifftestError(f"{where}: verdict must be one of {', '.join(FINDINGS)}, got {d['verdict']!r}")
        geometry = d.get("geometry", {})
        if not isinstance(geometry, dict) or set(geometry) - set(GEOMETRY_FIELDS):
            raise DifftestError(f"{where}: geometry keys must be among {', '.join(GEOMETRY_FIELDS)}")
        for k, v in geometry.items():
            whole = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731
            if not (whole(v) or (isinstance(v, list) and len(v) == 2 and all(x == "" or whole(x) for x in v))):
                raise DifftestError(f"{where}: geometry.{k} must be an integer or [min, max] (\"\" for open), got {v!r}")
        return cls(backend=d["backend"], verdict=d["verdict"], reason=d["reason"], gradient=d.get("gradient", "*"),
                   format=d.get("format"), geometry=geometry)

    def matches(self, backend: str, gradient: str, verdict: str, fmt: str, geometry: dict) -> bool:
        return verdict == self.verdict and self.reaches(backend, gradient, fmt, geometry)

    def reaches(self, backend: str, gradient: str, fmt: str, geometry: dict) -> bool:
        """Whether a result of ``backend`` for ``gradient`` in ``fmt`` on ``geometry`` could show it."""
        if not fnmatch.fnmatchcase(backend, self.backend):
            return False
        if not fnmatch.fnmatchcase(gradient, self.gradient) or (self.format and fmt != self.format):
            return False
        for k, want in self.geometry.items():
            have = geometry.get(k, GEOMETRY_DEFAULTS.get(k))
            if have is None:
                return False
            lo, hi = (want, want) if isinstance(want, int) else want
            # a per-axis value [h, w] matches where both axes do
            if any((lo != "" and v < lo) or (hi != "" and v > hi) for v in (have if isinstance(have, list) else [have])):
                return False
        return True

    def describe(self) -> str:
        where = [f"format {self.format}"] if self.format else []
        where += [f"{k}={v}" for k, v in self.geometry.items()]
        return (f"{self.backend} {self.gradient} {self.verdict}" + (f" ({', '.join(where)})" if where else "")
                + f": {self.reason}")

    def to_dict(self) -> dict:
        d = {"backend": self.backend, "gradient": self.gradient, "verdict": self.verdict, "reason": self.reason}
        if self.format:
            d["format"] = self.format
        if self.geometry:
            d["geometry"] = self.geometry
        return d


@dataclass
class Expectations:
    """The declared findings of one file (empty: nothing is expected)."""

    entries: list[Expected] = field(default_factory=list)
    source: str = ""

    @classmethod
    def load(cls, path) -> "Expectations":
        """Read a TOML file of ``[[expected]]`` tables (or the JSON :meth:`to_dict` writes)."""
        path = Path(path)
        if not path.is_file():
            raise DifftestError(f"expectations file {str(path)!r} does not exist")
        if path.suffix != ".json":
            return cls.from_data(tomlfile.parse(path.read_text(encoding="utf-8"), str(path)), str(path), str(path))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DifftestError(f"{path} is not valid JSON: {exc}") from None
        source = data.get("source") if isinstance(data, dict) else None
        return cls.from_data(data, source if isinstance(source, str) and source else str(path), str(path))

    @classmethod
    def from_data(cls, data, source: str, where: str) -> "Expectations":
        """Expectations from parsed TOML or JSON (``{"expected": [...]}``), every entry checked;
        ``where`` names the file in errors."""
        if not isinstance(data, dict):
            raise DifftestError(f"{where}: must be a table of [[expected]] entries")
        items = data.get("expected", [])
        if not isinstance(items, list):
            raise DifftestError(f"{where}: 'expected' must be a list of tables ([[expected]])")
        return cls([Expected.from_dict(d, f"{where}: expected[{i}]") for i, d in enumerate(items)], source)

    def explain(self, backend: str, gradient: str, verdict: str, fmt: str, geometry: dict) -> Expected | None:
        """The first entry that declares this finding, or None."""
        return next((e for e in self.entries if e.matches(backend, gradient, verdict, fmt, geometry)), None)

    def explain_record(self, record, gradient: str) -> Expected | None:
        """The entry that declares this gradient's result (None also where it was not requested)."""
        if gradient not in record.gradients:
            return None
        return self.explain(record.backend, gradient, record.gradients[gradient].verdict, record.format,
                            record.geometry)

    def fails_result(self, backend: str, gradient: str, verdict: str, fmt: str, geometry: dict, fail_on: str) -> bool:
        """The one rule for "does this result fail the run" (``check``, ``run``, ``model``, ``merge``
        and the plugin): a verdict failing under ``fail_on`` that nothing declares."""
        return fails(verdict, fail_on) and self.explain(backend, gradient, verdict, fmt, geometry) is None

    def judge(self, items, fail_on: str) -> tuple[dict, bool]:
        """Over ``(key, backend, gradient, verdict, format, geometry)`` items (a command's results):
        the declaration that accepts each finding, by ``key``, and whether any result fails the run
        (:meth:`fails_result`)."""
        expected, failed = {}, False
        for key, backend, gradient, verdict, fmt, geometry in items:
            if is_finding(verdict):
                expected[key] = self.explain(backend, gradient, verdict, fmt, geometry)
            failed = failed or self.fails_result(backend, gradient, verdict, fmt, geometry, fail_on)
        return expected, failed

    def fails(self, record, gradient: str, fail_on: str) -> bool:
        """Whether this gradient of a result line fails the run (:meth:`fails_result`; a gradient not
        requested of the backend was not judged, and fails nothing)."""
        if gradient not in record.gradients:
            return False
        return self.fails_result(record.backend, gradient, record.gradients[gradient].verdict, record.format,
                                 record.geometry, fail_on)

    def coverage(self, records) -> list["Coverage"]:
        """Per entry whose backend (and format) ran: the searched cases it could have shown on, and
        the results that showed it (:class:`Coverage`). Entries for backends that did not run are
        not judged."""
        ran = {(r.backend, r.format) for r in records}
        shown: dict[Expected, int] = {}
        cases: dict[Expected, set] = {}
        for r in records:
            for g, gr in r.gradients.items():
                if is_finding(gr.verdict):
                    e = self.explain(r.backend, g, gr.verdict, r.format, r.geometry)
                    if e is not None:
                        shown[e] = shown.get(e, 0) + 1
                if r.phase == "search" and gr.verdict not in ("error", "unsupported"):
                    for e in self.entries:
                        if e.reaches(r.backend, g, r.format, r.geometry):
                            cases.setdefault(e, set()).add(r.case_id)
        return [Coverage(e, len(cases.get(e, ())), shown.get(e, 0)) for e in self.entries
                if any(fnmatch.fnmatchcase(b, e.backend) and (not e.format or f == e.format) for b, f in ran)]

    def not_seen(self, records) -> list[Expected]:
        """Entries that a run searched enough (:data:`REACHED_CASES`) and that matched no finding: no
        longer true, to be removed or fixed."""
        return [c.entry for c in self.coverage(records) if c.state == "not seen any more"]

    def not_reached(self, records) -> list["Coverage"]:
        """Entries whose backend ran but on too few cases they could show on to tell."""
        return [c for c in self.coverage(records) if c.state == "not reached"]

    def to_dict(self) -> dict:
        return {"source": self.source, "expected": [e.to_dict() for e in self.entries]}


@dataclass(frozen=True)
class Coverage:
    """How far a run reached one expected finding: ``cases``, the searched cases it could have shown
    on (its backend, gradient, format and geometry, judged); ``shown``, the results that showed it."""

    entry: Expected
    cases: int
    shown: int

    @property
    def state(self) -> str:
        """``seen``; ``not seen any more`` (at least :data:`REACHED_CASES` cases and no finding);
        ``not reached`` (fewer: no evidence either way)."""
        if self.shown:
            return "seen"
        return "not seen any more" if self.cases >= REACHED_CASES else "not reached"

    def describe(self) -> str:
        return f"{self.entry.describe()} [{self.cases} matching cases, {self.shown} shown]"

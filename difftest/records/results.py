"""What a set of result lines says: the backend × gradient tallies, the findings, the exit code.

Pure functions over typed :class:`~difftest.outcome.ResultRecord` lines; reading and writing
result directories is :mod:`difftest.store`'s. Every face counts findings through
:func:`findings` — one per distinct ``(backend, gradient, verdict)`` — so the progress line,
``campaign.json``, the terminal summary, ``--json``, JUnit, the report and ``merge`` give the same
number.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .expectations import Expectations
from ..values.geometry import GRADIENTS, Geometry
from ..values.outcome import FindingKey, ResultRecord
from ..values.verdicts import VERDICTS, worst_verdict


@dataclass
class Cell:
    """Summary of one backend × gradient."""

    cases: int = 0
    worst_ratio: float = 0.0
    worst_ratio_order_free: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: {v: 0 for v in VERDICTS})

    @property
    def worst_verdict(self) -> str:
        return worst_verdict(v for v, n in self.counts.items() if n)


def summarize(records: list[ResultRecord]) -> dict[str, dict[str, Cell]]:
    """``{backend: {gradient: Cell}}`` over every distinct (case, backend) result, searched or shrunk.

    A backend's row holds a cell for each gradient requested of it in some case (in
    ``GRADIENTS`` order): a gradient never requested has no cell, so it can never read as
    ``pass``."""
    table: dict[str, dict[str, Cell]] = defaultdict(dict)
    seen = set()
    for r in records:
        key = (r.case_id, r.backend)
        if key in seen:
            continue
        seen.add(key)
        for g, gr in r.gradients.items():
            c = table[r.backend].setdefault(g, Cell())
            c.cases += 1
            c.counts[gr.verdict] += 1
            c.worst_ratio = max(c.worst_ratio, gr.max_ratio)
            c.worst_ratio_order_free = max(c.worst_ratio_order_free, gr.max_ratio_order_free)
    return {b: {g: row[g] for g in GRADIENTS if g in row} for b, row in table.items()}


def _size(r: ResultRecord) -> tuple:
    """How small a reproducer is: its multiply-adds, then its entries; a shrunk one before another."""
    try:
        g = Geometry.from_dict(r.geometry)
        size = (g.macs, g.N * g.C * g.H * g.W + g.O * (g.C // g.groups) * g.kH * g.kW)
    except Exception:  # noqa: BLE001 - a line without a whole geometry sorts last
        size = (float("inf"), float("inf"))
    return (*size, r.phase != "shrunk")


def choose_findings(records: list[ResultRecord]) -> dict[FindingKey, ResultRecord]:
    """The line that stands for each finding: of the lines naming it (one per shard or night in a
    merge), the smallest reproducer (:func:`_size`), the first of equals."""
    chosen: dict[FindingKey, ResultRecord] = {}
    for r in records:
        if r.finding is not None and (r.finding not in chosen or _size(r) < _size(chosen[r.finding])):
            chosen[r.finding] = r
    return chosen


def findings(records: list[ResultRecord]) -> list[ResultRecord]:
    """The findings' reproducers, one per (backend, gradient, verdict), worst ratio first: shrunk,
    or (``phase`` ``unshrunk``) the first case that showed it where shrinking was cut short or off,
    or (``phase`` ``layer``) the first layer of a model that showed it."""
    out = choose_findings(records).values()
    return sorted(out, key=lambda r: -r.gradients[r.finding.gradient].max_ratio)


def exit_code(records: list[ResultRecord], fail_on: str, expectations: Expectations | None = None) -> int:
    """1 when a verdict failing under ``fail_on`` occurred that no expectation declares, else 0."""
    e = expectations or Expectations()
    return int(any(e.fails(r, g, fail_on) for r in records for g in r.gradients))


def cases_per_backend(records, backends=()) -> dict[str, int]:
    """Searched cases per backend (the cases of its ``search`` lines), each of ``backends`` named
    even with none."""
    cases: dict[str, set] = {name: set() for name in backends}
    for r in records:
        if r.phase == "search":
            cases.setdefault(r.backend, set()).add(r.case_id)
    return {name: len(ids) for name, ids in cases.items()}

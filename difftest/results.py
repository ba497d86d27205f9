"""Result directories: ``results.jsonl``, ``cases/``, ``environments.json``, ``campaign.json``.

A result directory is the only thing reports and merges read, so a report can be rebuilt
anywhere from the files alone:

* ``results.jsonl`` — one :class:`~difftest.outcome.ResultRecord` per line, per case and
  backend: ``schema``, ``case_id``, ``backend``, ``format``, ``gradients`` (as in ``check
  --json``), ``geometry``, ``phase`` (``search`` for cases the search generated, ``shrunk`` for
  the minimal reproducer of a finding), ``seed``, ``shard``, ``timings``, ``environment_id``
  and, for non-``pass`` results, ``case_file`` and ``outputs_file``. Lines are flushed one by
  one; a torn last line (a killed process) is skipped.
* ``cases/<case_id>.npz`` — reproducers, replayable with ``difftest check``;
  ``cases/<case_id>--<backend>.npz`` — the backend's raw gradients ``g`` and, per entry,
  ``g__error``, ``g__bound``, ``g__bound_order_free`` (what a report draws).
* ``environments.json`` — ``{environment_id: environment}``.
* ``campaign.json`` — settings and outcome of the campaign (or of each merged shard).
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DifftestError
from .explain import RATIO_LEGEND, finding_text, format_ratio, plural
from .geometry import GRADIENTS
from .outcome import BackendResult, ResultRecord, environment_id, jsonable
from .verdicts import VERDICTS, fails, worst_verdict

RESULTS = "results.jsonl"
CASES = "cases"
ENVIRONMENTS = "environments.json"
CAMPAIGN = "campaign.json"


class ResultsWriter:
    """Appends result lines as they come (flushed), keeps environments and reproducers."""

    def __init__(self, out: Path, fresh: bool = True):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        if fresh:
            for name in (RESULTS, ENVIRONMENTS, CAMPAIGN):
                (self.out / name).unlink(missing_ok=True)
            shutil.rmtree(self.out / CASES, ignore_errors=True)
        (self.out / CASES).mkdir(exist_ok=True)
        self._file = open(self.out / RESULTS, "a", encoding="utf-8")
        self.environments: dict[str, dict] = read_environments(self.out)

    def environment(self, env: dict) -> str:
        eid = environment_id(env)
        if eid not in self.environments:
            self.environments[eid] = jsonable(env)
            _write_json(self.out / ENVIRONMENTS, self.environments)
        return eid

    def save_case(self, case, case_id: str) -> str:
        rel = f"{CASES}/{case_id}.npz"
        path = self.out / rel
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            case.save(tmp)
            tmp.replace(path)  # atomic: a reproducer is whole or absent
        return rel

    def save_outputs(self, case_id: str, result: BackendResult) -> str:
        """The backend's raw gradients on a case and the per-entry error and bounds of each,
        so a report draws them from the files alone."""
        rel = f"{CASES}/{case_id}--{result.backend}.npz"
        path = self.out / rel
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                np.savez(f, **(result.outputs or {}), **result.entry_arrays())
            tmp.replace(path)
        return rel

    def write(self, record: ResultRecord | dict) -> None:
        d = record.to_dict() if isinstance(record, ResultRecord) else record
        self._file.write(json.dumps(jsonable(d)) + "\n")
        self._file.flush()

    def campaign(self, info: dict) -> None:
        _write_json(self.out / CAMPAIGN, info)

    def close(self) -> None:
        self._file.close()


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=2) + "\n")
    tmp.replace(path)


def read_results(d: Path) -> list[ResultRecord]:
    """The typed result lines of a directory; a torn (unparsable) last line is skipped."""
    path = Path(d) / RESULTS
    if not path.is_file():
        raise DifftestError(f"{d} holds no {RESULTS}: not a difftest result directory")
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            if k == len(lines) - 1:
                break  # torn by a kill: everything before it is whole
            raise DifftestError(f"{path}:{k + 1} is not valid JSON") from None
        try:
            out.append(ResultRecord.from_dict(parsed))
        except (DifftestError, KeyError, TypeError, ValueError) as exc:
            raise DifftestError(f"{path}:{k + 1} is not a difftest result line: {exc}") from None
    return out


def read_environments(d: Path) -> dict:
    p = Path(d) / ENVIRONMENTS
    return json.loads(p.read_text()) if p.is_file() else {}


def read_campaign(d: Path) -> dict:
    p = Path(d) / CAMPAIGN
    return json.loads(p.read_text()) if p.is_file() else {}


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
    """``{backend: {gradient: Cell}}`` over every distinct (case, backend) result, searched or shrunk."""
    table: dict[str, dict[str, Cell]] = defaultdict(lambda: {g: Cell() for g in GRADIENTS})
    seen = set()
    for r in records:
        key = (r.case_id, r.backend)
        if key in seen:
            continue
        seen.add(key)
        for g in GRADIENTS:
            gr = r.gradients[g]
            c = table[r.backend][g]
            c.cases += 1
            c.counts[gr.verdict] += 1
            c.worst_ratio = max(c.worst_ratio, gr.max_ratio)
            c.worst_ratio_order_free = max(c.worst_ratio_order_free, gr.max_ratio_order_free)
    return dict(table)


def findings(records: list[ResultRecord]) -> list[ResultRecord]:
    """Shrunk reproducers, one per (backend, gradient, verdict), worst ratio first."""
    out = [r for r in records if r.phase == "shrunk" and r.finding is not None]
    return sorted(out, key=lambda r: -r.gradients[r.finding.gradient].max_ratio)


def exit_code(records: list[ResultRecord], fail_on: str) -> int:
    """1 when a verdict failing under ``fail_on`` occurred, else 0."""
    return int(any(fails(gr.verdict, fail_on) for r in records for gr in r.gradients.values()))


def merge(dirs: list[Path], out: Path) -> int:
    """Combine result directories (shards, machines, nights) into ``out``; returns the line count."""
    out = Path(out)
    writer = ResultsWriter(out, fresh=True)
    seen: set[tuple] = set()
    n = 0
    campaigns = []
    try:
        for d in dirs:
            d = Path(d)
            records = read_results(d)
            for eid, env in read_environments(d).items():
                writer.environments.setdefault(eid, env)
            for r in records:
                key = (r.case_id, r.backend, r.phase)
                if key in seen:
                    continue
                seen.add(key)
                for rel in (r.case_file, r.outputs_file):
                    if rel:
                        src, dst = d / rel, out / rel
                        if src.is_file() and not dst.exists():
                            shutil.copyfile(src, dst)
                writer.write(r)
                n += 1
            info = read_campaign(d)
            campaigns.extend(info.get("merged_from", [info]) if info else [])
        _write_json(out / ENVIRONMENTS, writer.environments)
        writer.campaign({"merged_from": campaigns, "sources": [str(d) for d in dirs]})
    finally:
        writer.close()
    return n


def format_summary(records: list[ResultRecord], replay_dir=None) -> str:
    """The backend × gradient table: cases, worst ratios, verdict counts; then the findings."""
    lines = []
    header = f"{'backend':<24} {'gradient':<12} {'cases':>6} {'worst_ratio':>11} {'ratio_of':>9}  " + " ".join(
        f"{v:>9}" for v in VERDICTS
    )
    lines += [header, "-" * len(header)]
    for backend, row in summarize(records).items():
        for g, c in row.items():
            counts = " ".join(f"{c.counts[v]:>9}" for v in VERDICTS)
            lines.append(f"{backend:<24} {g:<12} {c.cases:>6} {format_ratio(c.worst_ratio):>11} {format_ratio(c.worst_ratio_order_free):>9}  {counts}")
    found = findings(records)
    if found:
        lines += ["", f"{plural(len(found), 'finding')}, each shrunk to a minimal reproducer:"]
        for r in found:
            f = r.finding
            lines.append("  " + finding_text(f.backend, f.gradient, r.gradients[f.gradient], r.case_file, replay_dir))
        lines.append(f"  ({RATIO_LEGEND})")
    return "\n".join(lines)

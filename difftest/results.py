"""Result directories: ``results.jsonl``, ``cases/``, ``environments.json``, ``campaign.json``.

A result directory is the only thing reports and merges read, so a report can be rebuilt
anywhere from the files alone:

* ``results.jsonl`` — one :class:`~difftest.outcome.ResultRecord` per line, per case and
  backend: ``schema``, ``case_id``, ``backend``, ``format``, ``requested`` and ``gradients``
  (as in ``check --json``: a result per requested gradient), ``geometry``, ``phase``
  (``search`` for cases the search generated, ``shrunk`` for the minimal reproducer of a
  finding), ``seed``, ``shard``, ``timings``, ``environment_id`` and, for non-``pass``
  results, ``case_file`` and ``outputs_file``. Lines are flushed one by one; a torn last line
  (a killed process) is skipped.
* ``cases/<case_id>.npz`` — reproducers, replayable with ``difftest check``;
  ``cases/<case_id>--<backend>.npz`` — the backend's raw gradients ``g`` and, per entry,
  ``g__error``, ``g__bound``, ``g__bound_order_free`` (what a report draws).
* ``environments.json`` — ``{environment_id: environment}``.
* ``campaign.json`` — settings and outcome of the campaign (or of each merged shard).
* ``.lock`` — present while a writer (a run) has the directory open (:mod:`difftest.lock`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DifftestError
from .expectations import EXPECTED, Expectations
from .geometry import GRADIENTS
from .lock import DirectoryInUse, DirectoryLock, holder_text, lock_holder
from .outcome import BackendResult, ResultRecord, environment_id, jsonable
from .verdicts import VERDICTS, worst_verdict

RESULTS = "results.jsonl"
CASES = "cases"
ENVIRONMENTS = "environments.json"
CAMPAIGN = "campaign.json"
class ResultsWriter:
    """Appends result lines as they come (flushed), keeps environments and reproducers.

    Holds the directory's lock (``.lock``) from opening to :meth:`close`: a second writer on the
    same directory raises :class:`DirectoryInUse` naming the holder, before touching anything."""

    def __init__(self, out: Path, fresh: bool = True):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = DirectoryLock(self.out)
        self._lock.acquire()
        self._file = None
        try:
            if fresh:
                for name in (RESULTS, ENVIRONMENTS, CAMPAIGN):
                    (self.out / name).unlink(missing_ok=True)
                shutil.rmtree(self.out / CASES, ignore_errors=True)
            (self.out / CASES).mkdir(exist_ok=True)
            self._file = open(self.out / RESULTS, "a", encoding="utf-8")
            self.environments: dict[str, dict] = read_environments(self.out)
        except BaseException:
            self.close()
            raise

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

    def append(self, d: Path, records: list[ResultRecord], environments: dict, seen: set) -> int:
        """Add another directory's result lines (those whose ``(case, backend, phase)`` is not in
        ``seen``), their case and output files, and its environments; returns the lines added."""
        n = 0
        for eid, env in environments.items():
            self.environments.setdefault(eid, env)
        _write_json(self.out / ENVIRONMENTS, self.environments)
        for r in records:
            key = (r.case_id, r.backend, r.phase)
            if key in seen:
                continue
            seen.add(key)
            for rel in (r.case_file, r.outputs_file):
                if rel:
                    src, dst = Path(d) / rel, self.out / rel
                    if src.is_file() and not dst.exists():
                        shutil.copyfile(src, dst)
            self.write(r)
            n += 1
        return n

    def campaign(self, info: dict) -> None:
        _write_json(self.out / CAMPAIGN, info)

    def close(self) -> None:
        """Close the results file and release the directory's lock (safe to call twice)."""
        try:
            if self._file is not None:
                self._file.close()
        finally:
            self._lock.release()


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


def findings(records: list[ResultRecord]) -> list[ResultRecord]:
    """The findings' reproducers, one per (backend, gradient, verdict), worst ratio first: shrunk,
    or (``phase`` ``unshrunk``) the first case that showed it where shrinking was cut short or off."""
    out = [r for r in records if r.finding is not None]
    return sorted(out, key=lambda r: -r.gradients[r.finding.gradient].max_ratio)


def exit_code(records: list[ResultRecord], fail_on: str, expectations: Expectations | None = None) -> int:
    """1 when a verdict failing under ``fail_on`` occurred that no expectation declares, else 0."""
    e = expectations or Expectations()
    return int(any(e.fails(r, g, fail_on) for r in records for g in r.gradients))


def _overlap(out: Path, dirs: list[Path]) -> str | None:
    """Why ``out`` cannot be the output of merging ``dirs`` (it is one of them, inside one, or holds one)."""
    o = out.resolve()
    for d in dirs:
        r = Path(d).resolve()
        if o == r:
            return f"the output {out} is one of the inputs"
        if r in o.parents:
            return f"the output {out} is inside the input {d}"
        if o in r.parents:
            return f"the output {out} contains the input {d}"
    return None


def merge(dirs: list[Path], out: Path) -> int:
    """Combine result directories (shards, machines, nights) into ``out``; returns the line count.

    Every input is read (and checked) first; the merge is written to a temporary directory next
    to ``out`` and renamed into place when complete, so a failed merge leaves nothing behind and
    an existing ``out`` (a result directory, or empty) is replaced only by a complete one. ``out``
    may not be one of the inputs, inside one or contain one."""
    out = Path(out)
    dirs = [Path(d) for d in dirs]
    why = _overlap(out, dirs)
    if why:
        raise DifftestError(f"{why}: merging would overwrite what it reads; merge into a new directory")
    if out.exists():
        if not out.is_dir():
            raise DifftestError(f"the output {out} is a file, not a directory; choose a directory")
        if any(out.iterdir()) and not (out / RESULTS).is_file():
            raise DifftestError(f"the output {out} exists and is not a difftest result directory (no {RESULTS}); "
                                "choose a new or empty directory (an existing result directory is replaced)")
        holder = lock_holder(out)
        if holder is not None:
            raise DirectoryInUse(f"{out} is in use by a difftest run ({holder_text(holder)}); wait for it to "
                                 "finish or choose another directory")
    sources = [(d, read_results(d), read_environments(d), read_campaign(d)) for d in dirs]

    created = []  # parent directories this merge made, removed again if it fails
    parent = out.absolute().parent
    for p in (parent, *parent.parents):
        if p.exists():
            if not p.is_dir():
                raise DifftestError(f"the output {out}: {p} is a file, not a directory; choose another path")
            break
        created.append(p)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = writer = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging-", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a result directory is an ordinary one
        writer = ResultsWriter(tmp, fresh=True)
        seen: set[tuple] = set()
        n = 0
        campaigns = []
        for d, records, envs, info in sources:
            n += writer.append(d, records, envs, seen)
            campaigns.extend(info.get("merged_from", [info]) if info else [])
        declared = [e for d, *_ in sources for e in Expectations.of_results(d).entries]
        if declared:  # the union of what the inputs were judged with
            union = Expectations(list(dict.fromkeys(declared)), "merged from " + ", ".join(map(str, dirs)))
            _write_json(tmp / EXPECTED, union.to_dict())
        writer.campaign({"merged_from": campaigns, "sources": [str(d) for d in dirs]})
        writer.close()
        _replace_dir(tmp, out)
    except BaseException:
        if writer is not None:
            writer.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # innermost first; only if still empty
            try:
                p.rmdir()
            except OSError:
                break
        raise
    return n


def _replace_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target``, replacing an existing ``target`` only now."""
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}")
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)

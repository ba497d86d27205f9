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
* ``.lock`` — present while a writer (a run) has the directory open: ``{"pid", "host",
  "started", ...}``. A second writer refuses the directory, naming the holder; a lock whose
  process is gone (same host) is taken over.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DifftestError
from .expectations import EXPECTED, Expectations
from .explain import RATIO_LEGEND, counts_text, finding_text, format_ratio, gradient_text, plural, reproduce_command
from .geometry import GRADIENTS
from .outcome import BackendResult, ResultRecord, environment_id, jsonable
from .verdicts import SEVERITY, VERDICTS, worst_verdict

RESULTS = "results.jsonl"
CASES = "cases"
ENVIRONMENTS = "environments.json"
CAMPAIGN = "campaign.json"
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


def _holder_text(holder: dict) -> str:
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
                        f"{self.path.parent} is in use by another difftest run ({_holder_text(holder)}); wait "
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
            raise DirectoryInUse(f"{out} is in use by a difftest run ({_holder_text(holder)}); wait for it to "
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


def summary_doc(records: list[ResultRecord], replay_dir=None, expectations: Expectations | None = None) -> dict:
    """The summary as plain data: ``findings`` (one per distinct key, worst first: ``backend``,
    ``gradient``, ``verdict``, ``max_ratio``, ``max_ratio_order_free``, ``shrunk``, ``expected``
    (the declared reason, or null), ``case_file`` — a path to replay, under ``replay_dir`` when
    given), ``cells`` (``{backend: {gradient: {"cases", "worst_ratio", "worst_ratio_order_free",
    "counts"}}}``) and ``not_seen`` (declared findings that did not show)."""
    e = expectations or Expectations()
    out = []
    for r in findings(records):
        f = r.finding
        gr = r.gradients[f.gradient]
        case_file = r.case_file if r.case_file is None or replay_dir is None else str(Path(replay_dir) / r.case_file)
        expected = e.explain_record(r, f.gradient)
        out.append({"backend": f.backend, "gradient": f.gradient, "verdict": f.verdict, "max_ratio": gr.max_ratio,
                    "max_ratio_order_free": gr.max_ratio_order_free, "shrunk": r.phase == "shrunk",
                    "expected": expected.reason if expected else None, "case_file": case_file})
    cells = {b: {g: {"cases": c.cases, "worst_ratio": c.worst_ratio, "worst_ratio_order_free": c.worst_ratio_order_free,
                     "counts": dict(c.counts)} for g, c in row.items()}
             for b, row in summarize(records).items()}
    return jsonable({"findings": out, "cells": cells, "not_seen": [x.describe() for x in e.not_seen(records)]})


def junit_xml(records: list[ResultRecord], fail_on: str, replay_dir=None, duration_s: float = 0.0,
              properties: dict | None = None, expectations: Expectations | None = None) -> str:
    """JUnit XML: one ``<testcase classname="difftest.<backend>" name="<gradient>">`` per backend ×
    gradient, with a ``<failure>`` (the verdicts, the worst ratios, each finding and the command
    that replays it) where a verdict fails under ``fail_on`` that no expectation declares."""
    import xml.etree.ElementTree as ET

    e = expectations or Expectations()
    table = summarize(records)
    failing = {(r.backend, g) for r in records for g in r.gradients if e.fails(r, g, fail_on)}
    suite = ET.Element("testsuite", name="difftest", tests=str(3 * len(table)), failures=str(len(failing)),
                       errors="0", skipped="0", time=f"{duration_s:.3f}")
    if properties:
        props = ET.SubElement(suite, "properties")
        for k, v in properties.items():
            ET.SubElement(props, "property", name=str(k), value=str(v))
    shrunk = findings(records)
    for backend, row in table.items():
        for g, c in row.items():
            tc = ET.SubElement(suite, "testcase", classname=f"difftest.{backend}", name=g)
            summary = (f"{backend} {g}: {plural(c.cases, 'case')}, verdicts {counts_text(c.counts)}; worst ratio "
                       f"{format_ratio(c.worst_ratio)} (TorchLean), {format_ratio(c.worst_ratio_order_free)} (order-free)")
            if (backend, g) not in failing:
                ET.SubElement(tc, "system-out").text = summary
                continue
            lines = [summary]
            mine = [r for r in shrunk if r.finding.backend == backend and r.finding.gradient == g
                    and e.fails(r, g, fail_on)]
            for r in mine:
                lines += ["shrunk " + gradient_text(backend, g, r.gradients[g]),
                          "    " + finding_text(backend, g, r.gradients[g], r.case_file, replay_dir).split("\n")[-1].strip()]
            if not mine:  # no shrunk reproducer (e.g. interrupted): the worst searched case
                bad = [r for r in records if r.backend == backend and e.fails(r, g, fail_on)]
                worst = max(bad, key=lambda r: (SEVERITY[r.gradients[g].verdict], r.gradients[g].max_ratio))
                lines.append(gradient_text(backend, g, worst.gradients[g]))
                if worst.case_file:
                    path = Path(replay_dir) / worst.case_file if replay_dir else worst.case_file
                    lines.append("    reproduce: " + reproduce_command(path, backend))
            verdict = worst_verdict(r.gradients[g].verdict for r in records
                                    if r.backend == backend and e.fails(r, g, fail_on))
            failure = ET.SubElement(tc, "failure", type=verdict, message=summary)
            failure.text = "\n".join(lines)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def format_summary(records: list[ResultRecord], replay_dir=None, expectations: Expectations | None = None) -> str:
    """The backend × gradient table: cases, worst ratios, verdict counts; then the findings (those an
    expectation declares marked with its reason) and the declared findings not seen any more."""
    e = expectations or Expectations()
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
        shrunk = sum(r.phase == "shrunk" for r in found)
        expected = [e.explain_record(r, r.finding.gradient) for r in found]
        how = ("each shrunk to a minimal reproducer" if shrunk == len(found) else
               f"{shrunk} shrunk to a minimal reproducer, {len(found) - shrunk} the first case that showed it")
        n_expected = sum(x is not None for x in expected)
        lines += ["", f"{plural(len(found), 'finding')}, {how}" + (f"; {n_expected} expected" if n_expected else "") + ":"]
        for r, x in zip(found, expected):
            f = r.finding
            lines.append("  " + finding_text(f.backend, f.gradient, r.gradients[f.gradient], r.case_file, replay_dir))
            if x is not None:
                lines.append(f"    expected: {x.reason}")
        lines.append(f"  ({RATIO_LEGEND})")
    gone = e.not_seen(records)
    if gone:
        lines += ["", f"expected findings not seen any more (fix or remove them in {e.source}):"]
        lines += [f"  {x.describe()}" for x in gone]
    return "\n".join(lines)

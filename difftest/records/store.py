"""The result store: a result directory's layout, its one writer and recorder, its readers and merge.

A result directory is what reports and merges read, so a report can be rebuilt anywhere from the
files alone. Every name in it is defined here:

* ``results.jsonl`` — one :class:`~difftest.outcome.ResultRecord` per line, per case and backend
  (one per finding of it: a line names at most one finding), flushed one by one;
* ``cases/<case_id>.npz`` — reproducers, replayable with ``difftest check``: every case with a
  non-``pass`` result, and the case a backend was running when the run died (written before the
  backends run); ``cases/<case_id>--<backend>.npz`` — a result's raw gradients ``g`` and, per
  entry, ``g__error``, ``g__bound``, ``g__bound_order_free`` (what a report draws);
  ``cases/<layer>.npz`` — a ``difftest model`` layer;
* ``environments.json`` (``{environment_id: environment}``), ``campaign.json`` (settings, status,
  duration, counts), ``expected.json`` (the declarations a run was judged with), ``model.json``
  (``difftest model``'s layers), ``fingerprints.json`` (``difftest fingerprint``, with evidence
  cases under ``<backend>/``), ``report.html``;
* ``.lock`` (:mod:`difftest.lock`) while a run writes it; ``.jobs/job-<k>/`` while a parallel
  campaign's jobs write theirs (:mod:`difftest.jobs`).

**Writing.** :class:`StoreWriter` holds the directory's lock from opening to :meth:`~StoreWriter.close`,
released on every exit path. A directory that holds an earlier run is not silently replaced: the
earlier run is moved aside to ``<DIR>.previous`` (one generation: an older ``.previous`` is
replaced) unless ``overwrite`` is given. A stale ``.jobs/`` left by a killed run is salvaged into
that run's results and removed. Every write that fails names its path. :class:`Recorder` is the
one recorder of campaigns and ``difftest model``.

**Reading.** A result directory is untrusted data (artifacts from CI runners). Every path read
from it must be a relative path that resolves inside it (no absolute path, no ``..``, no symbolic
link leading out), and every line and side file is type-checked. Anything else raises
:class:`~difftest.errors.MalformedResults` — ``FILE:LINE: why`` — and nothing is written.
Nothing read is ever executed (``allow_pickle=False`` for arrays).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DifftestError, MalformedResults
from .expectations import Expectations
from .lock import LOCK, DirectoryInUse, DirectoryLock, holder_text, lock_holder
from ..values.outcome import (BackendResult, FindingKey, ResultRecord, environment_id, flag, geometry_of, integer, jsonable,
                      listing, mapping, name_text, number, optional, shard_text, text)
from .results import choose_findings, findings
from ..values.verdicts import is_finding

RESULTS = "results.jsonl"
CASES = "cases"
ENVIRONMENTS = "environments.json"
CAMPAIGN = "campaign.json"
EXPECTED = "expected.json"
MODEL = "model.json"
FINGERPRINTS = "fingerprints.json"
REPORT = "report.html"
JOBS = ".jobs"
PREVIOUS_SUFFIX = ".previous"

#: A run's own entries: what is moved aside (or removed) when the directory is written anew.
RUN_ENTRIES = (RESULTS, CASES, ENVIRONMENTS, CAMPAIGN, EXPECTED, MODEL, FINGERPRINTS, REPORT, JOBS)
#: Files whose presence makes a directory hold a run.
RUN_MARKERS = (RESULTS, CAMPAIGN, MODEL)

#: How a campaign ended (``campaign.json`` ``status``); anything but ``complete`` did not finish.
STATUSES = ("running", "complete", "interrupted", "crashed")


# --- paths ---------------------------------------------------------------------------------------

def confined(root, rel, where: str) -> Path:
    """``root/rel`` where ``rel`` is a relative path that resolves inside ``root`` (symbolic links
    followed); :class:`MalformedResults` saying ``where`` otherwise."""
    if not isinstance(rel, str):
        raise MalformedResults(f"{where}: a path must be a string, got {type(rel).__name__}")
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise MalformedResults(f"{where}: {rel[:80]!r} is not a relative path inside the result directory "
                               "(absolute paths, '..' and empty parts are refused)")
    root = Path(root)
    real_root = root.resolve()
    target = (root / rel).resolve()
    if target != real_root and real_root not in target.parents:
        raise MalformedResults(f"{where}: {rel[:80]!r} leads outside the result directory (through a symbolic link)")
    return root / rel


def _file(d: Path, name: str) -> Path | None:
    """The regular file ``d/name`` (confined), or None when absent."""
    path = confined(d, name, str(Path(d) / name))
    if not path.exists():
        return None
    if not path.is_file():
        raise MalformedResults(f"{path}: not a regular file")
    return path


def _json(d: Path, name: str):
    """The parsed JSON of ``d/name`` (None when absent); :class:`MalformedResults` when it is not JSON."""
    path = _file(Path(d), name)
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedResults(f"{path}: not valid JSON ({str(exc)[:120]})") from None


def _checked(path, check, value):
    """``check(value)``, its error named after ``path``."""
    try:
        return check(value)
    except MalformedResults:
        raise
    except (DifftestError, KeyError, TypeError, ValueError) as exc:
        raise MalformedResults(f"{path}: {exc}") from None


# --- reading -------------------------------------------------------------------------------------

def _record_paths(d: Path, r: ResultRecord, where: str) -> None:
    for key in ("case_file", "outputs_file"):
        if getattr(r, key) is not None:
            confined(d, getattr(r, key), f"{where}: {key}")
    if r.largest_case is not None:
        confined(d, r.largest_case["case_file"], f"{where}: largest_case.case_file")


def read_results(d) -> list[ResultRecord]:
    """The typed lines of ``d/results.jsonl``, every field and path checked; a torn last line (a
    killed writer) is skipped. :class:`MalformedResults` names the first bad ``FILE:LINE``."""
    d = Path(d)
    path = _file(d, RESULTS)
    if path is None:
        raise MalformedResults(f"{d} holds no {RESULTS}: not a difftest result directory")
    out = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    last = max((k for k, line in enumerate(lines) if line.strip()), default=-1)
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"{path}:{k + 1}"
        try:
            parsed = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError):
            if k == last:
                break  # torn by a kill: everything before it is whole
            raise MalformedResults(f"{where}: not valid JSON") from None
        try:
            record = ResultRecord.from_dict(parsed)
        except (DifftestError, KeyError, TypeError, ValueError) as exc:
            raise MalformedResults(f"{where}: not a difftest result line: {exc}") from None
        _record_paths(d, record, where)
        out.append(record)
    return out


def read_environments(d) -> dict[str, dict]:
    """``{environment_id: environment}`` ({} when absent)."""
    data = _json(d, ENVIRONMENTS)
    path = Path(d) / ENVIRONMENTS
    if data is None:
        return {}
    return _checked(path, lambda v: {name_text(k, "an environment id"): mapping(e, f"environment {k}")
                                     for k, e in mapping(v, "environments.json").items()}, data)


def _str_numbers(v, name):
    return {text(k, name): number(x, f"{name}.{k}") for k, x in mapping(v, name).items()}


def _str_counts(v, name):
    return {name_text(k, name): integer(x, f"{name}.{k}", 0) for k, x in mapping(v, name).items()}


def _group_info(v, name):
    mapping(v, name)
    return {"label": text(v.get("label"), f"{name}.label"),
            "backends": listing(v.get("backends"), f"{name}.backends", name_text),
            "real_layer_share": number(v.get("real_layer_share"), f"{name}.real_layer_share"),
            "case_seconds": number(v.get("case_seconds"), f"{name}.case_seconds")}


#: ``campaign.json``'s fields and their checks; a field a run did not write reads as None.
_CAMPAIGN_FIELDS = {
    "version": text, "profile": text, "limits": mapping, "realistic": number, "max_macs": integer,
    "examples_per_round": integer, "rounds": optional(integer), "time_budget_s": optional(number),
    "seed": optional(integer), "shard": shard_text, "backends": lambda v, n: listing(v, n, name_text),
    "formats": lambda v, n: listing(v, n, text), "database": optional(text), "jobs": integer, "shrink": flag,
    "stop_on": lambda v, n: listing(v, n, text), "started": text, "finished": text, "status": text,
    "duration_s": optional(number), "cases": lambda v, n: integer(v, n, 0), "draws": lambda v, n: integer(v, n, 0),
    "findings": lambda v, n: integer(v, n, 0), "stopped_on": optional(mapping), "first_seen_s": _str_numbers,
    "job_runs": lambda v, n: listing(v, n, mapping), "sources": lambda v, n: listing(v, n, text),
    "model": text, "input_shape": lambda v, n: listing(v, n, integer), "backend_timeout_s": optional(number),
    "isolate": flag, "error": text, "previous": text,
    "groups": lambda v, n: listing(v, n, _group_info), "cases_per_backend": _str_counts,
    "scheduler": text, "too_large": lambda v, n: integer(v, n, 0),
}


def campaign_info(v, name: str = "campaign.json", nested: bool = False) -> dict:
    """A campaign's settings and outcome, checked; every known field present (None where not written),
    unknown ones dropped. A merge's info holds its sources' infos (``merged_from``)."""
    mapping(v, name)
    out = {k: (None if v.get(k) is None else check(v[k], f"{name}.{k}")) for k, check in _CAMPAIGN_FIELDS.items()}
    if "merged_from" in v:
        if nested:
            raise DifftestError(f"{name}.merged_from: a merged campaign cannot hold merged campaigns")
        out["merged_from"] = [campaign_info(x, f"{name}.merged_from[{i}]", nested=True)
                              for i, x in enumerate(listing(v["merged_from"], f"{name}.merged_from"))]
    return out


def read_campaign(d) -> dict:
    """``campaign.json``, checked (:func:`campaign_info`); {} when absent."""
    data = _json(d, CAMPAIGN)
    return {} if data is None else _checked(Path(d) / CAMPAIGN, campaign_info, data)


def campaigns_of(info: dict) -> list[dict]:
    """The campaigns a directory's info stands for: its sources' for a merge, else itself ([] for none)."""
    if not info:
        return []
    return info["merged_from"] if "merged_from" in info else [info]


def read_expected(d) -> Expectations:
    """The expectations a run was judged with (``expected.json``; empty when absent)."""
    data = _json(d, EXPECTED)
    if data is None:
        return Expectations()
    path = str(Path(d) / EXPECTED)
    source = data.get("source") if isinstance(data, dict) else None
    return _checked(path, lambda v: Expectations.from_data(v, source if isinstance(source, str) and source else path,
                                                           path), data)


def _model_layer(d: Path, where: str):
    def check(v, name):
        mapping(v, name)
        case_file = optional(text)(v.get("case_file"), f"{name}.case_file")
        if case_file is not None:
            confined(d, case_file, f"{where}: {name}.case_file")
        return {"name": name_text(v.get("name"), f"{name}.name"), "skipped": text(v.get("skipped", ""), f"{name}.skipped"),
                "case_file": case_file, "geometry": optional(geometry_of)(v.get("geometry"), f"{name}.geometry"),
                "extensions": listing(v.get("extensions", []), f"{name}.extensions", text),
                "macs": optional(integer)(v.get("macs"), f"{name}.macs"),
                "seconds": number(v.get("seconds", 0.0), f"{name}.seconds")}
    return check


def read_model(d) -> dict:
    """``model.json`` of a ``difftest model`` directory, checked ({} for any other directory)."""
    d = Path(d)
    data = _json(d, MODEL)
    if data is None:
        return {}
    path = d / MODEL

    def check(v):
        mapping(v, "model.json")
        return {"model": text(v.get("model"), "model"), "input_shape": listing(v.get("input_shape"), "input_shape", integer),
                "seed": integer(v.get("seed"), "seed"), "convolutions": integer(v.get("convolutions"), "convolutions", 0),
                "round_inputs": flag(v.get("round_inputs", True), "round_inputs"),
                "layers": listing(v.get("layers"), "layers", _model_layer(d, str(path)))}
    return _checked(path, check, data)


#: A fingerprint claim's fields (``difftest.fingerprint.FIELDS``) and their checks.
_CLAIMS = {"product_bits": optional(integer), "accumulator_bits": optional(integer), "rounding": optional(text),
           "fma": optional(flag), "subnormal_inputs": optional(text), "subnormal_outputs": optional(text),
           "order": optional(text), "block": optional(integer), "deterministic": optional(flag),
           "error_scaling": optional(text)}


def read_fingerprints(d) -> dict:
    """``fingerprints.json`` (``{"backends": [...], "failed": [...]}``), checked, evidence paths
    confined; {} when absent."""
    d = Path(d)
    data = _json(d, FINGERPRINTS)
    if data is None:
        return {}
    path = d / FINGERPRINTS

    def claims(v, name):
        mapping(v, name)
        out = {k: check(v.get(k), f"{name}.{k}") for k, check in _CLAIMS.items()}
        evidence = mapping(v.get("evidence", {}), f"{name}.evidence")
        for k, rel in evidence.items():
            confined(d, rel, f"{path}: {name}.evidence.{k}")
        notes = {text(k, f"{name}.notes"): text(x, f"{name}.notes.{k}") for k, x in mapping(v.get("notes", {}), f"{name}.notes").items()}
        return out | {"evidence": evidence, "notes": notes}

    def backend(v, name):
        mapping(v, name)
        return {"backend": name_text(v.get("backend"), f"{name}.backend"), "format": text(v.get("format", ""), f"{name}.format"),
                "geometry": geometry_of(v.get("geometry", {}), f"{name}.geometry"),
                "gradients": {name_text(g, f"{name}.gradients"): claims(c, f"{name}.gradients.{g}")
                              for g, c in mapping(v.get("gradients"), f"{name}.gradients").items()}}
    def failure(v, name):
        mapping(v, name)
        return {"backend": name_text(v.get("backend"), f"{name}.backend"), "reason": text(v.get("reason"), f"{name}.reason")}

    return _checked(path, lambda v: {"backends": listing(mapping(v, "fingerprints.json").get("backends"), "backends",
                                                          backend),
                                     "failed": listing(v.get("failed", []), "failed", failure)}, data)


def holds_run(d) -> bool:
    """Whether directory ``d`` holds a run's results (so writing it anew would replace them)."""
    d = Path(d)
    return any((d / n).exists() for n in RUN_MARKERS)


# --- writing -------------------------------------------------------------------------------------

def _named(exc: OSError, path) -> OSError:
    """``exc`` naming ``path`` (a write on an open file raises without a file name)."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def write_json(path: Path, data) -> None:
    """``data`` as JSON at ``path``, replaced atomically (whole or absent)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(jsonable(data), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _named(exc, path) from None


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _named(exc, path) from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def file_name(name: str) -> str:
    """A name (a backend's) as a portable file name: a spec's ``:``, a ``/`` become ``_``."""
    return "".join(c if c.isalnum() or c in "-_.@=," else "_" for c in name)


def line_key(r: ResultRecord) -> tuple:
    """What makes a result line distinct: its case, backend, phase and finding."""
    return (r.case_id, r.backend, r.phase, r.finding)


def _previous_entries(d: Path) -> list[Path]:
    """The entries of the run in ``d``: its files, and the evidence folder of each backend its
    ``fingerprints.json`` names (``<backend>/``; nothing else of the directory is touched)."""
    entries = [d / n for n in RUN_ENTRIES if (d / n).exists() or (d / n).is_symlink()]
    try:
        named = {d / file_name(fp["backend"]) for fp in read_fingerprints(d).get("backends", [])}
    except DifftestError:
        named = set()  # unreadable: its evidence folders stay where they are
    return entries + sorted(p for p in named if p.is_dir() and not p.is_symlink() and p not in entries)


def _salvage_jobs(d: Path) -> None:
    """Lines a killed parallel run's jobs wrote but the run did not collect (at most its last half
    second): appended to its results, with their files; then ``.jobs/`` is removed."""
    jobs = d / JOBS
    try:
        if (d / RESULTS).is_file():
            seen = {line_key(r) for r in read_results(d)}
            envs = read_environments(d)
            with open(d / RESULTS, "a", encoding="utf-8") as out:
                for job in sorted(p for p in jobs.iterdir() if p.is_dir()):
                    if not (job / RESULTS).is_file():
                        continue
                    envs |= read_environments(job)
                    for r in read_results(job):
                        if line_key(r) not in seen:
                            seen.add(line_key(r))
                            _copy_files(job, d, r)
                            out.write(json.dumps(jsonable(r.to_dict())) + "\n")
            write_json(d / ENVIRONMENTS, envs)
    except (DifftestError, OSError):
        pass  # a damaged leftover of a dead run: what the run itself collected stands
    shutil.rmtree(jobs, ignore_errors=True)


def _copy_files(src: Path, dst: Path, r: ResultRecord) -> None:
    """Copy the files a record names from result directory ``src`` to ``dst`` (paths checked)."""
    rels = [r.case_file, r.outputs_file] + ([r.largest_case["case_file"]] if r.largest_case else [])
    for rel in rels:
        if not rel:
            continue
        s = confined(src, rel, f"{src}: {rel}")
        t = dst / rel
        if s.is_file() and not t.exists():
            _mkdir(t.parent)
            try:
                shutil.copyfile(s, t)
            except OSError as exc:
                raise _named(exc, t) from None


def _previous_of(d: Path) -> Path:
    """``<d>.previous``, where the run in ``d`` is kept when ``d`` is written anew; an older previous
    run there is replaced, anything else is refused."""
    prev = d.with_name(d.name + PREVIOUS_SUFFIX)
    if prev.exists() and not (prev.is_dir() and (holds_run(prev) or not any(prev.iterdir()))):
        raise DifftestError(f"cannot keep the previous results of {d} aside: {prev} exists and is not a difftest "
                            "result directory; move it away, or pass --overwrite to replace the previous results")
    return prev


def _keep_aside(d: Path, entries: list[Path]) -> Path:
    """Move ``entries`` (a run in ``d``) to ``<d>.previous``, replacing an older previous run."""
    prev = _previous_of(d)
    tmp = d.with_name(f"{d.name}{PREVIOUS_SUFFIX}.tmp-{secrets.token_hex(4)}")
    try:
        tmp.mkdir()
        for e in entries:
            e.rename(tmp / e.name)
        if prev.exists():
            shutil.rmtree(prev)
        tmp.rename(prev)
    except OSError as exc:
        raise _named(exc, prev) from None
    return prev


def _fresh(d: Path, overwrite: bool) -> Path | None:
    """Make ``d`` (locked by the caller) ready for a new run; returns where the previous run went."""
    if (d / JOBS).is_dir():
        _salvage_jobs(d)
    entries = _previous_entries(d)
    if holds_run(d) and not overwrite:
        return _keep_aside(d, entries)
    for e in entries:
        try:
            _remove(e)
        except OSError as exc:
            raise _named(exc, e) from None
    return None


class StoreWriter:
    """Writes one result directory: result lines as they come (flushed), case and output files,
    environments, side files. Holds the directory's lock (``.lock``) from opening to :meth:`close`;
    a second writer raises :class:`~difftest.lock.DirectoryInUse` naming the holder, before touching
    anything. ``previous``: where the run that was there was kept (None: there was none, or
    ``overwrite``)."""

    def __init__(self, out, overwrite: bool = False):
        self.out = Path(out)
        _mkdir(self.out)
        self._lock = DirectoryLock(self.out)
        self._lock.acquire()
        self._file = None
        self.previous: Path | None = None
        self.environments: dict[str, dict] = {}
        try:
            self.previous = _fresh(self.out, overwrite)
            _mkdir(self.out / CASES)
            try:
                self._file = open(self.out / RESULTS, "a", encoding="utf-8")
            except OSError as exc:
                raise _named(exc, self.out / RESULTS) from None
        except BaseException:
            self.close()
            raise

    def environment(self, env: dict) -> str:
        eid = environment_id(env)
        if eid not in self.environments:
            self.environments[eid] = jsonable(env)
            write_json(self.out / ENVIRONMENTS, self.environments)
        return eid

    def _npz(self, rel: str, write) -> str:
        """Write ``rel`` once, atomically (whole or absent), with ``write(temporary path)``."""
        path = self.out / rel
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            try:
                write(tmp)
                tmp.replace(path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise _named(exc, path) from None
        return rel

    def save_case(self, case, name: str | None = None) -> str:
        """``cases/<case_id>.npz`` (or ``cases/<name>``); the path relative to the directory."""
        return self._npz(f"{CASES}/{name or case.case_id + '.npz'}", case.save)

    def save_outputs(self, case_id: str, result: BackendResult) -> str:
        """The backend's raw gradients on a case and the per-entry error and bounds of each."""
        def write(path):
            with open(path, "wb") as f:
                np.savez(f, **(result.outputs or {}), **result.entry_arrays())
        return self._npz(f"{CASES}/{file_name(case_id)}--{file_name(result.backend)}.npz", write)

    def write(self, record: ResultRecord) -> None:
        try:
            self._file.write(json.dumps(jsonable(record.to_dict())) + "\n")
            self._file.flush()
        except OSError as exc:
            raise _named(exc, self.out / RESULTS) from None

    def append(self, src: Path, records: list[ResultRecord], environments: dict, seen: set) -> list[ResultRecord]:
        """Add another directory's result lines whose :func:`line_key` is not in ``seen``, with their
        files and environments; returns the lines added."""
        for eid, env in environments.items():
            if eid not in self.environments:
                self.environments[eid] = env
                write_json(self.out / ENVIRONMENTS, self.environments)
        added = []
        for r in records:
            if line_key(r) in seen:
                continue
            seen.add(line_key(r))
            _copy_files(Path(src), self.out, r)
            self.write(r)
            added.append(r)
        return added

    def campaign(self, info: dict) -> None:
        write_json(self.out / CAMPAIGN, info)

    def side_file(self, name: str, data) -> None:
        """``expected.json``, ``model.json``, ``fingerprints.json``: written whole."""
        write_json(self.out / name, data)

    def close(self) -> None:
        """Close the results file and release the directory's lock (safe to call twice; the lock is
        released even when the close fails)."""
        try:
            if self._file is not None:
                f, self._file = self._file, None
                try:
                    f.close()
                except OSError as exc:
                    raise _named(exc, self.out / RESULTS) from None
        finally:
            self._lock.release()


class Recorder:
    """The one recorder of campaigns and ``difftest model``: typed results in; result lines, case
    files and raw outputs out, as they come. Nothing is buffered: a line is on disk when
    :meth:`record` returns.

    ``outputs``: ``"non-pass"`` saves every non-``pass`` result's raw outputs (a campaign's small
    cases); ``"findings"`` only a finding's (a model's layers are large)."""

    def __init__(self, out, seed: int | None = None, shard=(1, 1), expectations: Expectations | None = None,
                 overwrite: bool = False, outputs: str = "non-pass"):
        self.writer = StoreWriter(out, overwrite=overwrite)
        try:
            if expectations is not None and expectations.entries:
                self.writer.side_file(EXPECTED, expectations.to_dict())
        except BaseException:
            self.writer.close()
            raise
        self.out, self.seed, self.shard, self.outputs = Path(out), seed, f"{shard[0]}/{shard[1]}", outputs
        self._env_ids: dict[str, str] = {}
        self._pending: dict[str, str] = {}  # case id -> its file, written before its backends ran

    @property
    def previous(self) -> Path | None:
        return self.writer.previous

    def keep_case(self, case, name: str | None = None, pending: bool = True) -> str:
        """Write the case file before its backends run, so a run that dies keeps the case it was on.
        ``pending``: removed again when every result passes (:meth:`record`)."""
        existed = (self.out / CASES / (name or case.case_id + ".npz")).exists()
        rel = self.writer.save_case(case, name)
        if pending and not existed:  # a file an earlier line names is never removed
            self._pending[case.case_id] = rel
        return rel

    def record(self, case, results, phase: str, round_no: int | None = None, findings=(),
               largest_case: dict | None = None, case_file: str | None = None) -> str | None:
        """One line per backend result on ``case`` (one per finding of that backend in ``findings``);
        the case file where a result is not ``pass`` (``case_file``: already written there), raw
        outputs as ``outputs`` says. Returns the case file, or None when all passed."""
        failed = any(is_finding(r.verdict) for r in results)
        pending = self._pending.pop(case.case_id, None)
        if failed:
            rel = case_file or pending or self.writer.save_case(case)
        else:
            if pending is not None:  # written before its backends ran, and every one passed
                (self.out / pending).unlink(missing_ok=True)
            rel = case_file
        for r in results:
            if r.backend not in self._env_ids:
                self._env_ids[r.backend] = self.writer.environment(r.environment)
            keys = [k for k in findings if k.backend == r.backend] or [None]
            for key in keys:
                rec = ResultRecord.of(
                    r, case.case_id, case.geometry.as_dict(), phase=phase, seed=self.seed, shard=self.shard,
                    round=round_no, environment_id=self._env_ids[r.backend], finding=key, largest_case=largest_case,
                    timings={"backend_s": r.seconds,
                             "model_s": sum(r.timings.get(k, 0.0) for k in ("exact_s", "nf_and_torchlean_s", "order_free_s")),
                             **r.timings})
                if is_finding(r.verdict) or phase == "layer":
                    rec.case_file = rel
                save = key is not None if self.outputs == "findings" else is_finding(r.verdict)
                if save and r.outputs is not None:
                    rec.outputs_file = self.writer.save_outputs(case.case_id, r)
                self.writer.write(rec)
        return rel if failed else None

    def campaign(self, info: dict) -> None:
        self.writer.campaign(info)

    def side_file(self, name: str, data) -> None:
        self.writer.side_file(name, data)

    def close(self, keep_pending: bool = False) -> None:
        """Close the writer (the lock is released on every path). Case files written before their
        backends ran that no line names (the run ended before they answered) are removed, unless
        ``keep_pending``: a run that crashed keeps the case it was on."""
        try:
            if not keep_pending:
                for rel in self._pending.values():
                    (self.out / rel).unlink(missing_ok=True)
            self._pending.clear()
        finally:
            self.writer.close()


# --- merge ---------------------------------------------------------------------------------------

@dataclass
class Merged:
    """What :func:`merge` wrote."""

    out: Path
    lines: int
    findings: int
    previous: Path | None = None
    sources: list = field(default_factory=list)


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


def _merged_campaign(infos: list[dict], sources: list[str], records: list[ResultRecord]) -> dict:
    campaigns = [c for info in infos for c in campaigns_of(info)]
    first: dict[str, float] = {}
    for c in campaigns:
        for key, s in (c.get("first_seen_s") or {}).items():
            first[key] = min(s, first.get(key, s))
    statuses = [c.get("status") or "unknown" for c in campaigns]
    return {"merged_from": campaigns, "sources": sources, "findings": len(findings(records)),
            "cases": len({r.case_id for r in records if r.phase in ("search", "layer")}),
            "first_seen_s": dict(sorted(first.items())),
            "status": "complete" if statuses and all(s == "complete" for s in statuses) else "incomplete"}


def merge(dirs, out, overwrite: bool = False) -> Merged:
    """Combine result directories (shards, machines, nights) into ``out``.

    Every input is read and checked first (paths, lines, every side file); the merge is written to a
    temporary directory next to ``out`` and renamed into place when complete, so a failed merge
    leaves nothing behind. Lines are deduplicated (:func:`line_key`), and findings by ``(backend,
    gradient, verdict)``: the smallest reproducer stands (:func:`difftest.results.findings`), the
    others stay as ordinary lines, and the earliest ``first_seen_s`` is kept. An existing result
    directory at ``out`` is kept aside (``<out>.previous``) unless ``overwrite``. ``out`` may not be
    one of the inputs, inside one or contain one."""
    out = Path(out)
    dirs = [Path(d) for d in dirs]
    why = _overlap(out, dirs)
    if why:
        raise DifftestError(f"{why}: merging would overwrite what it reads; merge into a new directory")
    if out.exists():
        if not out.is_dir():
            raise DifftestError(f"the output {out} is a file, not a directory; choose a directory")
        if any(out.iterdir()) and not holds_run(out):
            raise DifftestError(f"the output {out} exists and is not a difftest result directory (no {RESULTS}); "
                                "choose a new or empty directory (an existing result directory is kept aside)")
        holder = lock_holder(out)
        if holder is not None:
            raise DirectoryInUse(f"{out} is in use by a difftest run ({holder_text(holder)}); wait for it to "
                                 "finish or choose another directory")
    sources = []
    for d in dirs:
        if not d.is_dir():
            raise DifftestError(f"{d} is not a directory: give result directories to merge")
        sources.append((d, read_results(d), read_environments(d), read_campaign(d), read_expected(d)))
        read_model(d), read_fingerprints(d)  # not merged, but checked: an input is trusted whole or not at all

    chosen = choose_findings([r for _, records, *_ in sources for r in records])  # key -> the line that stands
    keep_ids = {id(r) for r in chosen.values()}
    created = []  # parent directories this merge made, removed again if it fails
    parent = out.absolute().parent
    for p in (parent, *parent.parents):
        if p.exists():
            if not p.is_dir():
                raise DifftestError(f"the output {out}: {p} is a file, not a directory; choose another path")
            break
        created.append(p)
    _mkdir(parent)
    tmp = writer = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging-", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a result directory is an ordinary one
        writer = StoreWriter(tmp, overwrite=True)
        seen: set[tuple] = set()
        written = []
        for d, records, envs, _, _ in sources:
            mine = []
            for r in records:
                if r.finding is not None and id(r) not in keep_ids:
                    r = dataclasses.replace(r, finding=None)  # another copy stands for this finding
                mine.append(r)
            written += writer.append(d, mine, envs, seen)
        declared = [e for *_, expected in sources for e in expected.entries]
        if declared:  # the union of what the inputs were judged with
            union = Expectations(list(dict.fromkeys(declared)), "merged from " + ", ".join(map(str, dirs)))
            writer.side_file(EXPECTED, union.to_dict())
        info = _merged_campaign([info for *_, info, _ in sources], [str(d) for d in dirs], written)
        writer.campaign(info)
        writer.close()
        previous = _replace_dir(tmp, out, overwrite)
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
    return Merged(out, len(written), info["findings"], previous, [str(d) for d in dirs])


def _replace_dir(new: Path, target: Path, overwrite: bool) -> Path | None:
    """Put directory ``new`` at ``target``; an existing run there is kept aside unless ``overwrite``
    (then removed only once ``new`` is in place)."""
    if not target.exists():
        new.rename(target)
        return None
    keep = holds_run(target) and not overwrite
    if keep:
        aside = _previous_of(target)
        _remove(aside)
    else:
        aside = target.with_name(f".{target.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}")
    target.rename(aside)
    try:
        new.rename(target)
    except BaseException:
        aside.rename(target)
        raise
    if not keep:
        shutil.rmtree(aside, ignore_errors=True)
    return aside if keep else None

"""Parallel campaigns: groups of backends searched in separate processes, one result directory.

``difftest run --jobs N`` deals the campaign's groups (:class:`difftest.search.Group`: one
format and geometry each) to ``N`` processes, balancing their estimated cost per case (started with
``spawn``: no state shared with the parent, torch and numba start clean). Each job is an
ordinary campaign over its groups, with the same seeds as a sequential run, its backends in
worker processes of its own (:mod:`difftest.isolation`), writing into ``OUT/.jobs/job-<k>/``; the
parent appends their result lines, reproducers and environments to ``OUT`` as they arrive
(every half second) and at the end removes the job directories. A parent killed before that
leaves ``.jobs/``: the next run on ``OUT`` salvages the lines it had not collected into that
run's results (:mod:`difftest.store`). Ctrl-C reaches every job; each stops and keeps
what it has, like a sequential campaign. A job searches its groups with the whole time budget
(the jobs run side by side), so a parallel run searches more cases in the same time; bounded by
work (``--examples``/``--rounds``), it searches the same cases.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from ..errors import DifftestError
from ..values.outcome import ResultRecord
from ..records.store import JOBS, RESULTS, read_campaign, read_environments

POLL_S = 0.5


#: Thread pools of the numeric libraries, each sized to the job's share of the cores (a spawned
#: process reads them when it starts; torch records its thread count in the environment).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@contextlib.contextmanager
def _environment(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def plan(groups: list, jobs: int) -> list[list]:
    """The groups per job: the costliest per case first (``Group.cost``), each to the job whose
    groups cost least per case together, so that every job's groups get comparable numbers of
    cases in the same time."""
    loads: list[list] = [[] for _ in range(min(jobs, len(groups)))]
    weight = [0.0] * len(loads)
    for group in sorted(groups, key=lambda g: -g.cost):
        k = weight.index(min(weight))
        loads[k].append(group)
        weight[k] += group.cost
    return loads


def _watch_parent(parent: int) -> None:
    """End this job when the parent campaign is gone (killed): nobody would read its results."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _job(work, spec: dict) -> None:
    """A job process: watch the parent, then ``work(spec)`` (a campaign over some groups); Ctrl-C
    ends it with 130."""
    threading.Thread(target=_watch_parent, args=(spec.pop("parent"),), daemon=True).start()
    try:
        work(spec)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


class _Tail:
    """New whole lines of a job's results.jsonl since the last read."""

    def __init__(self, directory: Path):
        self.directory, self.offset, self.partial = directory, 0, b""

    def new_records(self) -> list[ResultRecord]:
        path = self.directory / RESULTS
        if not path.is_file():
            return []
        with open(path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [ResultRecord.from_dict(json.loads(line)) for line in lines if line.strip()]

    def environments(self) -> dict:
        try:
            return read_environments(self.directory)
        except DifftestError:  # being replaced right now: next time
            return {}


def run_jobs(campaign, groups: list, jobs: int, work) -> dict:
    """Search ``groups`` in ``jobs`` processes into the campaign's result directory; returns the
    totals of the jobs' campaign.json (cases, draws, findings, statuses), also kept as
    ``campaign.job_totals`` when the jobs are interrupted. ``work(spec)`` runs in each job (a
    module-level function, for ``spawn``): a campaign over the backends ``spec`` names, with the
    campaign's settings, into its own directory. This module knows processes, directories and
    result lines only."""
    cfg = campaign.config
    root = Path(cfg.out) / JOBS
    shutil.rmtree(root, ignore_errors=True)
    ctx = multiprocessing.get_context("spawn")
    procs, tails = [], []
    layout = plan(groups, jobs)
    threads = str(max(1, (os.cpu_count() or 1) // len(layout)))
    for k, share in enumerate(layout, start=1):
        out = root / f"job-{k}"
        spec = {
            "backends": [name for g in share for name in g.names], "profile": cfg.profile,
            "examples": cfg.examples, "time_budget": campaign.budget if campaign.budget < float("inf") else None,
            "seed": cfg.seed, "shard": cfg.shard, "out": out, "database": cfg.database, "progress": False,
            "rounds": cfg.rounds, "shrink": cfg.shrink, "stop_on": cfg.stop_on, "parent": os.getpid(),
            "isolate": cfg.isolate, "backend_timeout": cfg.backend_timeout, "overwrite": True,
        }
        p = ctx.Process(target=_job, args=(work, spec), name=f"difftest-job-{k}")
        with _environment({var: threads for var in THREAD_VARIABLES}):  # the jobs share the cores
            p.start()
        procs.append(p)
        tails.append(_Tail(out))
    writer, seen, searched = campaign.recorder.writer, set(), set()

    def drain() -> None:
        for t in tails:
            records = t.new_records()
            if records:
                added = writer.append(t.directory, records, t.environments(), seen)
                searched.update(r.case_id for r in added if r.phase == "search")
                campaign.progress.cases = len(searched)
                campaign.progress.findings += sum(r.finding is not None for r in added)

    try:
        while any(p.is_alive() for p in procs):
            time.sleep(POLL_S)
            drain()
            campaign.progress.update(f"[{len(procs)} jobs]")
    except KeyboardInterrupt:
        for p in procs:  # a kill -INT of the parent alone: pass it on
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(60)
        raise
    finally:
        drain()
        campaign.job_totals = _totals(root, procs, layout)
        shutil.rmtree(root, ignore_errors=True)
    return campaign.job_totals


def _totals(root: Path, procs, layout: list) -> dict:
    out = {"cases": 0, "draws": 0, "findings": 0, "too_large": 0, "first_seen_s": {}, "jobs": []}
    for k, p in enumerate(procs, start=1):
        try:
            info = read_campaign(root / f"job-{k}")
        except DifftestError:  # torn by the job's death
            info = {}
        for key in ("cases", "draws", "findings", "too_large"):
            out[key] += info.get(key) or 0
        out["first_seen_s"].update(info.get("first_seen_s") or {})  # a job's own start: one process each
        out["jobs"].append({"job": k, "groups": [g.label for g in layout[k - 1]], "status": info.get("status") or "crashed",
                            "exit_code": p.exitcode, "duration_s": info.get("duration_s")})
    return out

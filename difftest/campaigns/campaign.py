"""Fuzz campaigns: hypothesis searches cases, every backend is judged, findings are shrunk and kept.

:mod:`difftest.search` runs one hypothesis round (search and shrink), :mod:`difftest.store`
records the result directory as it goes, :mod:`difftest.isolation` runs the backends in worker
processes, and this module plans the campaign (groups, rounds, the time budget) and keeps what it
has found.

How a campaign runs. Backends are grouped by format and by the geometry they take
(:class:`~difftest.search.Group`, :mod:`difftest.supports`); a case is computed once (exact spec,
NF model, both bounds) and shared by the group. Bounded by time, the groups are searched in
slices, each to the group with the fewest cases so far, so every backend gets a comparable number
of cases whatever its cases cost; each slice draws small cases or real layers only, real layers
where they have had less than the profile's share of the group's time (:meth:`Campaign._interleave`).
Bounded by work (``rounds``), each group searches its rounds in turn, of a mixed draw whose
real-layer share is set from the estimated costs (:func:`real_layer_share`). The search
goes in *rounds*. A round is one hypothesis run whose test function judges every backend on the case,
writes one result line per backend (and a reproducer for each non-``pass``), steers the search
with ``hypothesis.target`` towards larger error/bound ratios, and fails on the first finding —
a ``(backend, gradient, verdict)`` not found before. Hypothesis then shrinks that failure to a
minimal case, which is saved as the finding's reproducer, and the round goes on with the
examples it has left (its own seed) for findings not yet seen; then the next round, with new
seeds, until the time budget or the round limit. The time budget ends the search wherever it
is; nothing written is lost, and an interrupted shrink keeps the smallest failing case it had
reached.

Nothing seen is lost. Each searched case is written to ``cases/`` before its backends run (and
removed when all pass), so the case a crashing backend was on is kept. Every backend runs in a
worker process (:mod:`difftest.isolation`): a crash or a hang is that backend's ``error`` verdict
on that case, a finding like any other, and the campaign goes on. Every ``(backend, gradient,
verdict)`` a searched case showed is recorded as a finding — shrunk where the budget allows, else
its first case as ``unshrunk`` — also when the time runs out, on Ctrl-C, or when the campaign
crashes; ``campaign.json``'s count is the result lines' (:func:`difftest.results.findings`).

Shards: a case belongs to shard ``K/N`` when its content hash is ``K - 1`` mod ``N``; each
shard filters the search to its own cases, so shards never share a case and their union is a
partition, and each shard derives its seeds from ``(seed, K)``.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hypothesis import reject

from .. import __version__
from ..judge.check import check_case, supports_of
from ..judge.distributed import connect
from ..errors import BudgetExhausted, DifftestError
from ..judge.estimate import CaseTooLarge
from ..records.expectations import Expectations
from ..judge.isolation import DEFAULT_TIMEOUT, Workers
from .jobs import run_jobs
from ..values.outcome import FindingKey
from .progress import Progress
from ..records.results import cases_per_backend, findings
from .search import Finding, Group, Round
from ..records.store import Recorder, read_results
from ..values.profiles import PROFILES, Profile
from ..values.verdicts import is_finding

__all__ = ["PROFILES", "Campaign", "CampaignConfig", "Profile", "Progress", "default_backends", "parse_shard", "shard_of"]


def real_layer_share(profile: Profile, fmt, supports, backends: int) -> float:
    """The share of draws that are real layers so that they take ``realistic`` of the time: a
    real layer costs many small cases (:func:`difftest.estimate.campaign_case_seconds`, for
    ``backends`` backends of ``fmt`` that take ``supports``), so it is drawn that much less
    often. In steps of 1/1000, at least one."""
    if profile.realistic in (0, 1):
        return float(profile.realistic)
    small, real = case_seconds(profile, fmt, supports, backends)
    r = profile.realistic
    return max(round(1000 * r * small / (r * small + (1 - r) * real)), 1) / 1000

def case_seconds(profile: Profile, fmt, supports, backends: int) -> tuple[float, float]:
    """Estimated seconds of a typical small case and of a typical real-layer case (half at the
    largest affordable size, half halfway, as :func:`difftest.strategies.realistic_geometries`
    draws them) for ``backends`` backends of ``fmt`` that take ``supports``."""
    from ..campaigns.catalogue import LAYERS, largest_size, smallest_size
    from ..judge.estimate import campaign_case_seconds
    from ..values.geometry import Geometry
    from ..maths.replay import compiled

    fast, lim = compiled(fmt), profile.limits
    half = lambda n: (n + 1) // 2  # noqa: E731
    small = campaign_case_seconds(Geometry(half(lim.max_batch), half(lim.max_channels), half(lim.max_size),
                                           half(lim.max_size), half(lim.max_channels), half(lim.max_kernel),
                                           half(lim.max_kernel)), backends, fast, profile.sample)
    costs = []
    for layer in LAYERS.values():
        top = largest_size(layer, 1, profile.max_macs)
        low = smallest_size(layer)
        if top is None or not supports.takes(layer.geometry(1, low)):
            continue
        costs.append(sum(campaign_case_seconds(layer.geometry(1, size), backends, fast, profile.sample)
                         for size in (top, (low + top) // 2)) / 2)
    return small, (sum(costs) / len(costs) if costs else small)


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` with ``1 <= K <= N``."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise DifftestError(f"--shard must look like K/N (e.g. 2/4), got {text!r}") from None
    if not (n >= 1 and 1 <= k <= n):
        raise DifftestError(f"--shard {text}: need 1 <= K <= N")
    return k, n


def shard_of(case_id: str, n: int) -> int:
    """The shard (1-based) a case belongs to among ``n``."""
    return int(case_id, 16) % n + 1


@dataclass
class CampaignConfig:
    backends: list  # Backend objects
    profile: Profile = PROFILES["quick"]
    examples: int | None = None
    time_budget: float | None = None
    seed: int = 0
    shard: tuple[int, int] = (1, 1)
    out: Path = Path("reports/latest")
    database: Path | None = Path(".difftest/hypothesis")
    progress: bool = True
    rounds: int | None = None  # search rounds per format (None: until the time budget is spent)
    expectations: Expectations | None = None  # declared findings, kept with the results (expected.json)
    jobs: int = 1  # processes for the format groups (difftest.jobs); 1: this process
    shrink: bool = True  # False: every finding stands as the first case that showed it
    stop_on: frozenset = frozenset()  # verdicts whose first finding ends the campaign
    isolate: bool = True  # run each backend in a worker process (difftest.isolation); False: in this one
    backend_timeout: float | None = DEFAULT_TIMEOUT  # seconds one backend call may take (None: no limit)
    overwrite: bool = False  # replace a previous run in ``out`` instead of keeping it as ``<out>.previous``
    scheduler: str | None = None  # a Dask scheduler's address: judge there (difftest.distributed); None: here


#: Judged cases remembered per campaign (hypothesis repeats simple cases: judge once, record once).
_CACHE_SIZE = 2048
#: Cases of one slice of an interleaved campaign (:meth:`Campaign._interleave`), at most.
SLICE_EXAMPLES = 25


class Campaign:
    """Runs a campaign and writes its result directory."""

    shard_of = staticmethod(shard_of)

    def __init__(self, config: CampaignConfig):
        self.config = config
        self.profile = config.profile
        self.examples = config.examples or self.profile.examples
        self.budget = config.time_budget if config.time_budget is not None else (
            math.inf if config.rounds else self.profile.time_budget)  # rounds alone: bounded by work
        self.recorder: Recorder | None = None
        self.progress = Progress(enabled=config.progress, budget=self.budget)
        self.status = "running"
        self.found: set[FindingKey] = set()
        self.interrupted = False
        self.stopped_on: FindingKey | None = None  # the finding that ended the campaign (config.stop_on)
        self.end = 0.0
        self.draws = 0  # cases hypothesis drew for the search (a repeat of a judged case counts, is not judged again)
        self.job_totals: dict | None = None  # what parallel jobs did (difftest.jobs)
        self._judged: dict[str, list] = {}  # case_id -> results, without raw outputs (search and shrink)
        self.recorded: set[str] = set()  # case ids the search has recorded (shrinking records none)
        self.seen: dict[FindingKey, tuple] = {}  # non-pass key -> (choices, round, case, result) of its first case
        self.largest: dict[FindingKey, dict] = {}  # non-pass key -> the largest searched case that showed it
        self.started = time.monotonic()
        self.first_seen_s: dict[str, float] = {}  # from the jobs' campaign.json (difftest.jobs)
        self.first_seen: dict[FindingKey, float] = {}  # non-pass key -> seconds from the start to the case that showed it
        self.group_cases: dict[str, int] = {}  # group label -> cases searched (difftest.search.Group)
        self.replayed: set[str] = set()  # database keys whose saved failures a round has replayed
        self.too_large = 0  # drawn cases refused for memory (difftest.estimate.CaseTooLarge), not judged
        self.cluster = None  # where the judging runs (difftest.distributed), while the search runs

    # --- what the rounds ask --------------------------------------------------------------

    def judge(self, case, backends, stop=None) -> list:
        """The backends' results on ``case``, judged once (hypothesis repeats cases).
        ``stop(result)`` ends the judgement early (shrinking needs only one answer)."""
        if case.case_id in self._judged:
            return self._judged[case.case_id]
        try:
            results = check_case(case, backends, stop=stop, sample=self.profile.sample, seed=self.config.seed,
                                 cluster=self.cluster)
        except CaseTooLarge:  # a real layer too large for this machine's memory even sampled: not drawn
            self.too_large += 1
            reject()
        if len(results) == len(backends):
            if len(self._judged) >= _CACHE_SIZE:
                self._judged.clear()
            self._judged[case.case_id] = [r.lightweight() for r in results]
        return results

    def new_finding(self, results) -> FindingKey | None:
        """The first ``(backend, gradient, verdict)`` among ``results`` not found before."""
        for r in results:
            for g, gr in r.gradients.items():
                key = FindingKey(r.backend, g, gr.verdict)
                if is_finding(key.verdict) and key not in self.found:
                    return key
        return None

    def note_seen(self, case, results, choices: tuple, round_no: int, group: Group) -> None:
        """Remember the first case of each non-``pass`` key, to shrink it later if no round does."""
        for r in results:
            for g, gr in r.gradients.items():
                key = FindingKey(r.backend, g, gr.verdict)
                if is_finding(key.verdict) and key not in self.found and key not in self.seen:
                    self.seen[key] = (choices, round_no, case, r, group)
                if is_finding(key.verdict):
                    self.first_seen.setdefault(key, time.monotonic() - self.started)

    def note_largest(self, case, results, case_file: str | None) -> None:
        """Remember, per non-``pass`` key, the searched case of most multiply-adds that showed it."""
        macs = case.geometry.macs
        for r in results:
            for g, gr in r.gradients.items():
                key = FindingKey(r.backend, g, gr.verdict)
                if is_finding(key.verdict) and case_file and macs > self.largest.get(key, {}).get("macs", -1):
                    self.largest[key] = {"case_id": case.case_id, "case_file": case_file,
                                         "geometry": case.geometry.as_dict(), "macs": macs}
                    if gr.sampled:  # judged at sampled entries: its replay samples the same ones
                        self.largest[key]["sample"] = {"size": gr.sampled["size"], "seed": gr.sampled["seed"]}

    def save_finding(self, key: FindingKey, case, result, round_no: int, phase: str = "shrunk") -> None:
        self.found.add(key)
        self.progress.findings += 1
        largest = self.largest.get(key)
        if largest is not None and (largest["case_id"] == case.case_id or largest["macs"] <= case.geometry.macs):
            largest = None  # the reproducer is the largest case itself
        self.recorder.record(case, [result], phase, round_no, findings=[key], largest_case=largest)
        if key.verdict in self.config.stop_on and self.stopped_on is None:
            self.stopped_on = key
        self.progress.update(f"found {key.backend} {key.gradient}: {key.verdict}", force=True)

    def _save(self, f: Finding, round_no: int, group: Group) -> None:
        result = next(r for r in f.results if r.backend == f.key.backend)
        self.save_finding(f.key, f.case, result, round_no, "shrunk" if self.config.shrink else "unshrunk")
        self.note_seen(f.case, [result], f.choices, round_no, group)  # other keys its reproducer shows

    # --- the campaign ----------------------------------------------------------------------

    def _catch_sigint(self):
        """Remember Ctrl-C even where hypothesis absorbs the KeyboardInterrupt (it stops a shrink
        and reports the failure instead); returns the previous handler, or None off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self.interrupted = True
            raise KeyboardInterrupt

        return signal.signal(signal.SIGINT, handler)

    def _search_group(self, group: Group, deadline: float) -> None:
        """Rounds with new seeds over one group until the deadline or the round limit; then every
        key seen but not yet saved is shrunk on its own, or (no time left, Ctrl-C, a crash) saved
        as its first case: on every way out."""
        try:
            for round_no in range(1, (self.config.rounds or 10_000) + 1):
                self._round(group, round_no, deadline)
        except BudgetExhausted:
            pass
        except BaseException:  # Ctrl-C, a crash: what was seen is saved as it was first seen
            self._save_seen([group], shrink=False)
            raise
        self._save_seen([group], shrink=self.config.shrink)

    def _interleave(self, groups: list[Group]) -> None:
        """Time-bounded: the groups searched in slices, each slice to the group with the fewest
        cases so far, so every backend gets a comparable number of cases whatever its cases cost
        (a slice is at most ``SLICE_EXAMPLES`` cases and a share of the budget; a round of
        ``examples`` cases is searched over several slices, going on after each finding). A slice
        draws only small cases or only real layers (:meth:`Group.only`): real layers where they
        have had less than the profile's share (``realistic``) of the group's time so far, so they
        get that share of the budget, however long the budget and whatever they cost (left to a
        mixed draw, hypothesis's generation, which reuses and simplifies earlier choices, drew
        a real layer a fifth as often as asked). Then, as in :meth:`_search_group`, what was seen
        and not saved is saved on every way out."""
        share = self.profile.realistic
        kinds = ["small", "real"] if 0 < share < 1 else ["real" if share else "small"]
        rounds = {(g.label, k): [1, self.examples, 0] for g in groups for k in kinds}  # round, left, segment
        spent = {(g.label, k): 0.0 for g in groups for k in kinds}  # seconds of slices
        slice_s = max(1.0, self.budget / 30) if self.budget < math.inf else math.inf
        try:
            while groups and not self.stopped_on:
                if self.interrupted:
                    raise KeyboardInterrupt
                now = time.monotonic()
                if now > self.end:
                    break
                group = min(groups, key=lambda g: self.group_cases.get(g.label, 0))
                real = spent.get((group.label, "real"), 0.0)
                kind = kinds[-1] if real <= share * (real + spent.get((group.label, "small"), 0.0)) else kinds[0]
                state = rounds[(group.label, kind)]
                asked = min(state[1], SLICE_EXAMPLES)
                run = Round(self, group.only(kind), state[0], min(self.end, now + slice_s), asked, state[2])
                timed_out = False
                try:
                    f = run.run()
                except BudgetExhausted:  # the slice's time (or the campaign's) is up
                    f, timed_out = None, True
                spent[(group.label, kind)] += time.monotonic() - now
                if f is not None:
                    self._save(f, state[0], run.group)
                state[1] -= max(run.searched, 1)
                state[2] += 1
                exhausted = f is None and not timed_out and run.searched < asked  # hypothesis saw no more to try
                if state[1] <= 0 or exhausted:
                    state[:] = [state[0] + 1, self.examples, 0]  # the next round, with its own seeds
        except BaseException:  # Ctrl-C, a crash: what was seen is saved as it was first seen
            self._save_seen(groups, shrink=False)
            raise
        self._save_seen(groups, shrink=self.config.shrink)

    def _save_seen(self, groups: list[Group], shrink: bool) -> None:
        """Save every key of these groups seen but not yet saved: shrunk where asked and time is
        left, else its first case (``unshrunk``)."""
        for group in groups:
            self._save_seen_of(group, shrink)

    def _save_seen_of(self, group: Group, shrink: bool) -> None:
        names = set(group.names)
        for key, (choices, round_no, case, result, drawn_by) in list(self.seen.items()):
            if key in self.found or key.backend not in names:
                continue
            f = None
            if shrink and not self.interrupted and not self.stopped_on and time.monotonic() < self.end:
                try:  # the choices replay in the strategy that drew them (its group, its kind)
                    f = Round(self, drawn_by, round_no, self.end, self.examples, target=key, choices=choices).run()
                except BudgetExhausted:
                    pass
                except KeyboardInterrupt:
                    self.interrupted = True  # the others are saved unshrunk; run() then ends as interrupted
            if f is not None:
                self._save(f, round_no, drawn_by)
            if key not in self.found:  # no time left to shrink it (or it did not fail again): its first case stands
                self.save_finding(key, case, result, round_no, phase="unshrunk")

    def _round(self, group: Group, round_no: int, deadline: float) -> None:
        """One round: ``examples`` cases, going on after each finding (raises BudgetExhausted)."""
        left, segment = self.examples, 0
        while left > 0:
            if self.interrupted:
                raise KeyboardInterrupt
            if time.monotonic() > deadline or self.stopped_on:
                raise BudgetExhausted
            run = Round(self, group, round_no, deadline, left, segment)
            f = run.run()
            if f is None:
                return
            self._save(f, round_no, group)
            left -= max(run.searched, 1)
            segment += 1

    def groups(self, backends) -> list[Group]:
        """The backends in groups searched on the same cases: one per format and geometry they take
        (:mod:`difftest.supports`), in the order of their first backend; each with the share of real
        layers that gives them the profile's share of the time."""
        found: dict[tuple, list] = {}
        for b in backends:
            found.setdefault((b.format.name, supports_of(b)), []).append(b)
        groups = []
        for (_, supports), bs in found.items():
            fmt = bs[0].format
            share = real_layer_share(self.profile, fmt, supports, len(bs))
            small, real = case_seconds(self.profile, fmt, supports, len(bs))
            groups.append(Group(fmt, tuple(bs), supports, share, (1 - share) * small + share * real))
        return groups

    def _jobs(self, groups: list) -> int:
        """Processes to use: at most one per group; 1 where a backend is not registered
        (a plain function or object cannot be rebuilt in another process)."""
        from ..backends import is_registered

        jobs = min(self.config.jobs, len(groups))
        if jobs > 1 and not all(is_registered(b.name) for b in self.config.backends):
            self.progress.note("--jobs: a backend that is not registered runs in this process only; one job")
            return 1
        return jobs

    def _settings(self, groups: list[Group]) -> dict:
        cfg = self.config
        return {
            "version": __version__,
            "profile": self.profile.name,
            "limits": self.profile.limits.__dict__,
            "realistic": self.profile.realistic,
            "max_macs": self.profile.max_macs,
            "examples_per_round": self.examples,
            "rounds": cfg.rounds,
            "time_budget_s": self.budget,
            "seed": cfg.seed,
            "shard": f"{cfg.shard[0]}/{cfg.shard[1]}",
            "backends": [b.name for b in cfg.backends],
            "formats": list(dict.fromkeys(g.fmt.name for g in groups)),
            "groups": [{"label": g.label, "backends": g.names, "real_layer_share": g.realistic,
                        "case_seconds": round(g.cost, 4)} for g in groups],
            "database": str(cfg.database) if cfg.database else None,
            "jobs": cfg.jobs,
            "shrink": cfg.shrink,
            "stop_on": sorted(cfg.stop_on),
            "isolate": cfg.isolate,
            "backend_timeout_s": cfg.backend_timeout,
            "scheduler": cfg.scheduler,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "status": "running",
        }

    def run(self) -> list:
        """Search every group; returns the result directory's typed records. The directory's lock is
        released however the campaign ends."""
        cfg = self.config
        self.recorder = Recorder(cfg.out, cfg.seed, cfg.shard, cfg.expectations, overwrite=cfg.overwrite)
        try:
            return self._run()
        finally:
            self.recorder.close(keep_pending=self.status == "crashed")  # a crash of ours keeps the case it was on

    def _run(self) -> list:
        cfg = self.config
        groups = self.groups(cfg.backends)
        t0 = self.started = time.monotonic()
        self.end = t0 + self.budget
        info = self._settings(groups)
        if self.recorder.previous is not None:
            info["previous"] = str(self.recorder.previous)
        self.recorder.campaign(info)
        previous = self._catch_sigint()
        records = None
        try:
            jobs = self._jobs(groups)
            if jobs > 1:
                crashed = [j for j in run_jobs(self, groups, jobs, job_campaign)["jobs"] if j["status"] != "complete"]
                if crashed and not self.interrupted:
                    j = crashed[0]
                    raise DifftestError(f"job {j['job']} ({', '.join(j['groups'])}) ended {j['status']} (exit code "
                                        f"{j['exit_code']}): see its messages above; what the jobs wrote is kept")
            else:
                self._search_groups(groups, t0)
            if self.interrupted:
                raise KeyboardInterrupt
            self.status = "complete"
        except KeyboardInterrupt:
            self.status = "interrupted"
            raise
        except BaseException as exc:
            self.status = "crashed"
            info["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            records = self._finish(info, t0)
        return records if records is not None else read_results(cfg.out)  # unreadable: the store says why

    def _search_groups(self, groups: list[Group], t0: float) -> None:
        """The groups in this process, each backend in its worker: bounded by time, interleaved
        (:meth:`_interleave`); bounded by work (``rounds``), one after another, each its rounds (the
        same cases every run, whatever the machine's speed)."""
        cfg = self.config
        pool = Workers(cfg.backend_timeout) if cfg.isolate else None
        try:
            self.cluster = connect(cfg.scheduler)
            if pool is not None:
                pool.deadline = self.end
                wrapped = dict(zip(map(id, cfg.backends), pool.wrap(cfg.backends)))
                groups = [dataclasses.replace(g, backends=tuple(wrapped[id(b)] for b in g.backends)) for g in groups]
                for note in pool.notes:
                    self.progress.note(note)
            if not cfg.rounds:
                self._interleave(groups)
                return
            for gi, group in enumerate(groups):
                if self.stopped_on:
                    break
                share = (self.budget - (time.monotonic() - t0)) / (len(groups) - gi)  # unused time passes on
                self._search_group(group, time.monotonic() + share)
        finally:
            if pool is not None:
                pool.close()
            if self.cluster is not None:
                self.cluster.close()
                self.cluster = None

    def _finish(self, info: dict, t0: float) -> list | None:
        """Write the campaign's outcome (``campaign.json``); its finding count is the result lines'."""
        if self.job_totals:
            self.draws = self.job_totals["draws"]
            self.too_large = self.job_totals.get("too_large", 0)
            info["job_runs"] = self.job_totals["jobs"]
            self.first_seen_s = self.job_totals["first_seen_s"]
        try:
            records = read_results(self.config.out)
            self.progress.findings = len(findings(records))
            info["cases_per_backend"] = cases_per_backend(records, [b.name for b in self.config.backends])
        except DifftestError:  # unreadable (a full disk tore it): the count as it went
            records = None
        info.update({
            "status": self.status,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "duration_s": round(time.monotonic() - t0, 3),
            "cases": self.progress.cases,
            "draws": self.draws,
            "too_large": self.too_large,
            "findings": self.progress.findings,
            "stopped_on": self.stopped_on.to_dict() if self.stopped_on else None,
            "first_seen_s": self.first_seen_s or {" ".join(k): round(s, 3) for k, s in sorted(self.first_seen.items())},
        })
        try:
            self.recorder.campaign(info)
        finally:
            self.progress.update("", force=True)
            self.progress.done()
        return records


def job_campaign(spec: dict) -> None:
    """One job of a parallel campaign (:func:`difftest.jobs.run_jobs`): a campaign over the backends
    ``spec`` names, with the other fields of :class:`CampaignConfig`."""
    from ..backends import get_backend

    Campaign(CampaignConfig(**{**spec, "backends": [get_backend(n) for n in spec["backends"]]})).run()


def default_backends() -> list:
    """Every available CPU backend but the emulated references (``emu-*``: named to run)."""
    from ..backends import all_backends

    return [b for b in all_backends().values()
            if b.device == "cpu" and getattr(b, "default_campaign", True) and b.availability()[0]]

"""Fuzz campaigns: hypothesis searches cases, every backend is judged, findings are shrunk and kept.

Three jobs, three modules: :mod:`difftest.search` runs one hypothesis round (search and
shrink), :mod:`difftest.persist` writes the result directory as it goes, and this module plans
the campaign (format groups, rounds, the time budget) and keeps what it has found.

How a campaign runs. Backends are grouped by format; a case of that format is computed once
(exact spec, NF model, both bounds) and shared by the group. For each group the search goes in
*rounds*. A round is one hypothesis run whose test function judges every backend on the case,
writes one result line per backend (and a reproducer for each non-``pass``), steers the search
with ``hypothesis.target`` towards larger error/bound ratios, and fails on the first finding —
a ``(backend, gradient, verdict)`` not found before. Hypothesis then shrinks that failure to a
minimal case, which is saved as the finding's reproducer. The next round searches on (new
seed) for findings not yet seen; a round that finds nothing new ends the group. The time budget
ends the search wherever it is; nothing written is lost, and an interrupted shrink keeps the
smallest failing case it had reached.

Shards: a case belongs to shard ``K/N`` when its content hash is ``K - 1`` mod ``N``; each
shard filters the search to its own cases, so shards never share a case and their union is a
partition, and each shard derives its seeds from ``(seed, K)``.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .check import check_case
from .errors import DifftestError
from .expectations import Expectations
from .jobs import run_jobs
from .outcome import FindingKey
from .persist import CampaignRecorder
from .progress import Progress
from .results import read_results
from .search import BudgetExhausted, Finding, Round
from .strategies import Limits

__all__ = ["PROFILES", "Campaign", "CampaignConfig", "Profile", "Progress", "default_backends", "parse_shard", "shard_of"]


@dataclass(frozen=True)
class Profile:
    """Sizes and effort of a campaign."""

    name: str
    limits: Limits
    examples: int  # hypothesis max_examples per round
    time_budget: float  # seconds for the whole campaign
    shrink_seconds: float  # cap on shrinking one finding
    shrink_steps: int = 300  # cap on the cases judged while shrinking one finding (work, not time)
    realistic: float = 0.0  # share of drawn cases that are real layers with probes (difftest.probes)
    max_macs: int = 2_000_000  # multiply-adds of one gradient of a real-layer case, at most

    @property
    def description(self) -> str:
        lim = self.limits
        small = f"fuzzed cases up to {lim.max_channels} channels, {lim.max_size}×{lim.max_size}"
        if not self.realistic:
            return small
        return (f"{round(100 * (1 - self.realistic))} % {small}; {round(100 * self.realistic)} % real layers "
                f"(difftest.catalogue) with probes, up to {self.max_macs / 1e6:g} M multiply-adds")


PROFILES = {
    "quick": Profile("quick", Limits(max_batch=2, max_channels=3, max_size=6, max_kernel=3), 150, 60.0, 10.0,
                     realistic=0.3, max_macs=2_000_000),
    "ci": Profile("ci", Limits(max_batch=2, max_channels=6, max_size=10, max_kernel=3), 500, 300.0, 30.0,
                  realistic=0.3, max_macs=8_000_000),
    "nightly": Profile("nightly", Limits(max_batch=4, max_channels=16, max_size=16, max_kernel=5), 2000, 3600.0, 120.0,
                       realistic=0.3, max_macs=20_000_000),
    # For GPUs (the nightly GPU job): vendors pick tensor-core, Winograd and FFT kernels by shape.
    "hardware": Profile("hardware", Limits(max_batch=2, max_channels=6, max_size=10, max_kernel=3), 400, 1800.0, 120.0,
                        realistic=0.9, max_macs=50_000_000),
}


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


#: Judged cases remembered per campaign (hypothesis repeats simple cases: judge once, record once).
_CACHE_SIZE = 2048


class Campaign:
    """Runs a campaign and writes its result directory."""

    shard_of = staticmethod(shard_of)

    def __init__(self, config: CampaignConfig):
        self.config = config
        self.profile = config.profile
        self.examples = config.examples or self.profile.examples
        self.budget = config.time_budget if config.time_budget is not None else (
            math.inf if config.rounds else self.profile.time_budget)  # rounds alone: bounded by work
        self.recorder: CampaignRecorder | None = None
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

    # --- what the rounds ask --------------------------------------------------------------

    def judge(self, case, backends, stop=None) -> list:
        """The backends' results on ``case``, judged once (hypothesis repeats cases).
        ``stop(result)`` ends the judgement early (shrinking needs only one answer)."""
        if case.case_id in self._judged:
            return self._judged[case.case_id]
        results = check_case(case, backends, stop=stop)
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
                if key.verdict != "pass" and key not in self.found:
                    return key
        return None

    def note_seen(self, case, results, choices: tuple, round_no: int) -> None:
        """Remember the first case of each non-``pass`` key, to shrink it later if no round does."""
        for r in results:
            for g, gr in r.gradients.items():
                key = FindingKey(r.backend, g, gr.verdict)
                if key.verdict != "pass" and key not in self.found and key not in self.seen:
                    self.seen[key] = (choices, round_no, case, r)
                if key.verdict != "pass":
                    self.first_seen.setdefault(key, time.monotonic() - self.started)

    def note_largest(self, case, results, case_file: str | None) -> None:
        """Remember, per non-``pass`` key, the searched case of most multiply-adds that showed it."""
        macs = case.geometry.macs
        for r in results:
            for g, gr in r.gradients.items():
                key = FindingKey(r.backend, g, gr.verdict)
                if key.verdict != "pass" and case_file and macs > self.largest.get(key, {}).get("macs", -1):
                    self.largest[key] = {"case_id": case.case_id, "case_file": case_file,
                                         "geometry": case.geometry.as_dict(), "macs": macs}

    def save_finding(self, key: FindingKey, case, result, round_no: int, phase: str = "shrunk") -> None:
        self.found.add(key)
        self.progress.findings += 1
        largest = self.largest.get(key)
        if largest is not None and (largest["case_id"] == case.case_id or largest["macs"] <= case.geometry.macs):
            largest = None  # the reproducer is the largest case itself
        self.recorder.record(case, [result], phase, round_no, finding=key, largest_case=largest)
        if key.verdict in self.config.stop_on and self.stopped_on is None:
            self.stopped_on = key
        self.progress.update(f"found {key.backend} {key.gradient}: {key.verdict}", force=True)

    def _save(self, f: Finding, round_no: int) -> None:
        result = next(r for r in f.results if r.backend == f.key.backend)
        self.save_finding(f.key, f.case, result, round_no, "shrunk" if self.config.shrink else "unshrunk")
        self.note_seen(f.case, [result], f.choices, round_no)  # other keys its reproducer shows

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

    def _search_group(self, backends, deadline: float) -> None:
        """Rounds with new seeds over one format group until the deadline or the round limit;
        then every key seen but not yet shrunk is shrunk on its own."""
        fmt = backends[0].format
        try:
            for round_no in range(1, (self.config.rounds or 10_000) + 1):
                self._round(fmt, backends, round_no, deadline)
        except BudgetExhausted:
            pass
        names = {b.name for b in backends}
        for key, (choices, round_no, case, result) in list(self.seen.items()):
            if key in self.found or key.backend not in names:
                continue
            f = None
            if self.config.shrink and not self.interrupted and not self.stopped_on and time.monotonic() < self.end:
                try:
                    f = Round(self, fmt, backends, round_no, self.end, self.examples, target=key, choices=choices).run()
                except BudgetExhausted:
                    pass
            if f is not None:
                self._save(f, round_no)
            else:  # no time left to shrink it (or it did not fail again): its first case stands
                self.save_finding(key, case, result, round_no, phase="unshrunk")

    def _round(self, fmt, backends, round_no: int, deadline: float) -> None:
        """One round: ``examples`` cases, going on after each finding (raises BudgetExhausted)."""
        left, segment = self.examples, 0
        while left > 0:
            if self.interrupted:
                raise KeyboardInterrupt
            if time.monotonic() > deadline or self.stopped_on:
                raise BudgetExhausted
            run = Round(self, fmt, backends, round_no, deadline, left, segment)
            f = run.run()
            if f is None:
                return
            self._save(f, round_no)
            left -= max(run.searched, 1)
            segment += 1

    def _jobs(self, groups: dict) -> int:
        """Processes to use: at most one per format group; 1 where a backend is not registered
        (a plain function or object cannot be rebuilt in another process)."""
        from .backends import is_registered

        jobs = min(self.config.jobs, len(groups))
        if jobs > 1 and not all(is_registered(b.name) for b in self.config.backends):
            self.progress.note("--jobs: a backend that is not registered runs in this process only; one job")
            return 1
        return jobs

    def _settings(self, groups: dict) -> dict:
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
            "formats": list(groups),
            "database": str(cfg.database) if cfg.database else None,
            "jobs": cfg.jobs,
            "shrink": cfg.shrink,
            "stop_on": sorted(cfg.stop_on),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "status": "running",
        }

    def run(self) -> list:
        """Search every format group in turn; returns the result directory's typed records."""
        cfg = self.config
        groups: dict[str, list] = {}
        for b in cfg.backends:
            groups.setdefault(b.format.name, []).append(b)
        self.recorder = CampaignRecorder(cfg.out, cfg.seed, cfg.shard, cfg.expectations)
        t0 = self.started = time.monotonic()
        self.end = t0 + self.budget
        info = self._settings(groups)
        self.recorder.campaign(info)
        previous = self._catch_sigint()
        try:
            jobs = self._jobs(groups)
            if jobs > 1:
                crashed = [j for j in run_jobs(self, groups, jobs)["jobs"] if j["status"] != "complete"]
                if crashed and not self.interrupted:
                    raise DifftestError(f"job {crashed[0]['job']} ({', '.join(crashed[0]['formats'])}) ended "
                                        f"{crashed[0]['status']} (exit code {crashed[0]['exit_code']}): see its "
                                        "messages above; what the jobs wrote is kept")
            else:
                for gi, backends in enumerate(groups.values()):
                    if self.stopped_on:
                        break
                    share = (self.budget - (time.monotonic() - t0)) / (len(groups) - gi)  # unused time passes on
                    self._search_group(backends, time.monotonic() + share)
            if self.interrupted:
                raise KeyboardInterrupt
            self.status = "complete"
        except KeyboardInterrupt:
            self.status = "interrupted"
            raise
        except BaseException:
            self.status = "crashed"
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if self.job_totals:
                self.draws = self.job_totals["draws"]
                info["job_runs"] = self.job_totals["jobs"]
                self.first_seen_s = self.job_totals["first_seen_s"]
            info.update({
                "status": self.status,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "duration_s": round(time.monotonic() - t0, 3),
                "cases": self.progress.cases,
                "draws": self.draws,
                "findings": self.progress.findings,
                "stopped_on": self.stopped_on.to_dict() if self.stopped_on else None,
                "first_seen_s": self.first_seen_s or {" ".join(k): round(s, 3) for k, s in sorted(self.first_seen.items())},
            })
            self.recorder.campaign(info)
            self.recorder.close()
            self.progress.update("", force=True)
            self.progress.done()
        return read_results(cfg.out)


def default_backends() -> list:
    """Every available CPU backend but the emulated references (``emu-*``: named to run)."""
    from .backends import all_backends

    return [b for b in all_backends().values()
            if b.device == "cpu" and getattr(b, "default_campaign", True) and b.availability()[0]]

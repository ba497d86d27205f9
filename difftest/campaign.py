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

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .check import check_case
from .errors import DifftestError
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


PROFILES = {
    "quick": Profile("quick", Limits(max_batch=2, max_channels=3, max_size=6, max_kernel=3), 150, 60.0, 10.0),
    "ci": Profile("ci", Limits(max_batch=2, max_channels=6, max_size=10, max_kernel=3), 500, 300.0, 30.0),
    "nightly": Profile("nightly", Limits(max_batch=4, max_channels=16, max_size=16, max_kernel=5), 2000, 3600.0, 120.0),
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


#: Judged cases remembered per campaign (hypothesis repeats simple cases: judge once, record once).
_CACHE_SIZE = 2048


class Campaign:
    """Runs a campaign and writes its result directory."""

    shard_of = staticmethod(shard_of)

    def __init__(self, config: CampaignConfig):
        self.config = config
        self.profile = config.profile
        self.examples = config.examples or self.profile.examples
        self.budget = config.time_budget if config.time_budget is not None else self.profile.time_budget
        self.recorder: CampaignRecorder | None = None
        self.progress = Progress(enabled=config.progress)
        self.status = "running"
        self.found: set[FindingKey] = set()
        self.interrupted = False
        self.end = 0.0
        self._judged: dict[str, list] = {}  # case_id -> results, without raw outputs

    # --- what the rounds ask --------------------------------------------------------------

    def judge(self, case, backends, until_new: bool) -> tuple[list, bool]:
        """The backends' results on ``case`` and whether they are fresh (not judged before).
        With ``until_new``, stop at the first new finding (shrinking needs only that answer)."""
        if case.case_id in self._judged:
            return self._judged[case.case_id], False
        stop = (lambda r: self.new_finding([r]) is not None) if until_new else None
        results = check_case(case, backends, stop=stop)
        if len(results) == len(backends):
            if len(self._judged) >= _CACHE_SIZE:
                self._judged.clear()
            self._judged[case.case_id] = [r.lightweight() for r in results]
        return results, True

    def new_finding(self, results) -> FindingKey | None:
        """The first ``(backend, gradient, verdict)`` among ``results`` not found before."""
        for r in results:
            for g, gr in r.gradients.items():
                key = FindingKey(r.backend, g, gr.verdict)
                if key.verdict != "pass" and key not in self.found:
                    return key
        return None

    def save_finding(self, f: Finding, round_no: int) -> None:
        self.found.add(f.key)
        self.progress.findings += 1
        self.recorder.record(f.case, [r for r in f.results if r.backend == f.key.backend], "shrunk", round_no,
                             finding=f.key)
        self.progress.update(f"found {f.key.backend} {f.key.gradient}: {f.key.verdict}", force=True)

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
        """Rounds with new seeds over one format group until the deadline or the round limit."""
        for round_no in range(1, (self.config.rounds or 10_000) + 1):
            if self.interrupted:
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                return
            try:
                f = Round(self, backends[0].format, backends, round_no, deadline).run()
            except BudgetExhausted:
                return
            if f is not None:
                self.save_finding(f, round_no)

    def _settings(self, groups: dict) -> dict:
        cfg = self.config
        return {
            "version": __version__,
            "profile": self.profile.name,
            "limits": self.profile.limits.__dict__,
            "examples_per_round": self.examples,
            "rounds": cfg.rounds,
            "time_budget_s": self.budget,
            "seed": cfg.seed,
            "shard": f"{cfg.shard[0]}/{cfg.shard[1]}",
            "backends": [b.name for b in cfg.backends],
            "formats": list(groups),
            "database": str(cfg.database) if cfg.database else None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "status": "running",
        }

    def run(self) -> list:
        """Search every format group in turn; returns the result directory's typed records."""
        cfg = self.config
        groups: dict[str, list] = {}
        for b in cfg.backends:
            groups.setdefault(b.format.name, []).append(b)
        self.recorder = CampaignRecorder(cfg.out, cfg.seed, cfg.shard)
        t0 = time.monotonic()
        self.end = t0 + self.budget
        info = self._settings(groups)
        self.recorder.campaign(info)
        previous = self._catch_sigint()
        try:
            for gi, backends in enumerate(groups.values()):
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
            info.update({
                "status": self.status,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "duration_s": round(time.monotonic() - t0, 3),
                "cases": self.progress.cases,
                "findings": self.progress.findings,
            })
            self.recorder.campaign(info)
            self.recorder.close()
            self.progress.update("", force=True)
            self.progress.done()
        return read_results(cfg.out)


def default_backends() -> list:
    """Every available CPU backend."""
    from .backends import all_backends

    return [b for b in all_backends().values() if b.device == "cpu" and b.availability()[0]]

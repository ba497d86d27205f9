"""Fuzz campaigns: hypothesis searches cases, every backend is judged, findings are shrunk and kept.

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

import hashlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, Verbosity, assume, given, settings, target
from hypothesis import seed as hypothesis_seed
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import HypothesisException

from . import __version__
from .check import exact_gradients, model_for, run_backend
from .errors import DifftestError
from .geometry import GRADIENTS
from .results import ResultsWriter, read_results
from .strategies import Limits, cases


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


def _derive_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


#: How far past the time budget the shrinking of a last-minute finding may run.
SHRINK_GRACE_S = 5.0


class BudgetExhausted(BaseException):
    """Raised inside the hypothesis test to end a search on time (BaseException: hypothesis
    lets it through instead of treating it as a failure to shrink)."""


class Finding(Exception):
    """A ``(backend, gradient, verdict)`` not seen before, on ``case``."""

    def __init__(self, key: tuple[str, str, str], case, results):
        super().__init__(f"{key[0]} {key[1]}: {key[2]}")
        self.key, self.case, self.results = key, case, results


_FINDING_TYPES: dict[tuple, type] = {}


def _finding_type(key: tuple[str, str, str]) -> type:
    """One exception class per finding key, so hypothesis shrinks each as its own failure."""
    if key not in _FINDING_TYPES:
        name = "Finding_" + "_".join(k.replace("-", "_") for k in key)
        _FINDING_TYPES[key] = type(name, (Finding,), {})
    return _FINDING_TYPES[key]


@dataclass
class Progress:
    """Cases done, findings so far, elapsed: a live line on a terminal, plain lines in logs."""

    stream: object = field(default_factory=lambda: sys.stderr)
    enabled: bool = True
    started: float = field(default_factory=time.monotonic)
    cases: int = 0
    findings: int = 0
    _last: float = 0.0

    @property
    def live(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, note: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        period = 0.25 if self.live else 15.0
        if not force and now - self._last < period:
            return
        self._last = now
        line = f"difftest: {self.cases} cases, {self.findings} findings, {now - self.started:.0f}s elapsed {note}"
        if self.live:
            self.stream.write("\r" + line[:120].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.live:
            self.stream.write("\n")
            self.stream.flush()


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


class _Round:
    """State of one hypothesis run (one round of one format group)."""

    def __init__(self):
        self.failing: dict[str, Finding] = {}  # case_id -> the finding it raised
        self.first_failure_at: float | None = None
        self.last_failure: Finding | None = None


class Campaign:
    """Runs a campaign and writes its result directory."""

    def __init__(self, config: CampaignConfig):
        self.config = config
        self.profile = config.profile
        self.examples = config.examples or self.profile.examples
        self.budget = config.time_budget if config.time_budget is not None else self.profile.time_budget
        self.writer: ResultsWriter | None = None
        self.progress = Progress(enabled=config.progress)
        self.status = "running"
        self.found: set[tuple[str, str, str]] = set()
        self._env_ids: dict[str, str] = {}
        self._interrupted = False
        self._evaluated: dict[str, list] = {}  # case_id -> results (raw outputs kept for non-pass only)

    # --- evaluation of one case -------------------------------------------------------

    def _record(self, case, results, phase: str, model_s: float | None = None, **extra) -> None:
        case_file = None
        if any(r.verdict != "pass" for r in results):
            case_file = self.writer.save_case(case, case.case_id)
        for r in results:
            if r.backend not in self._env_ids:
                self._env_ids[r.backend] = self.writer.environment(r.environment)
            rec = {
                "case_id": case.case_id,
                "backend": r.backend,
                "format": r.format,
                "gradients": {g: x.as_dict() for g, x in r.gradients.items()},
                "geometry": case.geometry.as_dict(),
                "batch_extension": case.geometry.N > 1,
                "phase": phase,
                "seed": self.config.seed,
                "shard": f"{self.config.shard[0]}/{self.config.shard[1]}",
                "timings": {"backend_s": r.seconds, "model_s": model_s},
                "environment_id": self._env_ids[r.backend],
            }
            if r.error:
                rec["traceback"] = r.error
            if case_file and r.verdict != "pass":
                rec["case_file"] = case_file
                if r.outputs is not None:
                    rec["outputs_file"] = self.writer.save_outputs(case.case_id, r.backend, r.outputs)
            rec.update(extra)
            self.writer.write(rec)

    def _evaluate(self, case, backends, stop_at_new: bool):
        """Judge the backends on ``case`` (shared exact spec and model). With ``stop_at_new``,
        stop at the first new finding (shrinking needs only that answer)."""
        t0 = time.perf_counter()
        exact = exact_gradients(case)
        model = model_for(case, case.format)
        model_s = time.perf_counter() - t0
        results = []
        for b in backends:
            results.append(run_backend(b, case, model, exact))
            if stop_at_new and self._new_finding(results[-1:]):
                break
        return results, self._new_finding(results), model_s

    def _new_finding(self, results) -> tuple[str, str, str] | None:
        """The first ``(backend, gradient, verdict)`` among ``results`` not found before."""
        for r in results:
            for g in GRADIENTS:
                key = (r.backend, g, r.gradients[g].verdict)
                if key[2] != "pass" and key not in self.found:
                    return key
        return None

    # --- one hypothesis round ------------------------------------------------------------

    def _round(self, fmt, backends, round_no: int, deadline: float) -> Finding | None:
        cfg = self.config
        k, n = cfg.shard
        state = _Round()
        names = ",".join(b.name for b in backends)

        def fail(key, case, results):
            exc = _finding_type(key)(key, case, results)
            state.failing[case.case_id] = exc
            state.last_failure = exc
            if state.first_failure_at is None:
                state.first_failure_at = time.monotonic()
            raise exc

        def probe(case):
            cid = case.case_id
            if n > 1:
                assume(shard_of(cid, n) == k)
            if self._interrupted:
                raise BudgetExhausted  # hypothesis may swallow a KeyboardInterrupt while shrinking
            shrinking = state.first_failure_at is not None
            now = time.monotonic()
            if not shrinking and now > deadline:
                raise BudgetExhausted
            if shrinking:
                if cid in state.failing:  # replays of known failures stay failures
                    raise state.failing[cid]
                if now > min(state.first_failure_at + self.profile.shrink_seconds, self.end + SHRINK_GRACE_S):
                    raise BudgetExhausted  # shrink time is up: keep the smallest failure reached
            if cid in self._evaluated:  # hypothesis repeats simple cases: judge once, record once
                results = self._evaluated[cid]
                new = self._new_finding(results)
                if new is not None:
                    fail(new, case, results)
                return
            results, new, model_s = self._evaluate(case, backends, stop_at_new=shrinking)
            if len(results) == len(backends):
                if len(self._evaluated) > 2048:
                    self._evaluated.clear()
                # raw outputs are kept only where a reproducer may need them
                self._evaluated[cid] = [r if r.verdict != "pass" else r.without_outputs() for r in results]
            if not shrinking:
                self._record(case, results, "search", model_s=model_s, round=round_no)
                self.progress.cases += 1
                self.progress.update(f"[{fmt.name}, round {round_no}]")
                for r in results:
                    for g, x in r.gradients.items():
                        if x.verdict in ("pass", "order") and x.max_ratio < float("inf"):
                            target(min(x.max_ratio, 1e6), label=f"{r.backend}:{g}")
            if new is not None:
                fail(new, case, results)

        test = settings(
            max_examples=self.examples,
            deadline=None,
            database=DirectoryBasedExampleDatabase(str(cfg.database)) if cfg.database else None,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            verbosity=Verbosity.quiet,
            print_blob=False,
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        )(given(cases(fmt, limits=self.profile.limits))(probe))
        # A stable database key: tomorrow's run of the same campaign replays today's failures first.
        test._hypothesis_internal_database_key = hashlib.sha256(
            f"difftest|{self.profile.name}|{fmt.name}|{names}|{k}/{n}|{sorted(self.found)}".encode()
        ).digest()
        test = hypothesis_seed(_derive_seed(cfg.seed, k, n, fmt.name, round_no))(test)
        try:
            test()
        except Finding as f:
            return f
        except BudgetExhausted:
            if state.last_failure is not None:  # shrinking was cut short: keep the smallest so far
                return state.last_failure
            raise
        except HypothesisException as exc:  # e.g. a flaky backend: keep what failed, unshrunk
            return state.last_failure or self._note(f"hypothesis stopped the {fmt.name} search: {exc}")
        return None

    def _note(self, text: str) -> None:
        self.progress.stream.write(f"difftest: {text}\n")
        return None

    def _save_finding(self, f: Finding, round_no: int) -> None:
        self.found.add(f.key)
        self.progress.findings += 1
        backend, gradient, verdict = f.key
        self._record(
            f.case, [r for r in f.results if r.backend == backend], "shrunk",
            round=round_no, finding={"backend": backend, "gradient": gradient, "verdict": verdict},
        )
        self.progress.update(f"found {backend} {gradient}: {verdict}", force=True)

    # --- the campaign ----------------------------------------------------------------------

    def _catch_sigint(self):
        """Remember Ctrl-C even where hypothesis absorbs the KeyboardInterrupt (it stops a shrink
        and reports the failure instead); returns the previous handler, or None off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self._interrupted = True
            raise KeyboardInterrupt

        return signal.signal(signal.SIGINT, handler)

    def run(self) -> list[dict]:
        cfg = self.config
        groups: dict[str, list] = {}
        for b in cfg.backends:
            groups.setdefault(b.format.name, []).append(b)
        self.writer = ResultsWriter(cfg.out, fresh=True)
        started = time.time()
        t0 = time.monotonic()
        self.end = t0 + self.budget
        info = {
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
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "status": "running",
        }
        self.writer.campaign(info)
        previous = self._catch_sigint()
        try:
            for gi, (fmt_name, backends) in enumerate(groups.items()):
                remaining = self.budget - (time.monotonic() - t0)
                share = remaining / (len(groups) - gi)  # unused time passes to later groups
                deadline = time.monotonic() + share
                fmt = backends[0].format
                for round_no in range(1, (cfg.rounds or 10_000) + 1):  # new seeds until time or rounds run out
                    if self._interrupted:
                        raise KeyboardInterrupt
                    if time.monotonic() > deadline:
                        break
                    try:
                        f = self._round(fmt, backends, round_no, deadline)
                    except BudgetExhausted:
                        break
                    if f is not None:
                        self._save_finding(f, round_no)
            if self._interrupted:
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
            self.writer.campaign(info)
            self.writer.close()
            self.progress.update("", force=True)
            self.progress.done()
        return read_results(cfg.out)


def default_backends() -> list:
    """Every available CPU backend."""
    from .backends import all_backends

    return [b for b in all_backends().values() if b.device == "cpu" and b.availability()[0]]

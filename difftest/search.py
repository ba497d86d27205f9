"""One search round: a hypothesis run that judges drawn cases and shrinks the first new finding.

A round searches one format group. Its test function (:meth:`Round.probe`) has two jobs:

* **search** (:meth:`Round.search_step`): judge every backend on the drawn case, record the
  result lines, steer with ``hypothesis.target`` towards larger error/bound ratios, and fail
  on the first finding — a ``(backend, gradient, verdict)`` the campaign has not seen;
* **shrink** (:meth:`Round.shrink_step`): once a failure is found, hypothesis calls the test
  on smaller cases; each is judged only until the first new finding, and nothing is recorded
  (only the final minimal case is). Shrinking stops at the profile's shrink time; the smallest
  failure reached is kept.

The time budget ends a round wherever it is (:class:`BudgetExhausted`).
"""

from __future__ import annotations

import hashlib
import time

from hypothesis import HealthCheck, Phase, Verbosity, assume, given, settings, target
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import HypothesisException

from .outcome import FindingKey
from .strategies import cases

#: How far past the time budget the shrinking of a last-minute finding may run.
SHRINK_GRACE_S = 5.0


class BudgetExhausted(BaseException):
    """Raised inside the hypothesis test to end a search on time (BaseException: hypothesis
    lets it through instead of treating it as a failure to shrink)."""


class Finding(Exception):
    """A ``(backend, gradient, verdict)`` not seen before, on ``case``."""

    def __init__(self, key: FindingKey, case, results):
        super().__init__(f"{key.backend} {key.gradient}: {key.verdict}")
        self.key, self.case, self.results = key, case, results


_FINDING_TYPES: dict[tuple, type] = {}


def _finding_type(key: FindingKey) -> type:
    """One exception class per finding key, so hypothesis shrinks each as its own failure."""
    if key not in _FINDING_TYPES:
        name = "Finding_" + "_".join(k.replace("-", "_") for k in key)
        _FINDING_TYPES[key] = type(name, (Finding,), {})
    return _FINDING_TYPES[key]


def derive_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


class Round:
    """One hypothesis run of one format group (see the module docstring)."""

    def __init__(self, campaign, fmt, backends, round_no: int, deadline: float):
        self.campaign, self.fmt, self.backends = campaign, fmt, backends
        self.round_no, self.deadline = round_no, deadline
        self.failing: dict[str, Finding] = {}  # case_id -> the finding it raised
        self.first_failure_at: float | None = None
        self.last_failure: Finding | None = None

    def fail(self, key: FindingKey, case, results):
        exc = _finding_type(key)(key, case, results)
        self.failing[case.case_id] = exc
        self.last_failure = exc
        if self.first_failure_at is None:
            self.first_failure_at = time.monotonic()
        raise exc

    def probe(self, case) -> None:
        c = self.campaign
        k, n = c.config.shard
        if n > 1:
            assume(c.shard_of(case.case_id, n) == k)
        if c.interrupted:
            raise BudgetExhausted  # hypothesis may swallow a KeyboardInterrupt while shrinking
        if self.first_failure_at is None:
            self.search_step(case)
        else:
            self.shrink_step(case)

    def search_step(self, case) -> None:
        c = self.campaign
        if time.monotonic() > self.deadline:
            raise BudgetExhausted
        results, fresh = c.judge(case, self.backends, until_new=False)
        if fresh:
            c.recorder.record(case, results, "search", self.round_no)
            c.progress.cases += 1
            c.progress.update(f"[{self.fmt.name}, round {self.round_no}]")
            for r in results:
                for g, x in r.gradients.items():
                    if x.verdict in ("pass", "order") and x.max_ratio < float("inf"):
                        target(min(x.max_ratio, 1e6), label=f"{r.backend}:{g}")
        new = c.new_finding(results)
        if new is not None:
            self.fail(new, case, results)

    def shrink_step(self, case) -> None:
        c = self.campaign
        if case.case_id in self.failing:  # replays of known failures stay failures
            raise self.failing[case.case_id]
        if time.monotonic() > min(self.first_failure_at + c.profile.shrink_seconds, c.end + SHRINK_GRACE_S):
            raise BudgetExhausted  # shrink time is up: keep the smallest failure reached
        results, _ = c.judge(case, self.backends, until_new=True)
        new = c.new_finding(results)
        if new is not None:
            self.fail(new, case, results)

    def run(self) -> Finding | None:
        """Run the round; the (shrunk) finding, or None when the round found nothing new."""
        c = self.campaign
        k, n = c.config.shard
        test = settings(
            max_examples=c.examples,
            deadline=None,
            database=DirectoryBasedExampleDatabase(str(c.config.database)) if c.config.database else None,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            verbosity=Verbosity.quiet,
            print_blob=False,
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        )(given(cases(self.fmt, limits=c.profile.limits))(self.probe))
        # A stable database key: tomorrow's run of the same campaign replays today's failures first.
        names = ",".join(b.name for b in self.backends)
        test._hypothesis_internal_database_key = hashlib.sha256(
            f"difftest|{c.profile.name}|{self.fmt.name}|{names}|{k}/{n}|{sorted(c.found)}".encode()
        ).digest()
        # The seed as hypothesis.seed sets it, without the settings it also forces (database=None:
        # a seeded run would neither replay nor save failures).
        test._hypothesis_internal_use_seed = derive_seed(c.config.seed, k, n, self.fmt.name, self.round_no)
        try:
            test()
        except Finding as f:
            return f
        except BudgetExhausted:
            if self.last_failure is not None:  # shrinking was cut short: keep the smallest so far
                return self.last_failure
            raise
        except HypothesisException as exc:  # e.g. a flaky backend: keep what failed, unshrunk
            if self.last_failure is None:
                c.progress.note(f"hypothesis stopped the {self.fmt.name} search: {exc}")
            return self.last_failure
        return None

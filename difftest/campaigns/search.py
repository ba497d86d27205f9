"""Search rounds: hypothesis runs that judge drawn cases and shrink every new finding.

A round searches one :class:`Group` (backends of one format that take the same geometry, judged
on the same cases) with up to ``examples`` drawn cases. Its test function
(:meth:`Round.probe`) has two jobs:

* **search** (:meth:`Round.search_step`): judge every backend on the drawn case, record the
  result lines, steer with ``hypothesis.target`` towards larger error/bound ratios, remember
  the choices that drew the first case of each non-``pass`` key, and fail on the first
  finding — a ``(backend, gradient, verdict)`` the campaign has not found;
* **shrink** (:meth:`Round.shrink_step`): hypothesis then calls the test on smaller cases;
  each is judged only until the finding shows, and nothing is recorded (only the final
  minimal case is).

After a finding the round goes on where it stopped (a new hypothesis run with the examples
left, its own seed), so ``--examples N --rounds 1`` draws N cases. A key that a case showed
next to another, and that no later case raised, is shrunk on its own afterwards
(:func:`shrink_known`): hypothesis replays the choices that drew it and shrinks them.

Shrinking is part of the time budget: it stops at ``shrink_seconds`` per finding or at the
campaign's end, whichever comes first, keeping the smallest failure reached; and it is part of
the work: it stops after ``shrink_steps`` judged cases per finding (a real layer's case costs
far more than a small one, and hypothesis may try tens of thousands). A campaign bounded by work
(``rounds`` and no time budget) has no clock, so the same seed gives the same reproducers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, Verbosity, assume, given, settings, target
from hypothesis.control import current_build_context
from hypothesis.database import DirectoryBasedExampleDatabase, InMemoryExampleDatabase, choices_to_bytes
from hypothesis.errors import HypothesisException

from ..errors import BudgetExhausted
from ..values.formats import Format
from ..values.outcome import FindingKey
from .strategies import campaign_cases
from ..values.supports import ALL, Supports
from ..values.verdicts import is_finding


@dataclass(frozen=True)
class Group:
    """Backends searched on the same cases: one format (the oracle and the NF model are computed once
    per case for all of them) and one geometry they all take (``supports``); ``realistic``: the share
    of draws that are real layers (:func:`difftest.strategies.campaign_cases`); ``cost``: the
    estimated seconds of one of its cases, on average (what :mod:`difftest.jobs` balances).
    ``kind`` (``"small"``, ``"real"``): the group searching only small cases or only real layers
    (:meth:`only`), with seeds of its own."""

    fmt: Format
    backends: tuple
    supports: Supports = ALL
    realistic: float = 0.0
    cost: float = 0.0
    kind: str = ""

    def only(self, kind: str) -> "Group":
        """This group drawing only small cases (``"small"``) or only real layers (``"real"``)."""
        return dataclasses.replace(self, realistic=1.0 if kind == "real" else 0.0, kind=kind)

    @property
    def label(self) -> str:
        """The format's name, and what the backends leave out where they do (``binary32 (no dilation)``)."""
        return self.fmt.name if not self.supports.label else f"{self.fmt.name} ({self.supports.label})"

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.backends]


class Finding(Exception):
    """A ``(backend, gradient, verdict)`` not seen before, on ``case``."""

    def __init__(self, key: FindingKey, case, results, choices: tuple = ()):
        super().__init__(f"{key.backend} {key.gradient}: {key.verdict}")
        self.key, self.case, self.results, self.choices = key, case, results, choices


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
    """One hypothesis run of one :class:`Group` (see the module docstring).

    ``examples`` cases at most; ``segment`` numbers the runs of one round (a round goes on after
    a finding, and an interleaved campaign searches it in slices); ``target``/``choices``: shrink
    that one key from the choices that drew it.
    """

    def __init__(self, campaign, group: Group, round_no: int, deadline: float, examples: int,
                 segment: int = 0, target=None, choices=None):
        self.campaign, self.group, self.fmt, self.backends = campaign, group, group.fmt, list(group.backends)
        self.round_no, self.deadline, self.examples, self.segment = round_no, deadline, examples, segment
        self.target, self.choices = target, choices
        self.failing: dict[str, Finding] = {}  # case_id -> the finding it raised
        self.first_failure_at: float | None = None
        self.last_failure: Finding | None = None
        self.searched = 0  # cases drawn by the search (not by shrinking)
        self.shrink_steps = 0  # cases judged while shrinking

    def fail(self, key: FindingKey, case, results):
        exc = _finding_type(key)(key, case, results, tuple(current_build_context().data.choices))
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
        if case.case_id in self.failing:  # replays of known failures stay failures
            raise self.failing[case.case_id]
        if self.first_failure_at is None and self.target is None:
            self.search_step(case)
        else:
            self.shrink_step(case)

    def search_step(self, case) -> None:
        c = self.campaign
        if time.monotonic() > self.deadline or c.stopped_on:
            raise BudgetExhausted
        self.searched += 1
        c.draws += 1
        if case.case_id not in c.recorded and case.case_id not in c._judged:
            c.recorder.keep_case(case)  # before its backends run: a run that dies keeps the case it was on
        results = c.judge(case, self.backends)
        if case.case_id not in c.recorded:  # whatever shrinking judged before: recording is the search's
            c.recorded.add(case.case_id)
            case_file = c.recorder.record(case, results, "search", self.round_no)
            c.note_largest(case, results, case_file)
            c.note_seen(case, results, tuple(current_build_context().data.choices), self.round_no, self.group)
            c.progress.cases += 1
            c.group_cases[self.group.label] = c.group_cases.get(self.group.label, 0) + 1
            c.progress.update(f"[{self.group.label}, round {self.round_no}]")
            for r in results:
                for g, x in r.gradients.items():
                    if x.verdict in ("pass", "order") and x.max_ratio < float("inf"):
                        target(min(x.max_ratio, 1e6), label=f"{r.backend}:{g}")
        new = c.new_finding(results)
        if new is not None:
            self.fail(new, case, results)

    def shrink_step(self, case) -> None:
        c = self.campaign
        self.shrink_steps += 1
        if self.shrink_steps > c.profile.shrink_steps:
            raise BudgetExhausted  # shrink work is done: keep the smallest failure reached
        if c.end < math.inf:  # a campaign bounded by work shrinks as far as hypothesis goes
            started = self.first_failure_at or self.started
            if time.monotonic() > min(started + c.profile.shrink_seconds, c.end):
                raise BudgetExhausted  # shrink time is up: keep the smallest failure reached
        wanted = (lambda key: key == self.target) if self.target else (lambda key: key not in c.found)
        results = c.judge(case, self.backends, stop=lambda r: any(wanted(k) for k in _keys(r)))
        key = next((k for r in results for k in _keys(r) if wanted(k)), None)
        if key is not None:
            self.fail(key, case, results)

    def _test(self):
        c = self.campaign
        k, n = c.config.shard
        if self.target is None:
            database = DirectoryBasedExampleDatabase(str(c.config.database)) if c.config.database else None
            names = ",".join(b.name for b in self.backends)
            key = f"difftest|{c.profile.name}|{self.group.label}{self.group.kind}|{names}|{k}/{n}|{sorted(c.found)}"
            reuse = [Phase.reuse] if key not in c.replayed else []  # saved failures once, not every slice
            c.replayed.add(key)
            phases = [Phase.explicit, *reuse, Phase.generate, Phase.target] + ([Phase.shrink] if c.config.shrink else [])
        else:  # replay the choices that drew the target's case, then shrink them
            database, phases = InMemoryExampleDatabase(), [Phase.reuse, Phase.shrink]
            key = f"difftest-target|{self.target}"
        test = settings(
            max_examples=self.examples,
            deadline=None,
            database=database,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            verbosity=Verbosity.quiet,
            print_blob=False,
            phases=phases,
        )(given(campaign_cases(self.fmt, c.profile.limits, self.group.realistic, c.profile.max_macs,
                               extensions=self.group.supports, max_batch=c.profile.real_batch))(self.probe))
        # A stable database key: tomorrow's run of the same campaign replays today's failures first.
        test._hypothesis_internal_database_key = hashlib.sha256(key.encode()).digest()
        if self.target is not None:
            database.save(test._hypothesis_internal_database_key, choices_to_bytes(self.choices))
        # The seed as hypothesis.seed sets it, without the settings it also forces (database=None:
        # a seeded run would neither replay nor save failures).
        test._hypothesis_internal_use_seed = derive_seed(c.config.seed, k, n, self.group.label + self.group.kind,
                                                         self.round_no, self.segment, self.target or "")
        return test

    def run(self) -> Finding | None:
        """Run; the (shrunk) finding, or None when nothing new failed."""
        self.started = time.monotonic()
        try:
            with _strategies_only():
                self._test()()
        except Finding as f:
            return f
        except BudgetExhausted:
            if self.last_failure is not None:  # shrinking was cut short: keep the smallest so far
                return self.last_failure
            raise
        except HypothesisException as exc:  # e.g. a flaky backend: keep what failed, unshrunk
            if self.last_failure is None:
                self.campaign.progress.note(f"hypothesis stopped the {self.group.label} search: {exc}")
            return self.last_failure
        return None


@contextlib.contextmanager
def _strategies_only():
    """Draw from the campaign's strategies alone: hypothesis (>= 6.131) also draws literals found in
    the source of loaded local modules, so a seed's cases would change with an import (a spawned
    job, a report) or any edit of a literal. Private hypothesis API, used where it exists."""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover
        providers = None
    get = getattr(providers, "_get_local_constants", None)
    cache = getattr(getattr(providers, "CONSTANTS_CACHE", None), "cache", None)
    empty = getattr(providers, "Constants", None)
    if get is None or cache is None or empty is None:
        yield
        return
    providers._get_local_constants = empty
    cache.clear()
    try:
        yield
    finally:
        providers._get_local_constants = get
        cache.clear()


def _keys(result):
    """The non-``pass`` keys of one backend result."""
    return [FindingKey(result.backend, g, gr.verdict) for g, gr in result.gradients.items() if is_finding(gr.verdict)]

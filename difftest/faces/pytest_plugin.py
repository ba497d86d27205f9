"""pytest plugin (entry point ``pytest11``): ``pytest --difftest`` runs the campaign as test items.

``--difftest`` adds a collector ``difftest`` to the session, next to whatever else is collected,
with one collector per backend and one item per gradient under it: node ids
``difftest::<backend>::<gradient>``. They are ordinary collected items, so the collected count,
``--collect-only``, ``-k``, ``-m difftest`` and deselection all see them.

Each backend's campaign runs once, when the first of its items runs, into
``<--difftest-out>/<backend>``; the item fails when the gradient has a verdict at or above
``--difftest-fail-on``, and the failure names the verdicts, ratios and the shrunk reproducers with
the command that replays them. A campaign is bounded by ``--difftest-time-budget`` (default: the
profile's budget shared among the backends) or, with ``--difftest-rounds`` and no time budget, by
work alone: at most ``--difftest-rounds`` hypothesis rounds of ``--difftest-examples`` examples per
format, the same cases for the same seed on any machine.

Each backend runs in a worker process of its own (:mod:`difftest.isolation`): one that crashes or
hangs (``--difftest-backend-timeout``) gets ``error`` findings, and the session goes on.

Settings come from where ``difftest run`` takes them (:mod:`difftest.config`): an option given on
the command line, else its ``DIFFTEST_*`` variable, else ``[tool.difftest]`` in the nearest
``pyproject.toml`` (``backends``, ``profile``, ``time_budget`` — the whole campaign's, shared
among the backends —, ``seed``, ``fail_on``, ``database``, ``expected``, ``backend_timeout``), else
the default. The result directories are the plugin's own (``--difftest-out``, default
``reports/pytest``): ``out`` is ``run``'s.

With pytest-xdist, a backend's items must stay on one worker, so that its campaign runs once. They
share a scope (``difftest::<backend>``), which ``--dist loadscope`` and ``loadfile`` keep together.
For ``--dist loadgroup`` each item's name carries its group, ``<gradient>@<backend>`` — the node id
pytest-xdist itself gave grouped items until pytest 9.2, where its own renaming stopped taking
effect (pytest-xdist#1386). The modes that spread items (``load``, ``worksteal``, ``each``) are
refused with a usage error.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ..config import PROFILE_NAMES
from ..values.geometry import GRADIENTS

#: xdist distribution modes that keep each backend's items (one group, one scope) on one worker.
_DIST_MODES_KEEPING_GROUPS = ("no", "loadgroup", "loadscope", "loadfile")


def pytest_addoption(parser):
    g = parser.getgroup("difftest", "difftest fuzz campaign")
    g.addoption("--difftest", action="store_true", help="add the difftest campaign as test items (backend × gradient)")
    g.addoption("--difftest-backend", action="append", default=[], metavar="NAME",
                help="backend to put on trial (repeatable; default every available CPU backend)")
    g.addoption("--difftest-profile", default=None, choices=list(PROFILE_NAMES),
                help="campaign profile (default: [tool.difftest] profile, else quick)")
    g.addoption("--difftest-time-budget", type=float, default=None, metavar="SECONDS",
                help="time budget per backend (default: the profile's budget shared among the backends; "
                     "none with --difftest-rounds)")
    g.addoption("--difftest-examples", type=int, default=None, metavar="N",
                help="hypothesis examples per search round (default: the profile's)")
    g.addoption("--difftest-rounds", type=int, default=None, metavar="R",
                help="at most R search rounds per format; without --difftest-time-budget the campaign is then "
                     "bounded by work (rounds × examples), not time")
    g.addoption("--difftest-seed", type=int, default=None, help="campaign seed (default: [tool.difftest] seed, else 0)")
    g.addoption("--difftest-out", default="reports/pytest", metavar="DIR",
                help="result directories go here, one per backend: DIR/<backend>")
    g.addoption("--difftest-fail-on", default=None, choices=["order", "precision"],
                help="fail an item on: order = any verdict but pass (default); precision = precision or error")
    g.addoption("--difftest-database", default=None, metavar="DIR",
                help="hypothesis example database (default: [tool.difftest] database, else .difftest/hypothesis)")
    g.addoption("--difftest-expected", default=None, metavar="FILE",
                help="expected-findings file (TOML): declared findings pass, with the reason in the report")
    g.addoption("--difftest-backend-timeout", type=float, default=None, metavar="SECONDS",
                help="seconds one backend call may take before its worker is killed (verdict error; default 600)")
    g.addoption("--difftest-no-isolate", action="store_true",
                help="run the backends in the pytest process, not in worker processes (for debugging)")


def pytest_configure(config):
    config.addinivalue_line("markers", "difftest: a difftest campaign item (added by --difftest)")
    if not config.getoption("--difftest"):
        return
    for option in ("--difftest-examples", "--difftest-rounds"):
        value = config.getoption(option)
        if value is not None and value < 1:
            raise pytest.UsageError(f"{option} must be >= 1, got {value}")
    for option in ("--difftest-time-budget", "--difftest-backend-timeout"):
        value = config.getoption(option)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise pytest.UsageError(f"{option} must be > 0 seconds, got {value}")
    _backend_names(config)  # unknown names are a usage error, before anything runs
    from ..errors import DifftestError

    try:
        _expectations(config)
    except DifftestError as exc:
        raise pytest.UsageError(f"--difftest-expected: {exc}") from None
    dist = config.getoption("dist", default="no")
    distributed = bool(config.getoption("tx", default=None))  # pytest-xdist starts workers
    if distributed and not hasattr(config, "workerinput") and dist not in _DIST_MODES_KEEPING_GROUPS:
        raise pytest.UsageError(
            f"--difftest with pytest-xdist --dist {dist} would split a backend's items over workers and run its "
            "campaign on each: use --dist loadgroup (or loadscope, loadfile)"
        )


def _settings(config):
    """``DIFFTEST_*`` and ``[tool.difftest]`` (:func:`difftest.config.load`), read once per session; a
    bad value is a usage error naming where it came from."""
    from ..config import load
    from ..errors import DifftestError

    if SETTINGS_KEY not in config.stash:
        try:
            config.stash[SETTINGS_KEY] = load()
        except DifftestError as exc:
            raise pytest.UsageError(str(exc)) from None
    return config.stash[SETTINGS_KEY]


def setting(config, option: str, key: str):
    """``option`` where given, else the environment's or the file's ``key``, else its default
    (:meth:`difftest.config.Config.resolve`, as the CLI resolves it)."""
    return _settings(config).resolve(key, config.getoption(option))


def _backend_names(config) -> list[str] | None:
    """The backend names (``--difftest-backend``, else ``backends`` of :mod:`difftest.config`; None:
    the default set; a spec ``MODULE:ATTR`` gives the names of its backends); an unknown name is a
    usage error."""
    from ..backends import all_backends, spec_backends
    from ..errors import DifftestError

    names = setting(config, "--difftest-backend", "backends")
    if not names:
        return None
    known = all_backends()
    unknown = [n for n in names if ":" not in n and n not in known]
    if unknown:
        raise pytest.UsageError(
            f"--difftest-backend: unknown backend {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
        )
    out = []
    for n in names:
        try:
            out += [b.name for b in spec_backends(n)] if ":" in n else [n]
        except DifftestError as exc:
            raise pytest.UsageError(f"--difftest-backend: {exc}") from None
    return list(dict.fromkeys(out))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Put the ``difftest`` collector into the session's collection, next to what it collects."""
    outcome = yield
    if isinstance(collector, pytest.Session) and collector.config.getoption("--difftest"):
        report = outcome.get_result()
        report.result.append(DifftestCollector.from_parent(collector, name="difftest", nodeid="difftest"))


class DifftestCollector(pytest.Collector):
    """The session's campaign: one :class:`BackendCampaign` per backend."""

    def collect(self):
        from ..backends import get_backend
        from ..campaigns.campaign import default_backends

        names = _backend_names(self.config)
        backends = [get_backend(n) for n in names] if names is not None else default_backends()
        for b in backends:
            yield BackendCampaign.from_parent(self, name=b.name, backend=b, n_backends=len(backends))


class BackendCampaign(pytest.Collector):
    """One backend: its campaign's items, one per gradient, kept together on one xdist worker."""

    def __init__(self, *, backend, n_backends: int, **kwargs):
        super().__init__(**kwargs)
        self.backend, self.n_backends = backend, n_backends
        self.add_marker(pytest.mark.difftest)

    def collect(self):
        # an xdist worker collects with dist "no" and says loadgroup (xdist.remote.setup_config)
        grouped = getattr(self.config.option, "loadgroup", False) or self.config.getoption("dist", default="no") == "loadgroup"
        for g in GRADIENTS:
            yield CampaignItem.from_parent(self, name=f"{g}@{self.backend.name}" if grouped else g,
                                           backend=self.backend.name, gradient=g, n_backends=self.n_backends)


#: This session's campaigns, ``{backend name: (result directory, records) or the exception it raised}``.
CAMPAIGNS_KEY = pytest.StashKey[dict]()
SETTINGS_KEY = pytest.StashKey[object]()


def campaign_config(config, backend, n_backends: int):
    """The :class:`~difftest.campaign.CampaignConfig` of ``backend``'s campaign from the options."""
    from ..campaigns.campaign import PROFILES, CampaignConfig

    profile = PROFILES[setting(config, "--difftest-profile", "profile")]
    rounds = config.getoption("--difftest-rounds")
    budget = config.getoption("--difftest-time-budget")  # per backend
    if budget is None:  # run's time_budget is the whole campaign's: shared, as the profile's is
        total = _settings(config).get("time_budget")
        budget = (math.inf if rounds is not None else profile.time_budget / n_backends) if total is None \
            else total / n_backends
    from ..records.store import file_name

    database = setting(config, "--difftest-database", "database")
    return CampaignConfig(
        backends=[backend], profile=profile, examples=config.getoption("--difftest-examples"), rounds=rounds,
        time_budget=budget, seed=setting(config, "--difftest-seed", "seed"),
        out=Path(config.getoption("--difftest-out")) / file_name(backend.name),
        database=None if database is None else Path(database), progress=False, expectations=_expectations(config),
        isolate=not config.getoption("--difftest-no-isolate"),
        backend_timeout=setting(config, "--difftest-backend-timeout", "backend_timeout"),
        scheduler=_settings(config).resolve("scheduler"),
    )


def _expectations(config):
    from ..records.expectations import Expectations

    path = setting(config, "--difftest-expected", "expected")
    return Expectations.load(path) if path else Expectations()


def _campaign(config, backend_name: str, n_backends: int) -> tuple[Path, list]:
    campaigns = config.stash.setdefault(CAMPAIGNS_KEY, {})
    if backend_name not in campaigns:
        from ..backends import get_backend
        from ..campaigns.campaign import Campaign

        b = get_backend(backend_name)
        ok, reason = b.availability()
        if not ok:
            pytest.skip(f"{backend_name} is not available here: {reason}")
        cfg = campaign_config(config, b, n_backends)
        try:
            campaigns[backend_name] = (cfg.out, Campaign(cfg).run())
        except Exception as exc:  # the backend's other items report it too, without running it again
            campaigns[backend_name] = exc
    result = campaigns[backend_name]
    if isinstance(result, Exception):
        raise result
    return result


class CampaignFailure(Exception):
    pass


class CampaignItem(pytest.Item):
    def __init__(self, *, backend: str, gradient: str, n_backends: int, **kwargs):
        super().__init__(**kwargs)
        self.backend, self.gradient, self.n_backends = backend, gradient, n_backends

    def runtest(self):
        from ..judge.explain import counts_text, finding_text, format_ratio
        from ..records.results import findings, summarize

        out, records = _campaign(self.config, self.backend, self.n_backends)
        fail_on = setting(self.config, "--difftest-fail-on", "fail_on")
        expectations = _expectations(self.config)
        cell = summarize(records).get(self.backend, {}).get(self.gradient)
        if cell is None or cell.cases == 0:
            pytest.skip("the campaign checked no case")
        if any(expectations.fails(r, self.gradient, fail_on) for r in records if r.backend == self.backend):
            lines = [f"{self.backend} {self.gradient}: {cell.cases} cases, verdicts {counts_text(cell.counts)}, "
                     f"worst ratio {format_ratio(cell.worst_ratio)} (TorchLean), "
                     f"{format_ratio(cell.worst_ratio_order_free)} (order-free)"]
            for r in findings(records):
                f = r.finding
                if f.gradient == self.gradient and expectations.fails(r, f.gradient, fail_on):
                    text = finding_text(f.backend, f.gradient, r.gradients[f.gradient], r.case_file, out,
                                        r.largest_case, r.requested)
                    lines.append(f"{r.phase} {text}")  # shrunk, or unshrunk: the first case that showed it
            raise CampaignFailure("\n".join(lines))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, CampaignFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):  # a line number, so that skip marks added by others can be located
        return self.path, 0, f"difftest[{self.backend}:{self.gradient}]"

"""pytest plugin (entry point ``pytest11``): ``pytest --difftest`` runs the campaign as test items.

One item per backend × gradient. Each backend's campaign runs once per process, the first time
one of its items runs, into ``<out>/<backend>``; the item fails when the gradient has a verdict
at or above ``--difftest-fail-on``, and the failure names the verdicts, ratios and the shrunk
reproducers with the command that replays them. With pytest-xdist, ``-n auto --dist loadgroup``
keeps a backend's items on one worker (they carry an ``xdist_group`` mark), so each campaign
runs once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .geometry import GRADIENTS


def pytest_addoption(parser):
    g = parser.getgroup("difftest", "difftest fuzz campaign")
    g.addoption("--difftest", action="store_true", help="add the difftest campaign as test items (backend × gradient)")
    g.addoption("--difftest-backend", action="append", default=[], metavar="NAME",
                help="backend to put on trial (repeatable; default every available CPU backend)")
    g.addoption("--difftest-profile", default="quick", choices=["quick", "ci", "nightly"], help="campaign profile")
    g.addoption("--difftest-time-budget", type=float, default=None, metavar="SECONDS",
                help="time budget per backend (default: the profile's budget shared among the backends)")
    g.addoption("--difftest-seed", type=int, default=0, help="campaign seed")
    g.addoption("--difftest-out", default="reports/pytest", metavar="DIR", help="result directories go here")
    g.addoption("--difftest-fail-on", default="order", choices=["order", "precision"],
                help="fail an item on: order = any verdict but pass (default); precision = precision or error")
    g.addoption("--difftest-database", default=".difftest/hypothesis", metavar="DIR", help="hypothesis example database")


def pytest_collection_modifyitems(session, config, items):
    if not config.getoption("--difftest"):
        return
    from .backends import get_backend
    from .campaign import default_backends

    names = config.getoption("--difftest-backend")
    backends = [get_backend(n) for n in names] if names else default_backends()
    for b in backends:
        for g in GRADIENTS:
            item = CampaignItem.from_parent(session, name=f"difftest[{b.name}:{g}]", backend=b.name, gradient=g,
                                            n_backends=len(backends))
            item.add_marker(pytest.mark.xdist_group(b.name))
            items.append(item)


#: This session's finished campaigns, ``{backend name: (result directory, records)}``.
CAMPAIGNS_KEY = pytest.StashKey[dict]()


def _campaign(config, backend_name: str, n_backends: int) -> tuple[Path, list]:
    campaigns = config.stash.setdefault(CAMPAIGNS_KEY, {})
    if backend_name not in campaigns:
        from .backends import get_backend
        from .campaign import PROFILES, Campaign, CampaignConfig

        b = get_backend(backend_name)
        ok, reason = b.availability()
        if not ok:
            pytest.skip(f"{backend_name} is not available here: {reason}")
        profile = PROFILES[config.getoption("--difftest-profile")]
        budget = config.getoption("--difftest-time-budget") or profile.time_budget / n_backends
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        out = Path(config.getoption("--difftest-out")) / (backend_name + (f"-{worker}" if worker else ""))
        records = Campaign(CampaignConfig(
            backends=[b], profile=profile, time_budget=budget, seed=config.getoption("--difftest-seed"),
            out=out, database=Path(config.getoption("--difftest-database")), progress=False,
        )).run()
        campaigns[backend_name] = (out, records)
    return campaigns[backend_name]


class CampaignFailure(Exception):
    pass


class CampaignItem(pytest.Item):
    def __init__(self, *, backend: str, gradient: str, n_backends: int, **kwargs):
        super().__init__(**kwargs)
        self.backend, self.gradient, self.n_backends = backend, gradient, n_backends

    def runtest(self):
        from .explain import counts_text, finding_text, format_ratio
        from .results import findings, summarize
        from .verdicts import fails

        out, records = _campaign(self.config, self.backend, self.n_backends)
        fail_on = self.config.getoption("--difftest-fail-on")
        cell = summarize(records).get(self.backend, {}).get(self.gradient)
        if cell is None or cell.cases == 0:
            pytest.skip("the campaign checked no case in its time budget")
        if any(n and fails(v, fail_on) for v, n in cell.counts.items()):
            lines = [f"{self.backend} {self.gradient}: {cell.cases} cases, verdicts {counts_text(cell.counts)}, "
                     f"worst ratio {format_ratio(cell.worst_ratio)} (TorchLean), "
                     f"{format_ratio(cell.worst_ratio_order_free)} (order-free)"]
            for r in findings(records):
                f = r.finding
                if f.gradient == self.gradient:
                    lines.append("shrunk " + finding_text(f.backend, f.gradient, r.gradients[f.gradient], r.case_file, out))
            raise CampaignFailure("\n".join(lines))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, CampaignFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, self.name

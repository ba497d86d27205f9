"""Every ``>>>`` example in the package's docstrings runs and shows what it claims."""

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("difftest", "difftest.backends", "difftest.oracles")


def _modules() -> list[str]:
    """The packages and every module under them, less ``__main__`` (importing it runs the CLI)."""
    names = set(PACKAGES)
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names.update(m.name for m in pkgutil.walk_packages(path, prefix=f"{package}."))
    return sorted(n for n in names if not n.endswith(".__main__"))


def _run_doctests(name: str) -> doctest.TestResults:
    return doctest.testmod(importlib.import_module(name), verbose=False, optionflags=doctest.ELLIPSIS)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_pass(name):
    assert _run_doctests(name).failed == 0


def test_the_strategies_example_runs_as_a_doctest():
    assert _run_doctests("difftest.strategies").attempted > 0

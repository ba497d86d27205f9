"""The package layout: top-level backends/ and oracles/ are difftest.backends and difftest.oracles,
nothing else of the checkout is part of difftest, and both pytest entry points collect the tests."""

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTEST = Path(sys.executable).parent / "pytest"


def _without_pythonpath() -> dict[str, str]:
    """The environment, less any PYTHONPATH that could stand in for the installed layout."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("name", ["difftest.tests", "difftest.examples"])
def test_checkout_folders_other_than_backends_and_oracles_are_not_subpackages(name):
    assert not _importable(name)


@pytest.mark.parametrize("name", ["backends", "oracles"])
def test_backends_and_oracles_are_subpackages_from_the_top_level_folders(name):
    module = importlib.import_module(f"difftest.{name}")
    assert Path(module.__file__).resolve().parent == ROOT / name


def test_every_subpackage_of_difftest_is_in_the_distribution():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "difftest").rglob("__init__.py")
             if "__pycache__" not in p.parts}
    assert found <= listed, f"pyproject.toml [tool.setuptools] packages lacks {sorted(found - listed)}"


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_backends_and_oracles_import_from_any_working_directory(where, tmp_path):
    cwd = ROOT if where == "checkout" else tmp_path
    code = "import difftest.backends, difftest.oracles; print(difftest.backends.__file__, difftest.oracles.__file__)"
    run = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=_without_pythonpath(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(ROOT / "backends" / "__init__.py"), str(ROOT / "oracles" / "__init__.py")]


def test_plain_pytest_collects_the_framework_tests():
    """``pytest`` (unlike ``python -m pytest``) does not put the checkout on sys.path.

    No tests collected (torch or onnxruntime missing: the module skips) is fine; an error is not.
    """
    if not PYTEST.is_file():
        pytest.skip(f"no pytest entry point next to {sys.executable}")
    args = [str(PYTEST), "--collect-only", "-q", "-p", "no:cacheprovider", "tests/test_frameworks.py"]
    run = subprocess.run(args, cwd=ROOT, env=_without_pythonpath(), capture_output=True, text=True)
    assert run.returncode in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), run.stdout + run.stderr


def test_the_distribution_has_a_name_of_its_own():
    """PyPI's ``difftest`` is an unrelated project: ours is ``torchlean-difftest``, importing ``difftest``."""
    import importlib.metadata as md
    import tomllib

    import difftest

    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert name == "torchlean-difftest"
    assert md.version(name) == difftest.__version__
    assert name in md.packages_distributions()["difftest"]
    assert "difftest" in {ep.name for ep in md.entry_points(group="console_scripts") if ep.dist.name == name}


def test_openblas_threads_sleep_at_once_unless_the_user_chose():
    """Importing difftest before numpy shortens OpenBLAS's idle spin (it would take the cores of the
    compiled passes between GEMMs); a value the user set, or numpy imported first, is left alone."""
    import os
    import subprocess
    import sys

    code = "import {0}, os; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    run = lambda mods, **extra: subprocess.run([sys.executable, "-c", code.format(mods)], env={**env, **extra},  # noqa: E731
                                               capture_output=True, text=True, check=True).stdout.strip()
    assert run("difftest") == "4"
    assert run("difftest", OPENBLAS_THREAD_TIMEOUT="20") == "20"
    assert run("numpy, difftest") == "None"

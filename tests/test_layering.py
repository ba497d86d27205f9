"""The README's Design rules, as an import contract read from the source (imports inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The mathematics: "imports no backend, campaign or report" (README, Design).
MATH = ("formats", "fparith", "layouts", "case", "exact", "lean", "replay", "orderfree", "compare", "kernels")
#: What runs searches, writes or reads result directories, or faces the user.
ABOVE_THE_MATH = ("backends", "campaign", "search", "jobs", "store", "results", "report", "summary", "cli",
                  "pytest_plugin", "bench", "model", "fingerprint", "isolation", "check", "strategies", "expectations",
                  "distributed", "arguments", "paths")
#: The files of a result directory: "store is the only module that knows a result directory's layout".
LAYOUT_FILES = ("results.jsonl", "campaign.json", "environments.json", "expected.json", "fingerprints.json",
                "model.json", "report.html")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ("backends", "oracles"):
        parts = ["difftest", *parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    files = [p for d in ("difftest", "backends", "oracles") for p in (ROOT / d).rglob("*.py")]
    return {_module(p): p for p in files}


def _imports(name: str, path: Path) -> set[str]:
    """The difftest modules ``name`` imports anywhere in its source (``from .x import y`` gives ``difftest.x``
    and, where ``y`` is a module, ``difftest.x.y``)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("difftest"):
                out.add(module)
                out.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("difftest"))
    return {m for m in out if m in SOURCES}


SOURCES = _sources()
IMPORTS = {name: _imports(name, path) for name, path in SOURCES.items()}


def _top(module: str) -> str:
    """``difftest.backends.base`` -> ``backends``; ``difftest.check`` -> ``check``."""
    return module.split(".")[1] if module.count(".") else module


def _breaking(importers, forbidden) -> list[str]:
    return sorted(f"{m} imports {i}" for m in importers for i in IMPORTS[m] if _top(i) in forbidden)


def test_the_reader_finds_the_modules_and_their_imports():
    assert {"difftest.check", "difftest.backends.base", "difftest.oracles"} <= set(SOURCES)
    assert "difftest.compare" in IMPORTS["difftest.check"]
    assert "difftest.backends.base" in IMPORTS["difftest.check"]  # an import inside a function counts


@pytest.mark.parametrize("math", MATH)
def test_the_mathematics_imports_no_backend_campaign_report_or_face(math):
    assert _breaking([f"difftest.{math}"], ABOVE_THE_MATH) == []


@pytest.mark.parametrize("value", ["geometry", "supports", "verdicts"])
def test_the_value_types_import_no_mathematics(value):
    assert _breaking([f"difftest.{value}"], MATH + ABOVE_THE_MATH) == []


def test_backends_know_the_interface_the_case_and_format_types_only():
    backends = [m for m in SOURCES if m.startswith("difftest.backends")]
    assert _breaking(backends, set(ABOVE_THE_MATH) - {"backends"} | {"outcome", "explain", "verdicts"}) == []


def test_check_is_the_only_module_that_puts_the_comparison_together():
    assert {m for m, imported in IMPORTS.items() if "difftest.compare" in imported} == {"difftest.check"}


def test_isolation_is_the_only_module_that_starts_backend_processes():
    starts = {name for name, path in SOURCES.items() if "forkserver" in path.read_text(encoding="utf-8")
              and name != "difftest.isolation"}
    assert starts == set()


def test_results_and_report_import_none_of_the_mathematics():
    assert _breaking(["difftest.results", "difftest.report", "difftest.summary"], MATH + ("backends", "check")) == []


def test_store_is_the_only_module_that_names_a_result_directorys_files():
    """A file name as a value of its own (``"results.jsonl"``), not in a sentence of a help text."""
    named = set()
    for name, path in SOURCES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in LAYOUT_FILES:
                named.add(name)
    assert named <= {"difftest.store"}, named


def test_the_readme_states_these_rules():
    design = (ROOT / "README.md").read_text(encoding="utf-8").split("## Design", 1)[1].split("## Layout", 1)[0]
    for rule in ("imports no backend, campaign or report", "`check` is the only place that assembles",
                 "`isolation` the only place that starts backend processes",
                 "`store` is the only module that knows a result directory's layout",
                 "import none of the mathematics"):
        assert rule in design, rule

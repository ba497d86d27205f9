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


#: The folders of difftest/ in the order of the data flow: a module imports from its own folder and
#: the ones before it, never after (``fingerprint`` and ``model`` sit between campaigns and faces;
#: errors, config and tomlfile, at the top level, serve all; backends and oracles beside judge).
FLOW = ("values", "maths", "judge", "records", "campaigns", "fingerprint", "faces")
FOLDER_OF_TOP = {"errors": "values", "config": "values", "tomlfile": "values", "backends": "judge",
                 "oracles": "judge", "model": "fingerprint", "__main__": "faces"}


def _real_module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ("backends", "oracles"):
        parts = ["difftest", *parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _short(name: str) -> str:
    """A module by the name the rules use: ``difftest.judge.check`` -> ``difftest.check`` (every
    module keeps its name without its folder, difftest.MOVED)."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[1] in FLOW[:5] + ("faces",) and parts[1] != "fingerprint":
        parts = parts[:1] + parts[2:]
    return ".".join(parts)


def _module(path: Path) -> str:
    return _short(_real_module(path))


def _sources() -> dict[str, Path]:
    files = [p for d in ("difftest", "backends", "oracles") for p in (ROOT / d).rglob("*.py")]
    return {_module(p): p for p in files}


def _imports(name: str, path: Path) -> set[str]:
    """The difftest modules ``name`` imports anywhere in its source (``from .x import y`` gives ``difftest.x``
    and, where ``y`` is a module, ``difftest.x.y``)."""
    real = _real_module(path)
    package = real if path.name == "__init__.py" else real.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("difftest"):
                out.add(_short(module))
                out.update(_short(f"{module}.{a.name}") for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(_short(a.name) for a in node.names if a.name.startswith("difftest"))
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


def _folder(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    if parts[0] in ("backends", "oracles"):
        return "judge"
    if len(parts) > 2:
        return parts[1]
    return FOLDER_OF_TOP.get(Path(parts[1]).stem, "values")


FOLDER = {name: _folder(path) for name, path in SOURCES.items()}


def test_the_folders_show_the_flow_no_module_imports_from_a_later_folder():
    upward = sorted(f"{m} ({FOLDER[m]}) imports {i} ({FOLDER[i]})" for m in SOURCES for i in IMPORTS[m]
                    if i in FOLDER and FLOW.index(FOLDER[i]) > FLOW.index(FOLDER[m]))
    assert upward == []


def test_every_module_of_difftest_is_in_a_folder_of_the_flow_or_serves_all():
    loose = sorted(p.name for p in (ROOT / "difftest").glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "config.py", "errors.py", "model.py", "tomlfile.py"]


def test_the_import_graph_has_no_circle():
    graph = {m: {i for i in IMPORTS[m] if i in SOURCES and i != m} for m in SOURCES}
    state: dict = {}

    def visit(m, stack):
        state[m] = "open"
        for i in graph[m]:
            if state.get(i) == "open":
                raise AssertionError(" -> ".join(stack + [m, i]))
            if i not in state:
                visit(i, stack + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])

"""difftest: real hardware floating point on trial against TorchLean's certified NF bounds.

The modules sit in folders along the data flow, each importing only from the folders before it:
``values`` (formats and their arithmetic, compiled in ``directed``, geometry, case, supports,
verdicts, outcome, profiles)
→ ``maths`` (layouts, exact, lean, replay, kernels, orderfree, compare) → ``judge`` (check,
sampling, estimate, explain, isolation, distributed) → ``records`` (store, results, lock,
expectations, claims) → ``campaigns`` (campaign, search, strategies, probes, catalogue, jobs,
progress) → ``fingerprint`` and ``model`` (cases of their own through the pipeline) →
``faces`` (cli, arguments, paths, report, summary, bench, pytest_plugin, api); ``errors``,
``config`` and ``tomlfile`` serve all. Every module keeps its old name
as well (``difftest.check`` is ``difftest.judge.check``, the same module object: see
:data:`MOVED`), so the imports the README documents work unchanged.

The public names below load on first use (PEP 562), so importing a light module such as
``difftest.report`` or ``difftest.results`` does not pull in the mathematics or numba.
"""

import importlib.abc
import importlib.util
import os
import sys
from importlib import import_module

__version__ = "0.1.0"

#: OpenBLAS's worker threads spin ~2^28 cycles after each GEMM before they sleep; difftest runs its
#: compiled (numba) passes between GEMMs on the same cores, which those spinning threads take. When
#: difftest is imported before numpy (the ``difftest`` command, its workers) and the variable is
#: unset, they sleep at once (2^4 cycles): a whole-model check ran ~20 % faster on 2 cores. It tunes
#: idling only, never a result.
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# backends/ and oracles/ sit at the top level (design card) and are installed as difftest.backends
# and difftest.oracles through setuptools package-dir; an editable install maps them the same way.

_PUBLIC = {
    "assert_within_bounds": "faces.api",
    "check_case": "judge.check",
    "BackendResult": "values.outcome",
    "GradientResult": "values.outcome",
    "Case": "values.case",
    "RuntimeInputs": "values.case",
    "DifftestError": "errors",
    "InvalidCase": "errors",
    "PRESETS": "values.formats",
    "Format": "values.formats",
    "get_format": "values.formats",
    "GRADIENTS": "values.geometry",
    "Geometry": "values.geometry",
    "VERDICTS": "values.verdicts",
    "MEANING": "values.verdicts",
}

#: Each module that moved into a folder, by its old name: ``difftest.<name>`` imports as
#: ``difftest.<folder>.<name>``.
MOVED = {
    **dict.fromkeys(("formats", "fparith", "geometry", "case", "supports", "verdicts", "outcome", "profiles"), "values"),
    **dict.fromkeys(("layouts", "exact", "lean", "replay", "orderfree", "kernels", "compare"), "maths"),
    **dict.fromkeys(("check", "sampling", "estimate", "explain", "isolation", "distributed"), "judge"),
    **dict.fromkeys(("campaign", "search", "strategies", "probes", "catalogue", "jobs", "progress"), "campaigns"),
    **dict.fromkeys(("store", "results", "lock", "expectations", "claims"), "records"),
    **dict.fromkeys(("cli", "arguments", "paths", "report", "summary", "pytest_plugin", "bench", "api"), "faces"),
}


class _OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``difftest.<name>`` of a moved module as the module itself (one object, one state)."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, name = fullname.rpartition(".")
        if head == __name__ and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        name = spec.name.rpartition(".")[2]
        return import_module(f"{__name__}.{MOVED[name]}.{name}")

    def exec_module(self, module):  # the real module ran when it was imported
        pass


if not any(isinstance(f, _OldNames) for f in sys.meta_path):
    sys.meta_path.insert(0, _OldNames())

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'difftest' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

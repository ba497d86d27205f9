"""difftest: real hardware floating point on trial against TorchLean's certified NF bounds.

The public names below load on first use (PEP 562), so importing a light module such as
``difftest.report`` or ``difftest.results`` does not pull in the mathematics or numba.
"""

from importlib import import_module

__version__ = "0.1.0"

# backends/ and oracles/ sit at the top level (design card) and are installed as difftest.backends
# and difftest.oracles through setuptools package-dir; an editable install maps them the same way.

_PUBLIC = {
    "assert_within_bounds": "api",
    "check_case": "check",
    "BackendResult": "outcome",
    "GradientResult": "outcome",
    "Case": "case",
    "RuntimeInputs": "case",
    "DifftestError": "errors",
    "InvalidCase": "errors",
    "PRESETS": "formats",
    "Format": "formats",
    "get_format": "formats",
    "GRADIENTS": "geometry",
    "Geometry": "geometry",
    "VERDICTS": "verdicts",
    "MEANING": "verdicts",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'difftest' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

"""Reading TOML: the one loader of ``pyproject.toml``'s ``[tool.difftest]`` (:mod:`difftest.config`)
and of expected-findings files (:mod:`difftest.expectations`)."""

from __future__ import annotations

from .errors import DifftestError

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as _toml
    except ModuleNotFoundError:
        _toml = None

#: Whether TOML can be read here (``tomllib``, or the ``tomli`` package on Python 3.10).
AVAILABLE = _toml is not None


def parse(text: str, where: str, hint: str = "") -> dict:
    """The TOML document ``text``; a bad one is a :class:`DifftestError` naming ``where`` (and
    ending with ``hint``)."""
    if _toml is None:
        raise DifftestError(f"{where}: reading TOML needs Python >= 3.11 or the tomli package (pip install tomli)")
    try:
        return _toml.loads(text)
    except _toml.TOMLDecodeError as exc:
        raise DifftestError(f"{where} is not valid TOML ({exc}){hint}") from None

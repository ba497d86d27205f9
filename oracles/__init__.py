"""Exact-spec oracles: ``exact`` (fast, sliced GEMMs) and ``mpmath`` (the reference)."""

from __future__ import annotations

from difftest.errors import DifftestError

from .mpmath_oracle import MpmathOracle
from .slices import SlicedExactOracle, exact_matmul

ORACLES = {"exact": SlicedExactOracle, "mpmath": MpmathOracle}


def get_oracle(name: str = "exact"):
    """An oracle instance by name."""
    try:
        return ORACLES[name]()
    except KeyError:
        raise DifftestError(f"unknown oracle {name!r}; choose one of: {', '.join(ORACLES)}") from None


__all__ = ["ORACLES", "MpmathOracle", "SlicedExactOracle", "exact_matmul", "get_oracle"]

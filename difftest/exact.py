"""Exact real tensors (dyadic rationals) and their correctly rounded float64 views.

The spec gradients are sums of products of float64 values, so they are dyadic rationals:
``mant · 2^exp`` with integer ``mant``. An :class:`ExactTensor` holds one Python integer per
entry and one exponent for the whole tensor, which makes equality and exact comparison trivial.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import numpy as np


def dyadic_to_float(m: int, e: int) -> float:
    """The float64 nearest to ``m · 2^e`` (ties to even, gradual underflow), via CPython's
    correctly rounded integer true division."""
    if e >= 0:
        return float(m << e)
    return m / (1 << -e)


def float_to_dyadic(x: float) -> tuple[int, int]:
    """``x = m · 2^e`` exactly, for a finite float."""
    n, d = float(x).as_integer_ratio()
    return n, -(d.bit_length() - 1)


@dataclass(frozen=True, eq=False)
class ExactTensor:
    """An exact real tensor: entry ``k`` is ``mant[k] · 2^exp``."""

    mant: np.ndarray  # dtype object, Python ints
    exp: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mant.shape

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> "ExactTensor":
        m = np.empty(shape, dtype=object)
        m.fill(0)
        return cls(m, 0)

    @classmethod
    def from_fractions(cls, values: np.ndarray) -> "ExactTensor":
        """From an array of dyadic Fractions (denominators powers of two)."""
        vals = np.asarray(values, dtype=object)
        dens = [Fraction(v).denominator for v in vals.ravel()]
        if any(d & (d - 1) for d in dens):
            raise ValueError("ExactTensor holds dyadic rationals only")
        k = max((d.bit_length() - 1 for d in dens), default=0)
        m = np.empty(vals.shape, dtype=object)
        m.ravel()[:] = [int(Fraction(v) * (1 << k)) for v in vals.ravel()]
        return cls(m, -k)

    def to_fractions(self) -> np.ndarray:
        scale = Fraction(2) ** self.exp
        out = np.empty(self.shape, dtype=object)
        out.ravel()[:] = [Fraction(int(m)) * scale for m in self.mant.ravel()]
        return out

    def reshape(self, shape) -> "ExactTensor":
        return ExactTensor(self.mant.reshape(shape), self.exp)

    def transpose(self, *axes) -> "ExactTensor":
        return ExactTensor(self.mant.transpose(*axes), self.exp)

    def same_values(self, other: "ExactTensor") -> bool:
        """Exact equality of every entry (and of the shapes)."""
        if self.shape != other.shape:
            return False
        k = min(self.exp, other.exp)
        a = [int(m) << (self.exp - k) for m in self.mant.ravel()]
        b = [int(m) << (other.exp - k) for m in other.mant.ravel()]
        return a == b

    @cached_property
    def nearest(self) -> np.ndarray:
        """The float64 nearest to each entry (ties to even)."""
        out = np.array([dyadic_to_float(int(m), self.exp) for m in self.mant.ravel()], dtype=np.float64)
        return out.reshape(self.shape)

    @cached_property
    def residual(self) -> np.ndarray:
        """The float64 nearest to ``exact - nearest`` (the ``lo`` of a double-double)."""
        hi = self.nearest.ravel()
        lo = np.empty(hi.shape, dtype=np.float64)
        for k, (m, h) in enumerate(zip(self.mant.ravel(), hi)):
            hm, he = float_to_dyadic(h)
            e = min(self.exp, he)
            r = (int(m) << (self.exp - e)) - (hm << (he - e))
            lo[k] = dyadic_to_float(r, e)
        return lo.reshape(self.shape)

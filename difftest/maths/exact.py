"""Exact real tensors (dyadic rationals) and their float64 views.

The spec gradients are sums of products of float64 values, so they are dyadic rationals. An
:class:`ExactTensor` holds them in one of two exact forms:

* ``mant · 2^exp``: one Python integer per entry and one exponent for the tensor;
* *levels* (what the sliced oracle produces): ``Σ_L levels[L] · 2^(exp + L·width)`` with int64
  arrays, which stay vectorised.

Its float64 views are ``nearest`` (the float64 nearest to each entry, ties to even), and
``residual`` and ``tail`` with ``|exact - nearest - residual| <= tail``. From levels they are
computed with error-free transformations (a double-double sum with a rigorous error bound); an
entry whose rounding that bound cannot decide — next to a rounding midpoint, in heavy
cancellation, or below ``2^-1021`` — is recomputed exactly with Python integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import numpy as np

from ..values.fparith import mul_up

_U = 2.0**-53


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


def _exact_views(m: int, e: int) -> tuple[float, float, float]:
    """nearest, residual (RN of exact - nearest) and tail (ulp(residual)/2) of ``m · 2^e``.

    ``hi`` and ``lo`` are correctly rounded (CPython's integer true division), so ``|rest - lo|``
    is at most half the float64 spacing at ``rest``, and rounding never takes ``lo`` to a lower
    binade than ``rest``: half the spacing at ``lo``, ``2^(E-54)`` for ``|lo|`` in
    ``[2^(E-1), 2^E)``, bounds it, and ``2^-1074`` where that is the subnormal ``2^-1075`` (no
    float64) or where ``lo = 0 != rest`` (``|rest| <= 2^-1075``). No float64 product is involved.
    """
    hi = dyadic_to_float(m, e)
    hm, he = float_to_dyadic(hi)
    k = min(e, he)
    rest = (m << (e - k)) - (hm << (he - k))
    lo = dyadic_to_float(rest, k)
    if rest == 0:
        return hi, lo, 0.0
    if lo == 0.0:  # |rest| < 2^-1075
        return hi, lo, 2.0**-1074
    return hi, lo, float(np.ldexp(1.0, max(int(np.frexp(lo)[1]) - 54, -1074)))  # ulp(lo)/2, rounded up


@dataclass(frozen=True, eq=False)
class ExactTensor:
    """An exact real tensor: ``mant · 2^exp``, or ``Σ_L levels[L] · 2^(exp + L·width)``."""

    mant: np.ndarray | None  # dtype object, Python ints
    exp: int
    levels: dict | None = None  # level -> int64 array
    width: int = 0
    #: the levels as rows of one C-contiguous ``(rows, size)`` int64 array, row ``L`` level ``L``,
    #: where the oracle made them so (the views then read it in place, with no stacking copy)
    rows: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        if self.levels is not None:
            return next(iter(self.levels.values())).shape
        return self.mant.shape

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> "ExactTensor":
        m = np.empty(shape, dtype=object)
        m.fill(0)
        return cls(m, 0)

    @classmethod
    def from_levels(cls, levels: dict, exp: int, width: int) -> "ExactTensor":
        return cls(None, exp, levels, width)

    @classmethod
    def from_rows(cls, rows: np.ndarray, present, exp: int, width: int, shape: tuple) -> "ExactTensor":
        """Levels ``present`` (row indices) of ``rows``, a C-contiguous ``(L, size)`` int64 array."""
        return cls(None, exp, {level: rows[level].reshape(shape) for level in sorted(present)}, width, rows)

    def map(self, fn) -> "ExactTensor":
        """Apply a shape operation (reshape, transpose, indexing) to every entry array."""
        if self.levels is not None:
            return ExactTensor(None, self.exp, {k: fn(v) for k, v in self.levels.items()}, self.width)
        return ExactTensor(fn(self.mant), self.exp)

    @cached_property
    def integers(self) -> np.ndarray:
        """``mant`` with ``exact = mant · 2^exp`` (object array of Python ints)."""
        if self.levels is None:
            return self.mant
        total = np.zeros(self.shape, dtype=object)
        for level, v in self.levels.items():
            total = total + (v.astype(object) << (level * self.width))
        return total

    def to_fractions(self) -> np.ndarray:
        scale = Fraction(2) ** self.exp
        out = np.empty(self.shape, dtype=object)
        out.ravel()[:] = [Fraction(int(m)) * scale for m in self.integers.ravel()]
        return out

    def same_values(self, other: "ExactTensor") -> bool:
        """Exact equality of every entry (and of the shapes)."""
        if self.shape != other.shape:
            return False
        k = min(self.exp, other.exp)
        a = [int(m) << (self.exp - k) for m in self.integers.ravel()]
        b = [int(m) << (other.exp - k) for m in other.integers.ravel()]
        return a == b

    # --- float64 views -------------------------------------------------------------------

    @cached_property
    def _views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.levels is not None and self.exp >= -1074:
            hi, lo, tail, undecided = self._double_double()
        else:
            hi, lo, tail = (np.empty(self.shape) for _ in range(3))
            undecided = np.ones(self.shape, dtype=bool)
        if undecided.any():
            ints = self._integers_at(undecided)
            for k, m in zip(np.flatnonzero(undecided), ints):
                hi.flat[k], lo.flat[k], tail.flat[k] = _exact_views(int(m), self.exp)
        return hi, lo, tail

    def _integers_at(self, mask: np.ndarray) -> list:
        if self.levels is None:
            return list(self.mant[mask])
        total = [0] * int(mask.sum())
        for level, v in self.levels.items():
            total = [t + (int(x) << (level * self.width)) for t, x in zip(total, v[mask])]
        return total

    def _double_double(self):
        """Sum2 of the levels as exact float64 terms (each level split into two 31-bit halves),
        most significant first: ``hi + lo = s + c`` and ``|exact - (hi + lo)| <= r``; ``undecided``
        marks the entries where that does not prove ``hi = RN(exact)``. One compiled pass per
        entry (:func:`difftest.kernels.level_views`).

        Every term ``t`` is a multiple of ``2^-1074`` (``scale >= -1074``), so TwoSum is exact and a
        float64 addition of such values is exact in the subnormal range: the Ogita–Rump–Oishi
        bound ``|Σe - c| <= γ_m² Σ|t|`` holds with no underflow term. ``r`` bounds it from above
        whatever underflows: ``γ`` is rounded up, the products by :func:`mul_up`, and ``mag >=
        Σ|t|·(1-u)^(m-1)`` (a float64 sum of non-negative terms), so ``Σ|t| <= mag·(1 + m·2^-52)``.

        The decision: ``undecided`` is where ``exact ∈ [hi + lo - r, hi + lo + r]`` (``hi`` a
        float64, ``r >= 0``) does not prove ``hi = RN(exact)``, or leaves a tail ``r`` above
        ``2^-80 |hi|`` (exact residuals there).

        ``hi`` is ``RN(exact)`` when ``|exact - hi| <= |lo| + r`` is strictly below the half spacing
        of the float64 grid on the side of ``hi`` where ``exact`` lies (strictly: a tie goes to the
        exact path): ``2^(E-54)`` for ``|hi|`` in ``[2^(E-1), 2^E)``, but only ``2^(E-55)`` towards
        zero from a power of two. That side is surely outwards only when ``lo`` points outwards and
        ``|lo| > r``; a sign test decides it, not the sign of ``lo·hi``, which underflows to ``-0.0``
        for ``|hi| <= 2^-511``. Otherwise (``lo = 0``, ``|lo| <= r``, ``lo`` inwards) the finer half
        spacing is the limit. Underflow cannot make the rule unsound:

        * a half spacing below ``2^-1074`` (subnormal ``hi``, the lowest normal binade, ``hi = 0``)
          is no float64: its limit is 0, and such entries are undecided unless ``lo = r = 0``, where
          ``hi`` is the exact value;
        * the limit is a float64, so ``fl(|lo| + r) < limit`` implies ``|lo| + r < limit`` (rounding
          is monotone); a NaN (overflow) compares false and stays undecided;
        * ``|hi|·2^-80`` may underflow, but that test only keeps tails small (``r <= 2^-80 |hi| +
          2^-1075``): soundness does not rest on it.
        """
        from .kernels import level_views

        order = sorted(self.levels, reverse=True)
        if self.rows is not None:
            stacked, picked = self.rows, np.array(order, dtype=np.int64)
        else:
            stacked = np.stack([np.ascontiguousarray(self.levels[level], dtype=np.int64).ravel() for level in order])
            picked = np.arange(len(order), dtype=np.int64)
        scales = [self.exp + level * self.width for level in order]
        with np.errstate(over="ignore"):  # 2^k past float64: +inf, as the term it scales
            factors = np.array([[np.ldexp(1.0, k + 31), np.ldexp(1.0, k)] for k in scales])
        m = 2 * len(order)
        gamma = np.nextafter(m * _U / (1 - m * _U), np.inf)  # m·u and 1 - m·u exact
        hi, lo, r = (np.empty(stacked.shape[1]) for _ in range(3))
        undecided = np.empty(stacked.shape[1], dtype=np.bool_)
        level_views(stacked, picked, factors, np.float64(1 + m * 2.0**-52), mul_up(gamma, gamma), hi, lo, r, undecided)
        return tuple(v.reshape(self.shape) for v in (hi, lo, r, undecided))

    @property
    def nearest(self) -> np.ndarray:
        """The float64 nearest to each entry (ties to even)."""
        return self._views[0]

    @property
    def residual(self) -> np.ndarray:
        """A float64 close to ``exact - nearest`` (its error is at most ``tail``)."""
        return self._views[1]

    @property
    def tail(self) -> np.ndarray:
        """A bound of ``|exact - nearest - residual|``."""
        return self._views[2]

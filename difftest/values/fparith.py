"""Exact and upward-rounded float64 array arithmetic, the building blocks of the vectorised engine.

Everything here is elementwise on float64 arrays and relies only on IEEE binary64
round-to-nearest-even, which numpy uses for ``+``, ``-``, ``*`` (no fast-math, no FMA
contraction of separate numpy operations). Values are assumed finite and far from the float64
overflow threshold (cases are capped at magnitude 2^480, see ``difftest.case``).

* error-free transformations: :func:`two_sum`, :func:`two_prod_mantissas`;
* exact ``mag`` of a sum and of a product, from which ``ulp`` follows exactly;
* NF arithmetic of a vectorised :class:`~difftest.formats.Format` (:func:`nf_add`,
  :func:`nf_mul`): one correct rounding per operation, with no double rounding;
* upward-rounded accumulation for bounds (:func:`add_up`, :func:`mul_up`), so that a computed
  bound is never below the real one.
"""

from __future__ import annotations

import numpy as np

from .formats import Format

_SPLITTER = float(2**27 + 1)


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knuth's TwoSum: ``s = fl(a + b)`` and ``e`` with ``a + b = s + e`` exactly."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def two_prod_mantissas(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dekker's TwoProduct for factors of magnitude in [0.5, 1) (no under- or overflow)."""
    p = a * b
    t = _SPLITTER * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLITTER * b
    bh = t - (t - b)
    bl = b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def mag_of_sum(s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Exact Flocq ``mag`` of the real ``s + e``, where ``(s, e)`` come from :func:`two_sum`.

    ``mag(fl(x))`` differs from ``mag(x)`` only when rounding carried ``x`` up to a power of
    two: then ``|s|`` is a power of two and ``e`` points back towards zero.
    """
    m, ex = np.frexp(s)
    ex = ex.astype(np.int64)
    carried = (np.abs(m) == 0.5) & (e != 0) & (np.sign(e) != np.sign(s))
    return ex - carried


def mag_of_product(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact Flocq ``mag`` of the real product ``x · y`` (0 where the product is 0)."""
    mx, ex = np.frexp(x)
    my, ey = np.frexp(y)
    zero = (x == 0) | (y == 0)
    mx = np.where(zero, 0.5, np.abs(mx))
    my = np.where(zero, 0.5, np.abs(my))
    p, e = two_prod_mantissas(mx, my)
    at_least_half = (p > 0.5) | ((p == 0.5) & (e >= 0))
    m = ex.astype(np.int64) + ey.astype(np.int64) - np.where(at_least_half, 0, 1)
    return np.where(zero, 0, m)


def quantum_exp(fmt: Format, mag: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Exponent of ``ulp`` for values of the given ``mag`` (``emin`` where the value is 0)."""
    return np.where(zero, fmt.emin, np.maximum(mag - fmt.prec, fmt.emin))


def half_ulp_up(q: np.ndarray) -> np.ndarray:
    """``β^q / 2`` for radix 2, rounded up to float64 (only ``2^-1075`` is not representable)."""
    return np.ldexp(1.0, np.maximum(np.asarray(q, dtype=np.int64) - 1, -1074))


def half_ulp_of_sum(fmt: Format, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``ulp(a + b) / 2`` with ``a + b`` the exact real sum, rounded up to float64."""
    s, e = two_sum(a, b)
    return half_ulp_up(quantum_exp(fmt, mag_of_sum(s, e), s == 0))


def half_ulp_of_product(fmt: Format, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``ulp(x · y) / 2`` with ``x · y`` the exact real product, rounded up to float64."""
    zero = (x == 0) | (y == 0)
    return half_ulp_up(quantum_exp(fmt, mag_of_product(x, y), zero))


def half_ulp_of(fmt: Format, x: np.ndarray) -> np.ndarray:
    """``ulp(x) / 2`` for float64 values (exact reals), rounded up to float64."""
    return half_ulp_up(fmt.quantum_exp_array(x))


def nf_add(fmt: Format, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NF ``a ⊕ b = round(a + b)``, one rounding of the exact sum, ties to even.

    For formats narrower than binary64 the float64 sum ``s`` may itself be rounded. The
    exact sum is ``s + e`` (TwoSum) with ``|e| <= ulp64(s)/2``; no midpoint of the target
    grid (all of which float64 represents) lies strictly between ``s`` and ``s + e``, so
    rounding ``s`` is right unless ``s`` *is* a midpoint, where the sign of ``e`` decides.
    """
    if fmt.is_binary64:
        return a + b
    s, e = two_sum(a, b)
    q = quantum_exp(fmt, np.frexp(s)[1].astype(np.int64), s == 0)
    y = np.ldexp(s, -q)
    fl = np.floor(y)
    r = np.rint(y)
    midpoint = (y - fl == 0.5) & (e != 0)
    r = np.where(midpoint, np.where(e > 0, fl + 1.0, fl), r)
    return np.ldexp(r, q)


def nf_mul(fmt: Format, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """NF ``x ⊗ y = round(x · y)``: the float64 product is exact for precision <= 26."""
    if fmt.is_binary64:
        return x * y
    return fmt.round_array(x * y)


def add_up(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` rounded towards +inf (exactly: TwoSum tells whether ``fl`` fell short).
    An infinite operand gives an infinite sum (TwoSum's error term is then NaN, not > 0).
    Compiled: :mod:`difftest.values.directed`."""
    from .directed import add_up as up

    with np.errstate(invalid="ignore", over="ignore"):
        return up(a, b)


def mul_up(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """An upper bound of ``a · b`` for ``a, b >= 0``, within one float64 ulp (+inf past float64).
    Compiled: :mod:`difftest.values.directed`."""
    from .directed import mul_up as up

    with np.errstate(over="ignore", invalid="ignore"):
        return up(a, b)


def sub_down(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` rounded towards -inf (infinite operands as in :func:`add_up`).
    Compiled: :mod:`difftest.values.directed`."""
    from .directed import sub_down as down

    with np.errstate(invalid="ignore", over="ignore"):
        return down(a, b)

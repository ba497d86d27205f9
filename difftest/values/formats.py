"""Floating-point formats of the NF model (Flocq style: radix, precision, minimal exponent).

Two implementations of each primitive live here:

* exact scalar ones on :class:`fractions.Fraction` (``mag``, ``ulp``, ``round``), written
  straight from the definitions in ``torchlean-model.md`` and valid for every format;
* vectorised ones on float64 arrays (``*_array``) for binary FLT formats that float64
  emulates exactly: IEEE binary64 itself, and formats with precision <= 26 and
  emin >= -537, whose products are exact in float64. They are tested against the exact ones.

The model has no overflow: the exponent is unbounded above. ``emax`` is only recorded
to say when the IEEE counterpart of a format would overflow (the ``domain`` verdict).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import UnknownFormat


def pow_radix(radix: int, k: int) -> Fraction:
    """``radix**k`` as an exact Fraction, for any integer ``k``."""
    return Fraction(radix**k) if k >= 0 else Fraction(1, radix ** (-k))


@dataclass(frozen=True)
class Format:
    """An NF format ``NF β fexp rnd`` with FLT(prec, emin) or, with ``emin=None``, FLX(prec).

    ``emin`` is Flocq's FLT emin: the exponent of the smallest subnormal quantum.
    ``emax`` (optional) is the IEEE emax of the hardware counterpart; it plays no part in
    the model and only marks where real hardware overflows.
    """

    radix: int
    prec: int
    emin: int | None
    name: str = ""
    emax: int | None = None

    def __post_init__(self) -> None:
        if self.radix < 2:
            raise ValueError(f"radix must be >= 2, got {self.radix}")
        if self.prec < 1:
            raise ValueError(f"precision must be >= 1, got {self.prec}")
        if not self.name:
            kind = "FLX" if self.emin is None else f"FLT emin={self.emin}"
            object.__setattr__(self, "name", f"radix{self.radix}-p{self.prec}-{kind}")

    def __str__(self) -> str:
        return self.name

    # --- the exponent function and its consequences (exact) ---------------------------

    def fexp(self, e: int) -> int:
        """Mirrors Flocq ``FLT_exp``/``FLX_exp``: ``max(e - p, emin)`` or ``e - p``."""
        return e - self.prec if self.emin is None else max(e - self.prec, self.emin)

    @property
    def unit_roundoff(self) -> Fraction:
        """``u = β^(1-p) / 2``: relative error bound of round-to-nearest (normal range)."""
        return pow_radix(self.radix, 1 - self.prec) / 2

    @property
    def underflow_eta(self) -> Fraction:
        """Absolute error bound of one rounding in the subnormal range: ``ulp(0)/2``."""
        return self.ulp(Fraction(0)) / 2

    @property
    def max_finite(self) -> float:
        """Largest finite value of the IEEE counterpart (``inf`` when no emax is known)."""
        if self.emax is None:
            return math.inf
        return float((self.radix**self.prec - 1) * pow_radix(self.radix, self.emax - self.prec + 1))

    def mag(self, x: Fraction | int | float) -> int:
        """Flocq ``mag``: ``floor(log_β |x|) + 1`` for ``x != 0`` and ``mag(0) = 0``."""
        a = abs(Fraction(x))
        if a == 0:
            return 0
        b = self.radix
        e = math.floor((a.numerator.bit_length() - a.denominator.bit_length()) / math.log2(b))
        while pow_radix(b, e - 1) > a:
            e -= 1
        while pow_radix(b, e) <= a:
            e += 1
        return e

    def cexp(self, x: Fraction | int | float) -> int:
        """Flocq ``cexp``: ``fexp(mag(x))``."""
        return self.fexp(self.mag(x))

    def ulp(self, x: Fraction | int | float) -> Fraction:
        """Flocq ``ulp``: ``β^cexp(x)``; ``ulp(0) = β^emin`` for FLT and ``0`` for FLX."""
        x = Fraction(x)
        if x != 0:
            return pow_radix(self.radix, self.cexp(x))
        # ulp 0 = β^(fexp n) for some n <= fexp n, if any: n <= emin for FLT, none for FLX.
        return Fraction(0) if self.emin is None else pow_radix(self.radix, self.emin)

    def is_representable(self, x: Fraction | int | float) -> bool:
        """``x · β^(-cexp x)`` is an integer (Flocq ``generic_format``)."""
        x = Fraction(x)
        return (x / pow_radix(self.radix, self.cexp(x))).denominator == 1

    def round(self, x: Fraction | int | float) -> Fraction:
        """Round to nearest, ties to even, with no overflow (a valid ``rnd`` of the model)."""
        x = Fraction(x)
        if x == 0:
            return x
        q = pow_radix(self.radix, self.cexp(x))
        return round(x / q) * q  # Fraction.__round__ rounds half to even

    # --- vectorised primitives for binary FLT formats --------------------------------

    @property
    def vectorised(self) -> bool:
        """Whether the float64 array primitives (and the vectorised NF engine) emulate it exactly."""
        if self.radix != 2 or self.emin is None:
            return False
        return self.is_binary64 or (self.prec <= 26 and self.emin >= -537)

    @property
    def is_binary64(self) -> bool:
        """IEEE double without overflow: float64 hardware arithmetic is this format's NF arithmetic."""
        return self.radix == 2 and self.prec == 53 and self.emin == -1074

    def quantum_exp_array(self, x: np.ndarray) -> np.ndarray:
        """Exponent of ``ulp(x)`` for each entry of a float64 array (``emin`` at zero)."""
        m = np.frexp(x)[1].astype(np.int64)  # frexp's exponent is Flocq's mag for x != 0
        return np.where(x == 0, self.emin, np.maximum(m - self.prec, self.emin))

    def round_array(self, x: np.ndarray) -> np.ndarray:
        """Round float64 values (taken as exact reals) to the format, ties to even."""
        x = np.asarray(x, dtype=np.float64)
        if self.is_binary64:
            return x.copy()
        if self.vectorised:  # one compiled pass, the same bits (difftest.directed.round_to)
            from .directed import round_to

            return np.asarray(round_to(x, self.prec, self.emin))
        q = self.quantum_exp_array(x)
        return np.ldexp(np.rint(np.ldexp(x, -q)), q)

    def representable_array(self, x: np.ndarray) -> np.ndarray:
        """Elementwise: is the float64 value a value of the format?"""
        x = np.asarray(x, dtype=np.float64)
        return np.isfinite(x) & (self.round_array(np.where(np.isfinite(x), x, 0.0)) == x)


def _binary(name: str, prec: int, emin: int, emax: int) -> Format:
    return Format(radix=2, prec=prec, emin=emin, name=name, emax=emax)


BINARY64 = _binary("binary64", 53, -1074, 1023)
BINARY32 = _binary("binary32", 24, -149, 127)
TF32 = _binary("tf32", 11, -136, 127)
BINARY16 = _binary("binary16", 11, -24, 15)
BFLOAT16 = _binary("bfloat16", 8, -133, 127)

PRESETS: dict[str, Format] = {f.name: f for f in (BINARY64, BINARY32, TF32, BINARY16, BFLOAT16)}


def get_format(name: str | Format) -> Format:
    """Look a preset up by name (``binary32``, ``binary16``, ...)."""
    if isinstance(name, Format):
        return name
    try:
        return PRESETS[str(name).strip().lower()]
    except KeyError:
        raise UnknownFormat(
            f"unknown format {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None

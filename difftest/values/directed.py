"""Compiled (numba) elementwise float64 rounding: ``fl`` rounded up or down, and to a format.

:func:`add_up`, :func:`sub_down` and :func:`mul_up` are numpy ufuncs (broadcasting, scalars),
and their ``*_scalar`` forms inline into compiled loops, with the exact semantics of their numpy
forms in :mod:`difftest.fparith`, which call them: a TwoSum tells whether round-to-nearest fell
short, and the result steps one float64 towards the bound (``np.nextafter``). They are compiled
because numpy spends ~30 ns per entry on the temporaries and ``nextafter`` of that form, on arrays
of millions of bounds; these take ~1 ns. :func:`round_to` (rounding to a format,
:meth:`difftest.formats.Format.round_array`) and :func:`ratio` (``error / bound``,
:meth:`difftest.outcome.EntryArrays.ratio`) are compiled the same way; the tests hold every one
of them to the numpy expression it replaced, bit for bit.

The step is done on the bits (:func:`next_up`), which is ``np.nextafter(x, +inf)`` for every
float64: ``-0.0`` and ``+0.0`` step to ``2^-1074``, the largest finite to ``+inf``,
``-2^-1074`` to ``-0.0``; ``+inf`` and NaN stay. numba compiles without fast-math: IEEE binary64
round-to-nearest-even, no contraction into FMA. The intrinsics :func:`f2i` and :func:`i2f`
(bit casts) serve :mod:`difftest.kernels` too.
"""

from __future__ import annotations

import math

from llvmlite import ir
from numba import njit, types, vectorize
from numba.core import codegen, config
from numba.extending import intrinsic


def _prefer_512_bit_vectors() -> bool:
    """Let numba's compiler use 512-bit vectors where the CPU has AVX-512: LLVM prefers 256-bit ones
    on those CPUs (a tuning default, ``prefer-256-bit``), and the folds run 25–35 % faster on 512
    (ResNet-50's NF stage: ~6.1 s → ~4.6 s on 2 cores). The same instructions' semantics either way
    (no fast-math), so never a result changes; the host's own features otherwise, and nothing
    where the user chose a CPU or its features (``NUMBA_CPU_NAME``, ``NUMBA_CPU_FEATURES``) or
    numba's compiler already started in this process."""
    if config.CPU_NAME is not None or config.CPU_FEATURES is not None:
        return False
    features = codegen.get_host_cpu_features()
    if "+avx512f" not in features.split(","):
        return False
    config.CPU_FEATURES = features + ",-prefer-256-bit"
    return True


PREFERS_512_BIT = _prefer_512_bit_vectors()


@intrinsic
def f2i(typingctx, x):
    """The bits of a float64 as an int64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def i2f(typingctx, x):
    """The float64 of int64 bits."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(inline="always")
def next_up(x):
    """``np.nextafter(x, +inf)``, branch-free (selects): ``x + 0.0`` turns ``-0.0`` into ``+0.0``,
    whose successor is bits + 1 as for every non-negative value; a negative one steps towards zero
    (bits - 1); ``+inf`` and NaN are returned as they are."""
    y = x + 0.0
    bits = f2i(y)
    stepped = i2f(bits + 1 if y >= 0.0 else bits - 1)
    return y if (y == _INF) | (y != y) else stepped


@njit(inline="always")
def next_down(x):
    """``np.nextafter(x, -inf)`` (a NaN keeps its sign bit, as there)."""
    d = -next_up(-x)
    return x if x != x else d


_INF = float("inf")
_TINY = 5e-324  # 2^-1074


@njit(inline="always")
def add_up_scalar(a, b):
    """``a + b`` rounded towards +inf (see :func:`difftest.fparith.add_up`)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return next_up(s) if e > 0.0 else s


@njit(inline="always")
def sub_down_scalar(a, b):
    """``a - b`` rounded towards -inf (see :func:`difftest.fparith.sub_down`)."""
    c = -b
    s = a + c
    bb = s - a
    e = (a - (s - bb)) + (c - bb)
    return next_down(s) if e < 0.0 else s


@njit(inline="always")
def mul_up_scalar(a, b):
    """An upper bound of ``a · b`` for ``a, b >= 0`` (see :func:`difftest.fparith.mul_up`)."""
    p = max(next_up(a * b), _TINY)
    return 0.0 if (a == 0.0) | (b == 0.0) else p


@vectorize(["float64(float64, float64)"], cache=True)
def add_up(a, b):
    return add_up_scalar(a, b)


@vectorize(["float64(float64, float64)"], cache=True)
def sub_down(a, b):
    return sub_down_scalar(a, b)


@vectorize(["float64(float64, float64)"], cache=True)
def mul_up(a, b):
    return mul_up_scalar(a, b)


_C = 6755399441055744.0  # 1.5 * 2^52: (y + C) - C rounds y to an integer, ties to even, |y| < 2^51


@vectorize(["float64(float64, int64, int64)"], cache=True)
def round_to(x, p, emin):
    """``x`` (an exact real) rounded to nearest, ties to even, in the binary format of precision
    ``p <= 26`` and least exponent ``emin >= -537`` with no overflow (:meth:`difftest.formats.Format.round_array`):
    with ``q = max(mag(x) - p, emin)``, ``x·2^-q`` (exact: a power-of-two scaling into
    ``[0, 2^p)``) rounded to an integer by ``(y + 1.5·2^52) - 1.5·2^52``, scaled back (exact, or
    ``±inf`` past float64 as ``ldexp`` gives), with ``x``'s sign. ``mag`` from the exponent field: a float64 subnormal
    reads ``-1022``, and ``q = emin`` either way. Non-finite values are returned as they are."""
    if not (x - x == 0.0):
        return x
    q = max(((f2i(x) >> 52) & 0x7FF) - 1022 - p, emin)
    y = x * i2f((1023 - q) << 52)
    r = (y + _C) - _C
    return math.copysign(r * i2f((q + 1023) << 52), x)  # a zero keeps x's sign, as rint's does


@vectorize(["float64(float64, float64)"], cache=True)
def ratio(error, bound):
    """``error / bound`` (:meth:`difftest.outcome.EntryArrays.ratio`): 0 where both are 0 or the
    quotient is NaN, ``inf`` where only the bound is 0."""
    if bound == 0.0:
        return 0.0 if error == 0.0 else math.inf
    r = error / bound
    return 0.0 if r != r else r


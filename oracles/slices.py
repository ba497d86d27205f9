"""The fast exact oracle: error-free slicing of the operands so that every GEMM is exact.

Each operand ``A`` is split into signed integer digits ``A = Σ_s D_s · 2^(q + s·b)`` with
``|D_s| < 2^b`` (``q`` is the lowest set bit of any entry, ``b`` the slice width). A product of
two digit matrices has integer entries below ``K · 2^(2b) <= 2^53`` for an inner dimension
``K``, so every partial sum BLAS forms is an integer float64 represents exactly: the GEMM is
exact in any summation order, blocking or FMA. Products of slice pairs with the same level
``s + t`` share one scale and are added in int64; the levels are finally combined in Python
integers. Nothing is rounded anywhere, over the whole float64 exponent span (subnormals too).
This is the Ozaki scheme with exact (integer) recombination.
"""

from __future__ import annotations

import math

import numpy as np

from difftest.exact import ExactTensor
from difftest.geometry import GRADIENTS, Geometry, block_of, gemm_blocks, gemm_layouts, gemm_result_to_gradient, gemm_shape


def slice_width(k: int) -> int:
    """Digit width ``b`` with ``K · (2^b - 1)^2 < 2^53`` for inner dimension ``K``."""
    return (53 - max(0, math.ceil(math.log2(max(k, 1))))) // 2


def split_digits(a: np.ndarray, b: int) -> tuple[list[np.ndarray], int]:
    """Signed ``b``-bit digits of ``a`` (integer-valued float64 arrays) and the base exponent ``q``.

    ``a == Σ_s digits[s] · 2^(q + s·b)`` exactly.
    """
    nz = a != 0
    if not nz.any():
        return [], 0
    mant, ex = np.frexp(a[nz])
    mi = np.ldexp(np.abs(mant), 53).astype(np.int64)  # exact 53-bit integers
    low = mi & -mi
    tz = np.frexp(low.astype(np.float64))[1].astype(np.int64) - 1
    q = int(np.min(ex.astype(np.int64) - 53 + tz))
    top = int(np.max(ex))  # every |a| < 2^top
    count = -(-(top - q) // b)
    r = np.abs(a)
    digits: list[np.ndarray] = [None] * count  # type: ignore[list-item]
    for s in range(count - 1, -1, -1):
        w = q + s * b
        d = np.floor(np.ldexp(r, -w))  # r < 2^(w + b): d < 2^b, exact
        r = r - np.ldexp(d, w)  # removes leading bits: exact
        digits[s] = np.copysign(d, a) * nz
    assert not r.any()
    return digits, q


def exact_matmul(a: np.ndarray, b: np.ndarray, blocks=None) -> ExactTensor:
    """The exact product ``a @ b`` of two float64 matrices, or of two stacks of them (``(G, M,
    K) @ (G, K, N)``; ``blocks``: see :func:`difftest.geometry.gemm_blocks`, stacks only; ``a``
    must be zero outside them)."""
    width = slice_width(a.shape[-1])
    da, qa = split_digits(a, width)
    db, qb = split_digits(b, width)
    return digit_product(da, qa, db, qb, width, a.shape[:-1] + b.shape[-1:], blocks)


def digit_product(da: list, qa: int, db: list, qb: int, width: int, shape: tuple, blocks=None) -> ExactTensor:
    """``(Σ_s da[s] 2^(qa + s·width)) @ (Σ_t db[t] 2^(qb + t·width))`` exactly, as levels."""
    if not da or not db:
        return ExactTensor.zeros(shape)
    # the digit matrices of each block, cut once (blocks share the global q and width)
    if blocks is None:
        parts = [(None, da, db)]
    else:
        parts = [(rows, [block_of(x, rows, cols) for x in da], [y[:, cols] for y in db]) for rows, cols in blocks if cols.size]
    levels: dict[int, np.ndarray] = {}
    for s in range(len(da)):
        for t in range(len(db)):
            p = np.zeros(shape, dtype=np.int64)
            for rows, xs, ys in parts:
                if xs[s].any() and ys[t].any():
                    prod = (xs[s] @ ys[t]).astype(np.int64)  # exact: integers below 2^53
                    if rows is None:
                        p = prod
                    else:
                        p[:, rows] = prod
            if s + t in levels:
                levels[s + t] += p  # at most ~140 terms below 2^53 each: no int64 overflow
            else:
                levels[s + t] = p
    return ExactTensor.from_levels(levels, qa + qb, width)


class SlicedExactOracle:
    """Fast exact spec gradients: three exact batched GEMMs, one batch per group (see
    :mod:`difftest.geometry`)."""

    name = "exact"

    def spec_gradients(self, x: np.ndarray, w: np.ndarray, d: np.ndarray, g: Geometry,
                       gradients=GRADIENTS) -> dict[str, ExactTensor]:
        """The exact ``gradients`` (default all three), each computed alone.

        The digits are cut from the compact tensors and then laid out (im2col repeats each
        entry up to kH·kW times): the same digits as cutting the GEMM operands, less work. Each
        operand holds only its source's entries and zeros, so the source's base exponent and
        digit count serve it exactly (an entry no window reads only adds an unused digit level)."""
        out = {}
        layouts = gemm_layouts(x, w, d, g)
        for name in gradients:
            (a, fa), (b, fb) = layouts[name]
            groups, rows, inner, cols = gemm_shape(name, g)
            width = slice_width(inner)
            da, qa = split_digits(a, width)
            db, qb = split_digits(b, width)
            da = [np.ascontiguousarray(fa(t)) for t in da]
            db = [np.ascontiguousarray(fb(t)) for t in db]
            r = digit_product(da, qa, db, qb, width, (groups, rows, cols), gemm_blocks(name, g))
            out[name] = r.map(lambda v, name=name: gemm_result_to_gradient(name, v, g))
        return out

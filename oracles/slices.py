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
from difftest.geometry import GRADIENTS, Geometry
from difftest.layouts import gemm_shape, gradient_operand, gradient_product


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


def exact_matmul(a: np.ndarray, b: np.ndarray) -> ExactTensor:
    """The exact product ``a @ b`` of two float64 matrices, or of two stacks of them
    (``(G, M, K) @ (G, K, N)``)."""
    width = slice_width(a.shape[-1])
    da, qa = split_digits(a, width)
    db, qb = split_digits(b, width)
    return digit_product(da, qa, db, qb, width, a.shape[:-1] + b.shape[-1:], np.matmul)


def digit_product(da: list, qa: int, db: list, qb: int, width: int, shape: tuple, product) -> ExactTensor:
    """``product(Σ_s da[s] 2^(qa + s·width), Σ_t db[t] 2^(qb + t·width))`` exactly, as levels, for
    a bilinear ``product`` that is exact on the digit arrays (integers whose sums stay below
    2^53: any float64 GEMM order gives them exactly)."""
    if not da or not db:
        return ExactTensor.zeros(shape)
    levels: dict[int, np.ndarray] = {}
    for s in range(len(da)):
        for t in range(len(db)):
            if not (da[s].any() and db[t].any()):
                continue
            p = product(da[s], db[t]).astype(np.int64)  # exact: integers below 2^53
            if s + t in levels:
                levels[s + t] += p  # at most ~140 terms below 2^53 each: no int64 overflow
            else:
                levels[s + t] = p
    return ExactTensor.from_levels(levels, qa + qb, width) if levels else ExactTensor.zeros(shape)


class SlicedExactOracle:
    """Fast exact spec gradients: each gradient's sums over exact digit slices (see
    :func:`difftest.layouts.gradient_product`: batched over groups, the input gradient tap by
    tap)."""

    name = "exact"

    def spec_gradients(self, x: np.ndarray, w: np.ndarray, d: np.ndarray, g: Geometry,
                       gradients=GRADIENTS) -> dict[str, ExactTensor]:
        """The exact ``gradients`` (default all three), each computed alone.

        The digits are cut from the compact tensors: every product of two digit tensors is a
        sum of at most ``inner`` (the gradient's steps per entry) products of ``width``-bit
        integers, below 2^53, so :func:`~difftest.layouts.gradient_product` computes it exactly
        in any order. An entry no window reads only adds an unused digit level."""
        out = {}
        operands = {"grad_input": (d, w), "grad_weight": (d, x), "grad_bias": (d, np.ones(1))}
        for name in gradients:
            a, b = operands[name]
            width = slice_width(gemm_shape(name, g)[2])
            da, qa = split_digits(a, width)
            db, qb = split_digits(b, width)
            db = [gradient_operand(name, t, g) for t in db]  # laid out once, not once per digit pair
            product = lambda p, q, name=name: gradient_product(name, p, q, g)  # noqa: E731
            out[name] = digit_product(da, qa, db, qb, width, g.shape_of(name), product)
        return out

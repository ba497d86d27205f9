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

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from difftest.maths.exact import ExactTensor
from difftest.values.geometry import GRADIENTS, Geometry
from difftest.maths.layouts import (entry_operand, entry_terms, gemm_shape, gradient_operand, gradient_product,
                                    grouped_rows, input_product_last)


def slice_width(k: int) -> int:
    """Digit width ``b`` with ``K · (2^b - 1)^2 < 2^53`` for inner dimension ``K``."""
    return (53 - max(0, math.ceil(math.log2(max(k, 1))))) // 2


_CHUNK = 1 << 18


def digit_frame(a: np.ndarray, b: int) -> tuple[int, int] | None:
    """``(q, count)`` of :func:`split_digits`: the lowest set bit of any entry of ``a``
    (float64 arrays) and the number of ``b``-bit digits above it; None where ``a`` is all zeros.

    Read off the bits (compiled: :func:`difftest.kernels.digit_frame_parts`): a normal entry is
    ``m · 2^(E - 1075)`` with ``m`` its 53-bit significand (hidden bit set), a subnormal one
    ``m · 2^-1074``; its lowest set bit is that exponent plus the trailing zeros of ``m``."""
    from difftest.maths.kernels import digit_frame_parts

    flat = np.ascontiguousarray(a, dtype=np.float64).ravel()
    chunks = max(1, -(-flat.size // _CHUNK))
    low, top = np.empty(chunks, dtype=np.int64), np.empty(chunks)
    digit_frame_parts(flat, _CHUNK, low, top)
    if not top.any():
        return None
    q = int(low.min())
    top_exp = int(np.frexp(top.max())[1])  # every |a| < 2^top_exp
    return q, -(-(top_exp - q) // b)


def split_digits(a: np.ndarray, b: int, frame: tuple[int, int] | None = None) -> tuple[list[np.ndarray], int]:
    """Signed ``b``-bit digits of ``a`` (float64 arrays) and the base exponent ``q``.

    ``a == Σ_s digits[s] · 2^(q + s·b)`` exactly. ``frame``: the ``(q, count)`` to cut at (of a
    larger array ``a`` was taken from, :func:`digit_frame`), else ``a``'s own. Cut from each
    entry's significand by integer shifts, in one compiled pass (:func:`difftest.kernels.split_digits`).
    """
    from difftest.maths.kernels import split_digits as cut

    frame = digit_frame(a, b) if frame is None else frame
    if frame is None:
        return [], 0
    q, count = frame
    flat = np.ascontiguousarray(a, dtype=np.float64).ravel()
    digits = np.zeros((count, flat.size))
    cut(flat, q, b, digits)
    return [d.reshape(np.shape(a)) for d in digits], q


def exact_matmul(a: np.ndarray, b: np.ndarray) -> ExactTensor:
    """The exact product ``a @ b`` of two float64 matrices, or of two stacks of them
    (``(G, M, K) @ (G, K, N)``)."""
    width = slice_width(a.shape[-1])
    da, qa = split_digits(a, width)
    db, qb = split_digits(b, width)
    n = b.shape[-1]
    side = Side(join=lambda ts: np.concatenate(ts, axis=-1),
                part=lambda r, t: r[..., t * n:(t + 1) * n].reshape((-1,) + r.shape[-2:-1] + (n,)))
    return digit_product(da, qa, db, qb, width, a.shape[:-1] + b.shape[-1:], np.matmul, side)


@dataclass(frozen=True)
class Side:
    """How :func:`digit_product` puts all of one operand's digits into one product: ``join`` lays
    the digits side by side (one wider operand), ``part(result, t)`` is digit ``t``'s block of the
    product as a 3-D view, in the order of the gradient's entries (channels last where ``last``)."""

    join: Callable
    part: Callable
    last: bool = False


def digit_product(da: list, qa: int, db: list, qb: int, width: int, shape: tuple, product, side: Side) -> ExactTensor:
    """``product(Σ_s da[s] 2^(qa + s·width), Σ_t db[t] 2^(qb + t·width))`` exactly, as levels, for
    a bilinear ``product`` that is exact on the digit arrays (integers whose sums stay below
    2^53: any float64 GEMM order gives them exactly). Each digit of ``a`` meets all of ``b``'s in
    one product (``side``: fewer, wider GEMMs), whose blocks are added into their levels;
    ``side.last``: the blocks are an ``(N, C, H, W)`` ``shape`` channels last, laid back once, at
    the end."""
    from difftest.maths.kernels import add_integers

    nonzero = [t for t, d in enumerate(db) if d.any()]
    if not nonzero or not any(d.any() for d in da):
        return ExactTensor.zeros(shape)
    joined = side.join([db[t] for t in nonzero])
    rows = np.zeros((len(da) + len(db) - 1, math.prod(shape)), dtype=np.int64)
    present = set()
    for s, ds in enumerate(da):
        if not ds.any():
            continue
        wide = product(ds, joined)  # exact: integers below 2^53
        for k, t in enumerate(nonzero):
            block = side.part(wide, k)
            # at most ~140 terms below 2^53 each per level: no int64 overflow
            add_integers(rows[s + t].reshape(block.shape), block)
            present.add(s + t)
    if side.last:
        n, c, h, w = shape
        rows = rows.reshape(len(rows), n, h, w, c).transpose(0, 1, 4, 2, 3).reshape(len(rows), -1)  # a copy
    return ExactTensor.from_rows(rows, present, qa + qb, width, shape)


def _sides(name: str, g: Geometry):
    """The product of one digit of δ with digits of the other operand side by side (how many, the
    joined operand's shape tells), and how to cut it (:class:`Side`)."""
    if name == "grad_input":  # weights side by side along C; sums channels last (N·H·W, G, count·Cg)
        side = Side(join=lambda ts: np.concatenate(ts, axis=1),
                    part=lambda r, t: r.reshape(-1, g.groups, r.shape[-1] // g.C, g.Cg)[:, :, t, :], last=True)
        return (lambda p, q: input_product_last(p, q, dataclasses.replace(g, C=g.groups * q.shape[1]))), side
    if name == "grad_weight":  # im2cols side by side along their columns: (G, Og, count·M)
        m = g.Cg * g.kH * g.kW
        side = Side(join=lambda ts: np.concatenate(ts, axis=-1), part=lambda r, t: r[..., t * m:(t + 1) * m])
        return (lambda p, q: grouped_rows(p, g) @ q), side
    side = Side(join=lambda ts: ts[0], part=lambda r, t: r.reshape(1, 1, -1))  # the bias: one digit of ones
    return (lambda p, q: gradient_product(name, p, q, g)), side


class SlicedExactOracle:
    """Fast exact spec gradients: each gradient's sums over exact digit slices (see
    :func:`difftest.layouts.gradient_product`: batched over groups, the input gradient tap by
    tap)."""

    name = "exact"

    def spec_gradients(self, x: np.ndarray, w: np.ndarray, d: np.ndarray, g: Geometry,
                       gradients=GRADIENTS, sample=None) -> dict[str, ExactTensor]:
        """The exact ``gradients`` (default all three), each computed alone; with a ``sample``
        (:class:`difftest.sampling.Sample`), its entries only, as 1-D tensors in the order of its
        indices (:func:`entry_sums`).

        The digits are cut from the compact tensors: every product of two digit tensors is a
        sum of at most ``inner`` (the gradient's steps per entry) products of ``width``-bit
        integers, below 2^53, so :func:`~difftest.layouts.gradient_product` computes it exactly
        in any order. An entry no window reads only adds an unused digit level."""
        out = {}
        operands = {"grad_input": (d, w), "grad_weight": (d, x), "grad_bias": (d, np.ones(1))}
        for name in gradients:
            a, b = operands[name]
            width = slice_width(gemm_shape(name, g)[2])
            if sample is not None:
                out[name] = entry_sums(name, a, b, g, sample[name].index, width)
                continue
            da, qa = split_digits(a, width)
            db, qb = split_digits(b, width)
            db = [gradient_operand(name, t, g) for t in db]  # laid out once, not once per digit pair
            if name == "grad_input":  # δ's digits channels last once, the sums channels last
                da = [np.ascontiguousarray(t.transpose(0, 2, 3, 1)) for t in da]
            product, side = _sides(name, g)
            out[name] = digit_product(da, qa, db, qb, width, g.shape_of(name), product, side)
        return out


def entry_sums(name: str, a: np.ndarray, b: np.ndarray, g: Geometry, index: np.ndarray, width: int) -> ExactTensor:
    """The exact sums of the entries ``index`` of gradient ``name`` (1-D, in that order): each
    block of their terms (:func:`~difftest.layouts.entry_terms`) is cut into ``width``-bit digits
    at the whole operands' frame (so every block's levels share one scale), and each pair of digit
    blocks summed along the terms, exactly (integers below 2^53, as in :func:`digit_product`).
    Only the judged entries' terms are gathered and cut, never the whole operands."""
    fa = digit_frame(a, width)
    fb = None if name == "grad_bias" else digit_frame(b, width)
    if fa is None or (name != "grad_bias" and fb is None):
        return ExactTensor.zeros(index.shape)
    qb = 0 if fb is None else fb[0]
    levels: dict[int, np.ndarray] = {}
    operand = None if name == "grad_bias" else entry_operand(name, b, g)
    for rows, ta, tb in entry_terms(name, a, operand, g, index):
        da, _ = split_digits(ta, width, fa)
        db = [None] if tb is None else split_digits(tb, width, fb)[0]
        for s, ds in enumerate(da):
            for t, dt in enumerate(db):
                p = (ds.sum(axis=1) if dt is None else np.einsum("ek,ek->e", ds, dt)).astype(np.int64)
                levels.setdefault(s + t, np.zeros(index.shape, dtype=np.int64))[rows] += p
    return ExactTensor.from_levels(levels, fa[0] + qb, width)

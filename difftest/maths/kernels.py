"""Compiled (numba) folds for formats of precision <= 26: the NF runtime and the TorchLean bound.

The same folds as :mod:`difftest.replay` (which stays the engine for binary64), written as
scalar loops so that numba fuses every per-step operation without temporaries:

* NF arithmetic by exponent-bit manipulation: a product of two values of precision <= 26 is
  exact in float64; a sum is rounded from its TwoSum pair exactly as
  :func:`difftest.fparith.nf_add` does (a float64 midpoint decided by the sign of the error);
  integer rounding is the ``(y + 1.5·2^52) - 1.5·2^52`` round-to-nearest-even idiom;
* ``ulp`` of exact sums and products from their exact ``mag`` (a carry to a power of two is
  detected from the TwoSum error);
* the bound ``e`` is accumulated with round-to-nearest and inflated once at the end: its terms
  are non-negative, every term's value passes through at most ``R`` roundings (``R = 8`` per
  step plus 8), each at most a factor ``(1 - 2^-53)`` low, and a product that underflows loses at
  most ``2^-1074``; so ``(ê + slop)·(1 + 2R·2^-53)``, rounded up, is never below the exact bound
  and at most ``16·steps·2^-53`` relative above it.

The entry folds (:func:`pair_fold`, :func:`input_entries_fold`) take the same steps for chosen
entries only (a sampled check, :mod:`difftest.sampling`); :func:`level_views` is the exact
views' double-double accumulation (:mod:`difftest.exact`), not a fold.

numba compiles without fast-math: IEEE binary64 semantics, no contraction into FMA.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..values.directed import add_up_scalar, f2i as _f2i, i2f as _i2f, mul_up_scalar, sub_down_scalar

_C = 6755399441055744.0  # 1.5 * 2^52: (y + C) - C rounds y to an integer, ties to even, |y| < 2^51
_MANT = 0xFFFFFFFFFFFFF


@njit(inline="always")
def _pow2(q):
    """2^q for -1022 <= q <= 1023 (exact)."""
    return _i2f((q + 1023) << 52)


@njit(inline="always")
def _mag(v):
    """Flocq mag of a non-zero, normal float64 (frexp's exponent)."""
    return ((_f2i(v) >> 52) & 0x7FF) - 1022


@njit(inline="always")
def _half_ulp_of(v, p, emin):
    """ulp(v)/2 of a float64 value (exact real) of the format's range. Branch-free (the loops
    over entries vectorise): zero's exponent field gives ``mag = -1022``, below any ``emin``
    here, so ``q = emin`` as the zero case wants."""
    return _pow2(max(_mag(v) - p, emin) - 1)


@njit(inline="always")
def _round(x, p, emin):
    """Round a float64 (an exact real) to the format, ties to even. Branch-free: zero has
    ``q = emin`` (see :func:`_half_ulp_of`) and rounds to zero."""
    q = max(_mag(x) - p, emin)
    y = x * _pow2(-q)
    r = (y + _C) - _C
    return r * _pow2(q)


@njit(inline="always")
def _step(acc, e, t, e_t, p, emin):
    """addEps and acc ← acc ⊕ t; returns (acc, e)."""
    s = acc + t
    bb = s - acc
    err = (acc - (s - bb)) + (t - bb)
    # branch-free (selects): an exact zero sum has m = -1022, so q = emin, y = r = 0 and the
    # bound gains ulp(0)/2 = 2^(emin-1), as addEps wants
    bits = _f2i(s)
    m = ((bits >> 52) & 0x7FF) - 1022
    carried = ((bits & _MANT) == 0) & (err != 0.0) & ((err < 0.0) != (s < 0.0))
    e = e + e_t + _pow2(max(m - carried - p, emin) - 1)
    q = max(m - p, emin)
    y = s * _pow2(-q)
    r = (y + _C) - _C
    fl = r if r <= y else r - 1.0
    tie = (err != 0.0) & (y - fl == 0.5)
    r = (fl + 1.0 if err > 0.0 else fl) if tie else r
    return r * _pow2(q), e


@njit(inline="always")
def _mul_eps(x, y, prod, ex, ey, p, emin):
    """mulEps(x, y, ex, ey) with prod = x·y exact."""
    h = _half_ulp_of(prod, p, emin)
    if ex == 0.0 and ey == 0.0:
        return h
    return (abs(x) + ex) * ey + (abs(y) + ey) * ex + h


@njit(inline="always")
def _product_step(acc, e, x, y, ex, ey, p, emin):
    """One step of a fold of products: addEps of ``x ⊗ y`` with its ``mulEps`` (``ex``, ``ey`` the
    operands' eps), ``acc ← acc ⊕ x ⊗ y``; returns (acc, e). Every fold of products takes it, the
    sampled entry folds too, so theirs are the full folds' steps."""
    prod = x * y
    return _step(acc, e, _round(prod, p, emin), _mul_eps(x, y, prod, ex, ey, p, emin), p, emin)


@njit(inline="always")
def _input_step(acc, e, z, dv, wv, ed, ek, p, emin):
    """A contributing step of the input gradient's fold after ``z`` zero steps (each adding
    ``ulp(acc)/2``): the product ``δ ⊗ w``; returns (acc, e)."""
    if z > 0:
        e += z * _half_ulp_of(acc, p, emin)
    return _product_step(acc, e, dv, wv, ed, ek, p, emin)


#: Output channels one task of :func:`kernel_fold` folds together (each reads im2col once).
_KERNEL_BLOCK = 16


@njit(parallel=True, cache=True)
def kernel_fold(cols, drows, p, emin, ex, ed, acc_out, e_out):
    """grad_weight: entries (o, j), steps k over (n, i, j). ``cols`` is the whole im2col
    ``(K, C·kH·kW)``; with groups, ``acc_out`` is ``(O, C/G·kH·kW)`` and output channel ``o``
    reads the columns of its group (``G = cols.shape[1] // acc_out.shape[1]``). Every entry folds
    over k in order; a task takes a block of output channels and steps them together, so each
    row of im2col is read once per block, not once per output channel."""
    K = cols.shape[0]
    O, M = acc_out.shape
    Og = O // (cols.shape[1] // M)
    blocks = (O + _KERNEL_BLOCK - 1) // _KERNEL_BLOCK
    for blk in prange(blocks):
        o0 = blk * _KERNEL_BLOCK
        o1 = min(O, o0 + _KERNEL_BLOCK)
        acc = np.zeros((o1 - o0, M))
        e = np.zeros((o1 - o0, M))
        for k in range(K):
            row = cols[k]
            for o in range(o0, o1):
                d = drows[o, k]
                base = (o // Og) * M
                a_row = acc[o - o0]
                e_row = e[o - o0]
                for j in range(M):
                    a, b = _product_step(a_row[j], e_row[j], row[base + j], d, ex, ed, p, emin)
                    a_row[j] = a
                    e_row[j] = b
        acc_out[o0:o1, :] = acc
        e_out[o0:o1, :] = e


@njit(parallel=True, cache=True)
def bias_fold(drows, p, emin, ed, acc_out, e_out):
    """grad_bias: entries o, steps k over (n, i, j), term δ, step error epsδ."""
    O, K = drows.shape
    for o in prange(O):
        acc = 0.0
        e = 0.0
        for k in range(K):
            acc, e = _step(acc, e, drows[o, k], ed, p, emin)
        acc_out[o] = acc
        e_out[o] = e


@njit(parallel=True, cache=True)
def input_fold(d, wt, oi_t, di_t, vh, oj_t, dj_t, vw, p, emin, ek, ed, acc_out, e_out):
    """grad_input: entries (n, h, w, c) (``acc_out``/``e_out`` are channels-last ``(N, H, W, C)``,
    ``wt`` is the weight as ``(O, kH, kW, C/G)``); for each group the Lean fold over all (o, oi,
    oj, di, dj) of its ``O/G`` output channels, visiting only the contributing steps (slots from
    :func:`difftest.layouts.input_slots`) and adding each run of ``z`` zero steps as ``z·ulp(acc)/2``.
    The steps of an entry depend on (h, w) only, so the inner loop runs over the group's
    channels, contiguous."""
    N, O, oh, ow = d.shape
    kH, kW, Cg = wt.shape[1], wt.shape[2], wt.shape[3]
    H, W, C = acc_out.shape[1], acc_out.shape[2], acc_out.shape[3]
    G = C // Cg
    Og = O // G
    A, B = oi_t.shape[0], oj_t.shape[0]
    total = Og * oh * ow * kH * kW
    for nh in prange(N * H):
        n = nh // H
        h = nh % H
        for x in range(W):
            acc_all = acc_out[n, h, x]
            e_all = e_out[n, h, x]
            acc_all[:] = 0.0
            e_all[:] = 0.0
            for gi in range(G):
                acc = acc_all[gi * Cg:(gi + 1) * Cg]
                e = e_all[gi * Cg:(gi + 1) * Cg]
                last = -1
                for ol in range(Og):
                    o = gi * Og + ol
                    for a in range(A):
                        if not vh[a, h]:
                            continue
                        oi = oi_t[a, h]
                        di = di_t[a, h]
                        for b in range(B):
                            if not vw[b, x]:
                                continue
                            oj = oj_t[b, x]
                            dj = dj_t[b, x]
                            idx = (((ol * oh + oi) * ow + oj) * kH + di) * kW + dj
                            z = idx - last - 1
                            dv = d[n, o, oi, oj]
                            for c in range(Cg):
                                a2, e2 = _input_step(acc[c], e[c], z, dv, wt[o, di, dj, c], ed, ek, p, emin)
                                acc[c] = a2
                                e[c] = e2
                            last = idx
                z = total - 1 - last
                if z > 0:
                    for c in range(Cg):
                        e[c] += z * _half_ulp_of(acc[c], p, emin)


@njit(parallel=True, cache=True)
def pair_fold(drows, cols, p, emin, ex, ed, acc_out, e_out):
    """grad_weight at chosen entries (a sampled check): entry ``e`` folds ``cols[e, k]·drows[e, k]``
    over k, the same steps as :func:`kernel_fold` takes for it (``cols`` its im2col column,
    ``drows`` its output channel's row)."""
    E, K = drows.shape
    for e in prange(E):
        acc = 0.0
        err = 0.0
        for k in range(K):
            acc, err = _product_step(acc, err, cols[e, k], drows[e, k], ex, ed, p, emin)
        acc_out[e] = acc
        e_out[e] = err


@njit(parallel=True, cache=True)
def input_entries_fold(d, wt, en, ec, eh, ew, groups, oi_t, di_t, vh, oj_t, dj_t, vw, p, emin, ek, ed, acc_out, e_out):
    """grad_input at chosen entries ``(en[e], ec[e], eh[e], ew[e])`` (a sampled check): the same
    steps, zero runs included, as :func:`input_fold` takes for each (``wt`` the weight as ``(O,
    kH, kW, C/G)``, ``groups`` the layer's)."""
    N, O, oh, ow = d.shape
    kH, kW, Cg = wt.shape[1], wt.shape[2], wt.shape[3]
    Og = O // groups
    A, B = oi_t.shape[0], oj_t.shape[0]
    total = Og * oh * ow * kH * kW
    for e in prange(en.shape[0]):
        n = en[e]
        h = eh[e]
        x = ew[e]
        gi = ec[e] // Cg
        c = ec[e] % Cg
        acc = 0.0
        err = 0.0
        last = -1
        for ol in range(Og):
            o = gi * Og + ol
            for a in range(A):
                if not vh[a, h]:
                    continue
                oi = oi_t[a, h]
                di = di_t[a, h]
                for b in range(B):
                    if not vw[b, x]:
                        continue
                    oj = oj_t[b, x]
                    dj = dj_t[b, x]
                    idx = (((ol * oh + oi) * ow + oj) * kH + di) * kW + dj
                    z = idx - last - 1
                    acc, err = _input_step(acc, err, z, d[n, o, oi, oj], wt[o, di, dj, c], ed, ek, p, emin)
                    last = idx
        z = total - 1 - last
        if z > 0:
            err += z * _half_ulp_of(acc, p, emin)
        acc_out[e] = acc
        e_out[e] = err


@njit(inline="always")
def _sign(x):
    return (x > 0.0) - (x < 0.0)


@njit(inline="always")
def _undecided(hi, lo, r):
    """The rule of :meth:`difftest.exact.ExactTensor._double_double` (its docstring derives it):
    whether ``exact ∈ [hi + lo - r, hi + lo + r]`` fails to prove ``hi = RN(exact)``, or leaves a
    tail ``r`` above ``2^-80 |hi|``."""
    frac, ex = math.frexp(hi)
    outwards = (_sign(lo) == _sign(hi)) & (abs(lo) > r)
    half_exp = ex - (55 if (abs(frac) == 0.5) & (not outwards) else 54)
    limit = math.ldexp(1.0, max(half_exp, -1074)) if (hi != 0.0) & (half_exp >= -1074) else 0.0
    decided = (abs(lo) + r < limit) | ((lo == 0.0) & (r == 0.0))
    return (not decided) | (r > abs(hi) * 2.0**-80) | (not math.isfinite(hi))


@njit(parallel=True, cache=True)
def level_views(levels, factors, r_scale, gamma2, hi_out, lo_out, r_out, undecided_out):
    """The double-double views of :meth:`difftest.exact.ExactTensor._double_double`, one pass per
    entry: ``levels`` ``(L, n)`` int64 (most significant first, ``|v| < 2^62``); each level split
    into two sign-magnitude 31-bit halves, each half an exact float64 term ``t = part·2^k``
    (``factors[L, half] = 2^k``, so the product is exact: a multiple of ``2^-1074`` below
    ``2^(31 + k)``), added by TwoSum into ``s`` with the errors summed in ``c`` and ``|t|`` in
    ``mag``; then ``hi, lo = TwoSum(s, c)``, ``r = mag·r_scale·gamma2`` rounded up, and whether
    that decides ``hi = RN(exact)``."""
    L, n = levels.shape
    for i in prange(n):
        s = 0.0
        c = 0.0
        mag = 0.0
        for lv in range(L):
            v = levels[lv, i]
            a = -v if v < 0 else v
            sign = -1 if v < 0 else (1 if v > 0 else 0)
            for half in range(2):
                part = sign * (a >> 31) if half == 0 else sign * (a & 0x7FFFFFFF)
                t = float(part) * factors[lv, half] if part != 0 else 0.0
                ss = s + t
                bb = ss - s
                e = (s - (ss - bb)) + (t - bb)
                s = ss
                c = c + e
                mag = mag + abs(t)
        hi = s + c
        bb = hi - s
        lo = (s - (hi - bb)) + (c - bb)
        r = mul_up_scalar(mul_up_scalar(mag, r_scale), gamma2)
        hi_out[i] = hi
        lo_out[i] = lo
        r_out[i] = r
        undecided_out[i] = _undecided(hi, lo, r)


@njit(parallel=True, cache=True)
def error_bounds(values, hi, lo, tail, approx_out, lower_out):
    """:func:`difftest.compare.error_bounds` per entry, in one pass (the derivation is there): the
    float64 estimate ``|fl(fl(b - hi) - lo)|`` of ``|b - exact|`` and its sure lower bound; a
    non-finite ``b`` has error ``inf`` (lower ``inf``), a ``b - hi`` past float64 ``inf`` (lower
    ``2^1023``)."""
    k = 2.0**-52 * (1 + 2.0**-50)
    for i in prange(values.size):
        b = values[i]
        if not math.isfinite(b):
            approx_out[i] = math.inf
            lower_out[i] = math.inf
            continue
        d1 = b - hi[i]
        if not math.isfinite(d1):
            approx_out[i] = math.inf
            lower_out[i] = 2.0**1023
            continue
        approx = abs(d1 - lo[i])
        slack = add_up_scalar(mul_up_scalar(add_up_scalar(abs(d1), approx), k), tail[i])
        approx_out[i] = approx
        lower_out[i] = max(sub_down_scalar(approx, slack), 0.0)


def inflate(e: np.ndarray, steps: int) -> np.ndarray:
    """Turn a round-to-nearest accumulation of non-negative terms into a sure upper bound."""
    from ..values.fparith import add_up, mul_up

    r = 8 * (steps + 1)
    slop = np.float64(4.0 * (steps + 1)) * 2.0**-1074
    return mul_up(add_up(e, slop), np.float64(1.0 + 2 * r * 2.0**-53))

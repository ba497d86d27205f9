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

binary32 folds run their NF arithmetic on the hardware's binary32 (``fast``, :func:`_sum_step`): a
binary32 product of two binary32 values is the conversion of their exact float64 product, their
sum the binary32 addition — the same values as the emulation while no overflow occurs and the
thread's arithmetic has gradual underflow (:func:`_ieee32` checks it in every task); the bound's
steps are the same operations either way. The caller folds again without it where a result is
non-finite (:func:`difftest.replay._fold`).

The entry folds (:func:`pair_fold`, :func:`input_entries_fold`) take the same steps for chosen
entries only (a sampled check, :mod:`difftest.sampling`); :func:`level_views` is the exact
views' double-double accumulation (:mod:`difftest.exact`), not a fold.

numba compiles without fast-math: IEEE binary64 semantics, no contraction into FMA.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..values.directed import add_up_scalar, f2i as _f2i, i2f as _i2f, mul_up_scalar, next_up, sub_down_scalar

_C = 6755399441055744.0  # 1.5 * 2^52: (y + C) - C rounds y to an integer, ties to even, |y| < 2^51
_MANT = 0xFFFFFFFFFFFFF
_EXP = 0x7FF0000000000000


@njit(inline="always")
def _pow2(q):
    """2^q for -1022 <= q <= 1023 (exact)."""
    return _i2f((q + 1023) << 52)


@njit(inline="always")
def _mag(v):
    """Flocq mag of a non-zero, normal float64 (frexp's exponent)."""
    return ((_f2i(v) >> 52) & 0x7FF) - 1022


@njit(inline="always")
def _half_ulp_bits(field, p, emin):
    """The float64 ``ulp/2 = 2^(max(mag - p, emin) - 1)`` of a value whose float64 exponent field,
    in place (``bits & _EXP``, less ``carried << 52`` where a carry is undone), is ``field``: with
    ``mag = E - 1022`` that is ``2^(max(E - p, emin + 1022) - 1023)``, whose bits are
    ``max(field - (p << 52), (emin + 1022) << 52)`` (``emin >= -1021``: a normal float64). Three
    integer operations, no shift of the field: zero's field ``E = 0`` gives ``ulp(0)/2 =
    2^(emin - 1)``, as addEps wants."""
    return _i2f(max(field - (p << 52), (emin + 1022) << 52))


@njit(inline="always")
def _half_ulp_of(v, p, emin):
    """ulp(v)/2 of a float64 value (exact real) of the format's range (branch-free: the loops
    over entries vectorise)."""
    return _half_ulp_bits(_f2i(v) & _EXP, p, emin)


@njit(inline="always")
def _round(x, p, emin):
    """Round a float64 (an exact real) to the format, ties to even. Branch-free: zero has
    ``q = emin`` (see :func:`_half_ulp_of`) and rounds to zero."""
    q = max(_mag(x) - p, emin)
    y = x * _pow2(-q)
    r = (y + _C) - _C
    return r * _pow2(q)


@njit(inline="always")
def _ieee32(probe):
    """Whether this thread's binary32 arithmetic has gradual underflow (no flush-to-zero, no
    denormals-are-zero: a library may set either in MXCSR), from ``probe = [2^-149, 2^-70]``
    (an argument, so that no compiler folds it): ``2^-149 + 2^-149`` and ``2^-70 · 2^-70`` in
    binary32 must be the subnormals ``2^-148`` and ``2^-140``."""
    a = np.float32(probe[0])
    b = np.float32(probe[1])
    return (np.float64(a + a) == probe[0] * 2.0) & (np.float64(b * b) == probe[1] * probe[1])


@njit(inline="always")
def _add_eps(acc, e, t, e_t, p, emin):
    """addEps: ``e + e_t + ulp(acc + t)/2`` of the exact sum; returns it with ``s = fl(acc + t)``,
    the TwoSum error ``err`` and the bits of ``s``."""
    s = acc + t
    bb = s - acc
    err = (acc - (s - bb)) + (t - bb)
    bits = _f2i(s)
    # a carry to a power of two: |s| is one, and the error points back towards zero (s = 0 has
    # err = 0: an exact zero sum, whose field E = 0 gives ulp(0)/2 = 2^(emin-1), as addEps wants)
    carried = ((bits & _MANT) == 0) & (err != 0.0) & ((bits ^ _f2i(err)) < 0)
    return e + e_t + _half_ulp_bits((bits & _EXP) - (np.int64(carried) << 52), p, emin), s, err, bits


@njit(inline="always")
def _step(acc, e, t, e_t, p, emin):
    """addEps and acc ← acc ⊕ t; returns (acc, e). Branch-free (selects): an exact zero sum has
    ``mag = -1022``, so ``q = emin`` and ``y = r = 0``."""
    e, s, err, bits = _add_eps(acc, e, t, e_t, p, emin)
    q = max(_mag(s) - p, emin)
    y = s * _pow2(-q)
    r = (y + _C) - _C
    fl = r if r <= y else r - 1.0
    tie = (err != 0.0) & (y - fl == 0.5)
    r = (fl + 1.0 if err > 0.0 else fl) if tie else r
    return r * _pow2(q), e


@njit(inline="always")
def _step32(acc, e, t, e_t):
    """:func:`_step` of binary32 on the hardware's binary32 arithmetic (see :func:`_sum_step`)."""
    e = _add_eps(acc, e, t, e_t, 24, -149)[0]
    return np.float64(np.float32(acc) + np.float32(t)), e


@njit(inline="always")
def _sum_step(acc, e, t, e_t, p, emin, fast):
    """:func:`_step`; with ``fast`` (binary32 only, on hardware with gradual underflow),
    ``acc ⊕ t`` is the hardware's binary32 sum: the same value while it is finite (IEEE binary32
    is FLT(24, -149) with ties to even). An overflow makes the fold's result non-finite, and the
    caller then folds again without ``fast``. One branch on ``fast`` around whole steps: the
    compiler takes it out of the loop (a ``fast``-dependent select inside a step would compute
    both roundings)."""
    if fast:
        return _step32(acc, e, t, e_t)
    return _step(acc, e, t, e_t, p, emin)


@njit(inline="always")
def _mul_eps(x, y, prod, ex, ey, p, emin):
    """mulEps(x, y, ex, ey) with prod = x·y exact."""
    h = _half_ulp_of(prod, p, emin)
    if ex == 0.0 and ey == 0.0:
        return h
    return (abs(x) + ex) * ey + (abs(y) + ey) * ex + h


@njit(inline="always")
def _product_step(acc, e, x, y, ex, ey, p, emin, fast):
    """One step of a fold of products: addEps of ``x ⊗ y`` with its ``mulEps`` (``ex``, ``ey`` the
    operands' eps), ``acc ← acc ⊕ x ⊗ y``; returns (acc, e). Every fold of products takes it, the
    sampled entry folds too, so theirs are the full folds' steps. ``fast``: see :func:`_sum_step`
    (the product of two binary32 values is exact in float64, its binary32 rounding a conversion)."""
    prod = x * y
    if fast:
        return _step32(acc, e, np.float64(np.float32(prod)), _mul_eps(x, y, prod, ex, ey, 24, -149))
    return _step(acc, e, _round(prod, p, emin), _mul_eps(x, y, prod, ex, ey, p, emin), p, emin)


@njit(inline="always")
def _input_step(acc, e, z, dv, wv, ed, ek, p, emin, fast):
    """A contributing step of the input gradient's fold after ``z`` zero steps (each adding
    ``ulp(acc)/2``): the product ``δ ⊗ w``; returns (acc, e)."""
    if z > 0:
        e += z * _half_ulp_of(acc, p, emin)
    return _product_step(acc, e, dv, wv, ed, ek, p, emin, fast)


#: Output channels one task of :func:`kernel_fold` folds together (each reads im2col once).
_KERNEL_BLOCK = 16


@njit(parallel=True, cache=True)
def kernel_fold(cols, drows, p, emin, fast32, probe, ex, ed, acc_out, e_out):
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
        fast = fast32 and _ieee32(probe)
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
                    a, b = _product_step(a_row[j], e_row[j], row[base + j], d, ex, ed, p, emin, fast)
                    a_row[j] = a
                    e_row[j] = b
        acc_out[o0:o1, :] = acc
        e_out[o0:o1, :] = e


@njit(parallel=True, cache=True)
def bias_fold(drows, p, emin, fast32, probe, ed, acc_out, e_out):
    """grad_bias: entries o, steps k over (n, i, j), term δ, step error epsδ."""
    O, K = drows.shape
    for o in prange(O):
        fast = fast32 and _ieee32(probe)
        acc = 0.0
        e = 0.0
        for k in range(K):
            acc, e = _sum_step(acc, e, drows[o, k], ed, p, emin, fast)
        acc_out[o] = acc
        e_out[o] = e


@njit(inline="always")
def _entry_taps(h, x, oi_t, di_t, vh, oj_t, dj_t, vw, oh, ow, kH, kW, taps):
    """The kernel taps that reach input position ``(h, x)``, in the Lean fold's order, into
    ``taps`` (rows ``(oi, oj, di, dj, offset)``, ``offset`` the step's index within one output
    channel's ``oh·ow·kH·kW`` steps); returns how many. Output channel ``ol`` of the group takes
    step ``ol·oh·ow·kH·kW + offset`` there: both input folds visit these steps, channel by channel."""
    count = 0
    for a in range(oi_t.shape[0]):
        if not vh[a, h]:
            continue
        oi = oi_t[a, h]
        di = di_t[a, h]
        for b in range(oj_t.shape[0]):
            if not vw[b, x]:
                continue
            oj = oj_t[b, x]
            dj = dj_t[b, x]
            taps[count, 0] = oi
            taps[count, 1] = oj
            taps[count, 2] = di
            taps[count, 3] = dj
            taps[count, 4] = ((oi * ow + oj) * kH + di) * kW + dj
            count += 1
    return count


@njit(parallel=True, cache=True)
def input_fold(d, wt, oi_t, di_t, vh, oj_t, dj_t, vw, p, emin, fast32, probe, ek, ed, acc_out, e_out):
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
    per_channel = oh * ow * kH * kW
    total = Og * per_channel
    for nh in prange(N * H):
        fast = fast32 and _ieee32(probe)
        n = nh // H
        h = nh % H
        taps = np.empty((oi_t.shape[0] * oj_t.shape[0], 5), dtype=np.int64)
        for x in range(W):
            acc_all = acc_out[n, h, x]
            e_all = e_out[n, h, x]
            acc_all[:] = 0.0
            e_all[:] = 0.0
            count = _entry_taps(h, x, oi_t, di_t, vh, oj_t, dj_t, vw, oh, ow, kH, kW, taps)
            for gi in range(G):
                c0 = gi * Cg
                last = -1
                for ol in range(Og):
                    o = gi * Og + ol
                    for t in range(count):
                        idx = ol * per_channel + taps[t, 4]
                        z = idx - last - 1
                        dv = d[n, o, taps[t, 0], taps[t, 1]]
                        w_row = wt[o, taps[t, 2], taps[t, 3]]
                        if z > 0:  # the zero steps before this one: each adds ulp(acc)/2
                            for c in range(Cg):
                                e_all[c0 + c] += z * _half_ulp_of(acc_all[c0 + c], p, emin)
                        for c in range(Cg):
                            a2, e2 = _product_step(acc_all[c0 + c], e_all[c0 + c], dv, w_row[c], ed, ek, p, emin, fast)
                            acc_all[c0 + c] = a2
                            e_all[c0 + c] = e2
                        last = idx
                z = total - 1 - last
                if z > 0:
                    for c in range(Cg):
                        e_all[c0 + c] += z * _half_ulp_of(acc_all[c0 + c], p, emin)


@njit(parallel=True, cache=True)
def pair_fold(drows, cols, p, emin, fast32, probe, ex, ed, acc_out, e_out):
    """grad_weight at chosen entries (a sampled check): entry ``e`` folds ``cols[e, k]·drows[e, k]``
    over k, the same steps as :func:`kernel_fold` takes for it (``cols`` its im2col column,
    ``drows`` its output channel's row)."""
    E, K = drows.shape
    for e in prange(E):
        fast = fast32 and _ieee32(probe)
        acc = 0.0
        err = 0.0
        for k in range(K):
            acc, err = _product_step(acc, err, cols[e, k], drows[e, k], ex, ed, p, emin, fast)
        acc_out[e] = acc
        e_out[e] = err


@njit(parallel=True, cache=True)
def input_entries_fold(d, wt, en, ec, eh, ew, groups, oi_t, di_t, vh, oj_t, dj_t, vw, p, emin, fast32, probe, ek, ed,
                       acc_out, e_out):
    """grad_input at chosen entries ``(en[e], ec[e], eh[e], ew[e])`` (a sampled check): the same
    steps, zero runs included, as :func:`input_fold` takes for each (``wt`` the weight as ``(O,
    kH, kW, C/G)``, ``groups`` the layer's)."""
    N, O, oh, ow = d.shape
    kH, kW, Cg = wt.shape[1], wt.shape[2], wt.shape[3]
    Og = O // groups
    per_channel = oh * ow * kH * kW
    total = Og * per_channel
    for e in prange(en.shape[0]):
        fast = fast32 and _ieee32(probe)
        n = en[e]
        gi = ec[e] // Cg
        c = ec[e] % Cg
        taps = np.empty((oi_t.shape[0] * oj_t.shape[0], 5), dtype=np.int64)
        count = _entry_taps(eh[e], ew[e], oi_t, di_t, vh, oj_t, dj_t, vw, oh, ow, kH, kW, taps)
        acc = 0.0
        err = 0.0
        last = -1
        for ol in range(Og):
            o = gi * Og + ol
            for t in range(count):
                idx = ol * per_channel + taps[t, 4]
                z = idx - last - 1
                acc, err = _input_step(acc, err, z, d[n, o, taps[t, 0], taps[t, 1]], wt[o, taps[t, 2], taps[t, 3], c],
                                       ed, ek, p, emin, fast)
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
def level_views(levels, picked, factors, r_scale, gamma2, hi_out, lo_out, r_out, undecided_out):
    """The double-double views of :meth:`difftest.exact.ExactTensor._double_double`, one pass per
    entry: rows ``picked`` of ``levels`` ``(rows, n)`` int64 (most significant first, ``|v| <
    2^62``; ``factors`` row ``L`` for ``picked[L]``); each level split
    into two sign-magnitude 31-bit halves, each half an exact float64 term ``t = part·2^k``
    (``factors[L, half] = 2^k``, so the product is exact: a multiple of ``2^-1074`` below
    ``2^(31 + k)``), added by TwoSum into ``s`` with the errors summed in ``c`` and ``|t|`` in
    ``mag``; then ``hi, lo = TwoSum(s, c)``, ``r = mag·r_scale·gamma2`` rounded up, and whether
    that decides ``hi = RN(exact)``. Each entry's terms in that order; blocks of entries step
    together, each term across the block at once (one entry's TwoSum chain is a chain of
    latencies)."""
    L, n = picked.size, levels.shape[1]
    blocks = (n + _VIEW_BLOCK - 1) // _VIEW_BLOCK
    for blk in prange(blocks):
        i0 = blk * _VIEW_BLOCK
        m = min(n, i0 + _VIEW_BLOCK) - i0
        s = np.zeros(m)
        c = np.zeros(m)
        mag = np.zeros(m)
        for lv in range(L):
            row = levels[picked[lv]]
            for half in range(2):
                f = factors[lv, half]
                for j in range(m):  # entries side by side: the loop the compiler vectorises
                    v = row[i0 + j]
                    a = -v if v < 0 else v
                    part = (a >> 31) if half == 0 else (a & 0x7FFFFFFF)
                    t = float(-part if v < 0 else part) * f if part != 0 else 0.0
                    ss = s[j] + t
                    bb = ss - s[j]
                    e = (s[j] - (ss - bb)) + (t - bb)
                    s[j] = ss
                    c[j] = c[j] + e
                    mag[j] = mag[j] + abs(t)
        for j in range(m):
            i = i0 + j
            hi = s[j] + c[j]
            bb = hi - s[j]
            lo = (s[j] - (hi - bb)) + (c[j] - bb)
            r = mul_up_scalar(mul_up_scalar(mag[j], r_scale), gamma2)
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


@njit(parallel=True, cache=True)
def order_free_bound(c, n, growth, tiny, rel, eta, s_out, bound_out):
    """:func:`difftest.orderfree.product_bound` after its GEMMs, per entry in one pass, the same
    operations in the same order (the derivation is there): ``s = (c + tiny)·rel`` (``sum_up``),
    ``((1+u)^n - 1)·s + halve_up(n·(1+u)^(n-1)·2^emin)`` (``eta = 2^emin``, 0 without ``emin``),
    every operation rounded up; ``growth[j] = (1+u)^j - 1`` rounded up for ``j = 0..max n``."""
    for i in prange(c.size):
        s = mul_up_scalar(add_up_scalar(c[i], tiny), rel)
        k = np.int64(n[i])
        below = add_up_scalar(1.0, growth[k - 1] if k > 0 else growth[0])
        x = mul_up_scalar(mul_up_scalar(n[i], below), eta)
        h = x * 0.5
        eta_term = next_up(h) if h * 2.0 < x else h
        bound = add_up_scalar(mul_up_scalar(growth[k], s), eta_term)
        s_out[i] = s
        bound_out[i] = math.inf if bound != bound else bound


_ABS = 0x7FFFFFFFFFFFFFFF
#: Entries :func:`level_views` steps together.
_VIEW_BLOCK = 512


@njit(inline="always")
def _significand(bits):
    """``(m, E)`` with ``|v| = m·2^E`` exactly, ``m`` an integer below ``2^53``, for the bits of a
    finite non-zero ``|v|`` (normal: the hidden bit set; subnormal: ``E = -1074``)."""
    field = bits >> 52
    if field != 0:
        return (bits & _MANT) | (1 << 52), field - 1075
    return bits, -1074


@njit(parallel=True, cache=True)
def digit_frame_parts(flat, chunk, low_out, top_out):
    """Per chunk of ``chunk`` entries of ``flat``: the lowest set bit's exponent of any non-zero
    entry (``low_out``, 2^30 where none) and the largest ``|entry|`` (``top_out``); the trailing
    zeros of ``m`` from the exponent of ``float(m & -m)``, a power of two."""
    for ci in prange(low_out.size):
        low = 1 << 30
        top = 0.0
        for i in range(ci * chunk, min(flat.size, (ci + 1) * chunk)):
            bits = _f2i(flat[i]) & _ABS
            if bits == 0:
                continue
            m, ex = _significand(bits)
            tz = ((_f2i(float(m & -m)) >> 52) & 0x7FF) - 1023
            low = min(low, ex + tz)
            top = max(top, abs(flat[i]))
        low_out[ci] = low
        top_out[ci] = top


@njit(parallel=True, cache=True)
def split_digits(flat, q, width, out):
    """``out[s, i]`` the signed ``width``-bit digit ``s`` of ``flat[i] = Σ_s out[s, i]·2^(q + s·width)``
    (``q`` at or below every entry's lowest set bit, ``out`` zeros on entry): ``|flat[i]| = m·2^E``
    is the integer ``N = m << (E - q)`` (``m >> (q - E)`` where ``E < q``: only zeros shifted out), and digit ``s`` its bits ``[s·width, (s+1)·width)`` — at
    most ``53/width + 1`` non-zero digits per entry, cut from ``m`` by shifts (the low bits of a
    left shift are right even where it wraps past 64 bits: the mask keeps fewer than 64)."""
    mask = (1 << width) - 1
    count = out.shape[0]
    for i in prange(flat.size):
        v = flat[i]
        bits = _f2i(v) & _ABS
        if bits == 0:
            continue
        m, ex = _significand(bits)
        if ex < q:  # m's trailing zeros reach below q: drop them (q is at or below the lowest set bit)
            m >>= q - ex
            ex = q
        shift = ex - q
        sign = -1.0 if v < 0.0 else 1.0
        for s in range(shift // width, min((shift + 52) // width, count - 1) + 1):
            off = s * width - shift
            d = (m >> off) & mask if off >= 0 else (m << (-off)) & mask
            out[s, i] = sign * float(d)


@njit(cache=True)
def add_integers(total, values):
    """``total += values`` for 3-D arrays (``values`` any strides: a block of a wider product),
    ``values`` integer-valued float64 below 2^53 (a digit GEMM), into int64, in one pass. Serial:
    it runs between BLAS calls, and a parallel region there leaves its threads spinning on the
    cores the next GEMM's threads want."""
    A, B, C = total.shape
    for i in range(A):
        for j in range(B):
            for k in range(C):
                total[i, j, k] += np.int64(values[i, j, k])


@njit(parallel=True, cache=True)
def plus_eps_terms(bound, sa, sb, m, e_a, e_b, two_ea_eb, out):
    """``bound + (sa·e_b + sb·e_a + m·two_ea_eb)`` per entry, every operation rounded up, in this
    order: the order-free bound's eps terms (:func:`difftest.orderfree.product_bound`), one pass."""
    for i in prange(out.size):
        eps = add_up_scalar(add_up_scalar(mul_up_scalar(sa[i], e_b), mul_up_scalar(sb[i], e_a)),
                            mul_up_scalar(m[i], two_ea_eb))
        out[i] = add_up_scalar(bound[i], eps)


def inflate(e: np.ndarray, steps: int) -> np.ndarray:
    """Turn a round-to-nearest accumulation of non-negative terms into a sure upper bound."""
    from ..values.fparith import add_up, mul_up

    r = 8 * (steps + 1)
    slop = np.float64(4.0 * (steps + 1)) * 2.0**-1074
    return mul_up(add_up(e, slop), np.float64(1.0 + 2 * r * 2.0**-53))

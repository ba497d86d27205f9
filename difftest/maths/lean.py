"""TorchLean's NF Conv2D-backward definitions, transliterated one for one on exact rationals.

This module is the specification the vectorised engine (:mod:`difftest.replay`) is tested
against. It is deliberately literal and slow: scalar loops over ``Fraction`` values, the same
fold orders, the same per-step terms and the same zero steps as the Lean file
``NN/Proofs/RuntimeApprox/NF/ConvBackward`` (restated in ``torchlean-model.md``). It works for
any :class:`~difftest.formats.Format`, including radix 10 and FLX.

Arrays carry a batch axis; TorchLean has none. ``grad_input`` is per example (the Lean
theorem, example by example); ``grad_weight`` and ``grad_bias`` fold over ``(n, i, j)`` with
``n`` outermost — the documented batch *extension*, not a Lean theorem.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Iterable

import numpy as np

from ..values.formats import Format
from ..values.geometry import Geometry

Q = Fraction


def add_eps(fmt: Format, acc: Q, t: Q, e_acc: Q, e_t: Q) -> Q:
    """Mirrors TorchLean ``addEps``: ``e_acc + e_t + ulp(acc + t) / 2`` (``acc + t`` exact)."""
    return e_acc + e_t + fmt.ulp(acc + t) / 2


def mul_eps(fmt: Format, x: Q, y: Q, e_x: Q, e_y: Q) -> Q:
    """Mirrors TorchLean ``mulEps``: ``(|x| + e_x)·e_y + (|y| + e_y)·e_x + ulp(x·y) / 2``."""
    return (abs(x) + e_x) * e_y + (abs(y) + e_y) * e_x + fmt.ulp(x * y) / 2


def fold_add_state(fmt: Format, steps: Iterable[tuple[Q, Q]]) -> tuple[Q, Q]:
    """Mirrors TorchLean ``foldAddState``: returns ``(acc, e)`` after all steps.

    ``acc`` is the NF runtime sum (``acc ← acc ⊕ t``), ``e`` the certified bound. Every step
    counts, zero terms included (``acc ⊕ 0 = acc`` but ``ulp(acc)/2`` is still added).
    """
    acc, e = Q(0), Q(0)
    for t, e_t in steps:
        e = add_eps(fmt, acc, t, e, e_t)
        acc = fmt.round(acc + t)
    return acc, e


def nf_mul(fmt: Format, x: Q, y: Q) -> Q:
    """NF ``x ⊗ y = round(x · y)``."""
    return fmt.round(x * y)


def _q(a: np.ndarray) -> np.ndarray:
    return np.vectorize(Q, otypes=[object])(a)


def padded_read(x: np.ndarray, g: Geometry, n: int, c: int, r: int, q: int) -> Q:
    """Mirrors ``getAtOrZero`` on ``padMultiChannel``: ``x[n, c, r - ph, q - pw]`` or exact 0."""
    r, q = r - g.ph, q - g.pw
    return Q(x[n, c, r, q]) if 0 <= r < g.H and 0 <= q < g.W else Q(0)


def bias_point(fmt: Format, dR: np.ndarray, eps_d: Q, g: Geometry, o: int) -> tuple[Q, Q]:
    """Mirrors ``conv2dBiasPointBound`` (and the NF value of ``conv2dBiasDerivSpec``).

    Steps ``(δ_R[n, o, i, j], epsδ)`` over ``(n, i, j)`` row-major.
    """
    steps = (
        (Q(dR[n, o, i, j]), eps_d)
        for n in range(g.N)
        for i in range(g.out_h)
        for j in range(g.out_w)
    )
    return fold_add_state(fmt, steps)


def kernel_point(
    fmt: Format, xR: np.ndarray, dR: np.ndarray, eps_x: Q, eps_d: Q, g: Geometry, o: int, c: int, di: int, dj: int
) -> tuple[Q, Q]:
    """Mirrors ``conv2dKernelPointBound``: term ``x̃ ⊗ δ``, step error ``mulEps(x̃, δ, epsX, epsδ)``.

    Padded reads are exact zeros and still steps. ``c`` is the weight's channel, within the
    group of ``o``; reads are at ``(i·sh + di·dh, j·sw + dj·dw)`` (extension: dilation,
    per-axis stride and padding).
    """
    cin = (o // g.Og) * g.Cg + c

    def steps():
        for n in range(g.N):
            for i in range(g.out_h):
                for j in range(g.out_w):
                    xv = padded_read(xR, g, n, cin, i * g.sh + di * g.dh, j * g.sw + dj * g.dw)
                    dv = Q(dR[n, o, i, j])
                    yield nf_mul(fmt, xv, dv), mul_eps(fmt, xv, dv, eps_x, eps_d)

    return fold_add_state(fmt, steps())


def input_point(
    fmt: Format, wR: np.ndarray, dR: np.ndarray, eps_k: Q, eps_d: Q, g: Geometry, n: int, c: int, i: int, j: int
) -> tuple[Q, Q]:
    """Mirrors ``conv2dInputPointBound``: folds over **all** ``(o, oi, oj, di, dj)``.

    Matching tuples (``oi·sh + di·dh = i + ph``, ``oj·sw + dj·dw = j + pw``) add ``δ ⊗ w`` with
    ``mulEps(δ, w, epsδ, epsK)``; every other tuple is a zero step with error 0. ``o`` runs over
    the output channels of ``c``'s group (each group is the spec).
    """
    grp = c // g.Cg

    def steps():
        for ol in range(g.Og):
            o = grp * g.Og + ol
            for oi in range(g.out_h):
                for oj in range(g.out_w):
                    for di in range(g.kH):
                        for dj in range(g.kW):
                            if oi * g.sh + di * g.dh == i + g.ph and oj * g.sw + dj * g.dw == j + g.pw:
                                dv, wv = Q(dR[n, o, oi, oj]), Q(wR[o, c - grp * g.Cg, di, dj])
                                yield nf_mul(fmt, dv, wv), mul_eps(fmt, dv, wv, eps_d, eps_k)
                            else:
                                yield Q(0), Q(0)

    return fold_add_state(fmt, steps())


def gradients_and_bounds(
    fmt: Format,
    xR: np.ndarray,
    wR: np.ndarray,
    dR: np.ndarray,
    g: Geometry,
    eps_x: Q = Q(0),
    eps_k: Q = Q(0),
    eps_d: Q = Q(0),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """NF runtime gradients and ``conv2d*BoundTensor`` (absolute point bounds), as Fractions.

    Returns ``{gradient: (nf_values, bound)}`` with object arrays of Fractions.
    """
    eps_x, eps_k, eps_d = Q(eps_x), Q(eps_k), Q(eps_d)

    def table(shape, point):
        vals = np.empty(shape, dtype=object)
        bnds = np.empty(shape, dtype=object)
        for idx in np.ndindex(*shape):
            v, b = point(*idx)
            vals[idx], bnds[idx] = v, abs(b)
        return vals, bnds

    return {
        "grad_input": table(g.input_shape, lambda n, c, i, j: input_point(fmt, wR, dR, eps_k, eps_d, g, n, c, i, j)),
        "grad_weight": table(
            g.weight_shape, lambda o, c, di, dj: kernel_point(fmt, xR, dR, eps_x, eps_d, g, o, c, di, dj)
        ),
        "grad_bias": table(g.bias_shape, lambda o: bias_point(fmt, dR, eps_d, g, o)),
    }


def spec_gradients(x: np.ndarray, w: np.ndarray, d: np.ndarray, g: Geometry) -> dict[str, np.ndarray]:
    """The real-valued spec gradients (``conv2d*DerivSpec``) as exact Fractions."""
    X, Wt, D = _q(x), _q(w), _q(d)
    bias = np.empty(g.bias_shape, dtype=object)
    for (o,) in np.ndindex(*g.bias_shape):
        bias[o] = sum((D[n, o, i, j] for n in range(g.N) for i in range(g.out_h) for j in range(g.out_w)), start=Q(0))
    kernel = np.empty(g.weight_shape, dtype=object)
    for o, c, di, dj in np.ndindex(*g.weight_shape):
        cin = (o // g.Og) * g.Cg + c
        kernel[o, c, di, dj] = sum(
            (padded_read(X, g, n, cin, i * g.sh + di * g.dh, j * g.sw + dj * g.dw) * D[n, o, i, j]
             for n in range(g.N) for i in range(g.out_h) for j in range(g.out_w)),
            start=Q(0),
        )
    inp = np.empty(g.input_shape, dtype=object)
    for n, c, i, j in np.ndindex(*g.input_shape):
        grp = c // g.Cg
        inp[n, c, i, j] = sum(
            (D[n, o, oi, oj] * Wt[o, c - grp * g.Cg, di, dj]
             for o in range(grp * g.Og, (grp + 1) * g.Og) for oi in range(g.out_h) for oj in range(g.out_w)
             for di in range(g.kH) for dj in range(g.kW)
             if oi * g.sh + di * g.dh == i + g.ph and oj * g.sw + dj * g.dw == j + g.pw),
            start=Q(0),
        )
    return {"grad_input": inp, "grad_weight": kernel, "grad_bias": bias}

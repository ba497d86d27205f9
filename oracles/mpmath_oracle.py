"""The reference oracle: the spec gradients summed in mpmath, entry by entry, exactly.

The sums follow TorchLean's ``conv2d*DerivSpec`` literally (padded reads, matching input
steps). mpmath is exact here only because the working precision covers the whole exponent
span: products of float64 values (106 bits) lie in ``[2^-2148, 2^961)`` for case values capped
at 2^480, so every product is exact and ``mpf_sum`` (which keeps ``2·prec`` extra bits before
it drops a term) never drops or rounds one at ``PREC`` bits. A fixed 64- or 113-bit ``fsum``
would not be exact.
"""

from __future__ import annotations

import numpy as np
from mpmath import mp, mpf

from difftest.maths.exact import ExactTensor
from difftest.values.geometry import GRADIENTS, Geometry

#: Working precision in bits: above the span 961 + 2148 + log2(terms) of any exact sum here.
PREC = 4400


def _exact_of(x) -> tuple[int, int]:
    sign, man, exp, _ = x._mpf_
    return (-man if sign else man), exp


def _pack(values: list, shape: tuple[int, ...]) -> ExactTensor:
    pairs = [_exact_of(v) for v in values]
    k = min((e for m, e in pairs if m), default=0)
    mant = np.empty(len(pairs), dtype=object)
    mant[:] = [m << (e - k) if m else 0 for m, e in pairs]
    return ExactTensor(mant.reshape(shape), k)


class MpmathOracle:
    """Reference spec gradients, one mpmath ``fsum`` per entry (slow; for tests and spot checks)."""

    name = "mpmath"

    def spec_gradients(self, x: np.ndarray, w: np.ndarray, d: np.ndarray, g: Geometry,
                       gradients=GRADIENTS, sample=None) -> dict[str, ExactTensor]:
        """The exact ``gradients`` (default all three), entry by entry; with a ``sample``
        (:class:`difftest.sampling.Sample`) its entries, as 1-D tensors (every entry is summed
        first: the reference is for small cases)."""
        (sh, sw), (ph, pw), (dh, dw), Cg, Og = (g.sh, g.sw), (g.ph, g.pw), (g.dh, g.dw), g.Cg, g.Og
        with mp.workprec(PREC):
            X = np.vectorize(mpf, otypes=[object])(x)
            Wt = np.vectorize(mpf, otypes=[object])(w)
            D = np.vectorize(mpf, otypes=[object])(d)

            def x_pad(n, c, r, q):  # getAtOrZero on the padded image
                r, q = r - ph, q - pw
                return X[n, c, r, q] if 0 <= r < g.H and 0 <= q < g.W else mpf(0)

            def bias():
                return [
                    mp.fsum(D[n, o, i, j] for n in range(g.N) for i in range(g.out_h) for j in range(g.out_w))
                    for o in range(g.O)
                ]

            def kernel():
                return [
                    mp.fsum(
                        x_pad(n, (o // Og) * Cg + c, i * sh + di * dh, j * sw + dj * dw) * D[n, o, i, j]
                        for n in range(g.N)
                        for i in range(g.out_h)
                        for j in range(g.out_w)
                    )
                    for o in range(g.O)
                    for c in range(Cg)
                    for di in range(g.kH)
                    for dj in range(g.kW)
                ]

            def inp():
                return [
                    mp.fsum(
                        D[n, o, oi, oj] * Wt[o, c % Cg, di, dj]
                        for o in range((c // Cg) * Og, (c // Cg + 1) * Og)
                        for oi in range(g.out_h)
                        for oj in range(g.out_w)
                        for di in range(g.kH)
                        for dj in range(g.kW)
                        if oi * sh + di * dh == i + ph and oj * sw + dj * dw == j + pw
                    )
                    for n in range(g.N)
                    for c in range(g.C)
                    for i in range(g.H)
                    for j in range(g.W)
                ]

            sums = {"grad_input": inp, "grad_weight": kernel, "grad_bias": bias}
            values = {name: sums[name]() for name in gradients}
        out = {name: _pack(values[name], g.shape_of(name)) for name in gradients}
        if sample is None:
            return out
        return {name: t.map(lambda m, name=name: m.ravel()[sample[name].index]) for name, t in out.items()}

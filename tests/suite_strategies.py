"""The suite's own hypothesis strategies (named apart from difftest.strategies, whose functions of the same
names take other arguments): adversarial values of a format, and small cases."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from difftest.case import Case
from difftest.formats import Format
from difftest.geometry import Geometry


def format_values(fmt: Format, lo: int | None = None, hi: int = 40) -> st.SearchStrategy[float]:
    """Values of ``fmt``: ``±m·2^q`` with ``m < 2^p`` and ``emin <= q <= hi`` (lo defaults to emin).

    Covers subnormals, powers of two, all-ones mantissas and zero; magnitudes up to ~2^(hi+p).
    """
    lo = fmt.emin if lo is None else max(lo, fmt.emin)
    p = fmt.prec
    mant = st.one_of(
        st.integers(0, 2**p - 1),
        st.sampled_from([1, 2 ** (p - 1), 2**p - 1, 2 ** (p - 1) + 1, 3]),
    )
    return st.builds(lambda s, m, q: math.ldexp(s * m, q), st.sampled_from([1, -1]), mant, st.integers(lo, hi))


def spread_values(fmt: Format) -> st.SearchStrategy[float]:
    """A mix that stresses exactness: tiny, huge, cancelling, ordinary."""
    return st.one_of(
        format_values(fmt, lo=fmt.emin, hi=fmt.emin + 30),  # subnormal and tiny
        format_values(fmt, lo=60, hi=100),  # huge (beyond binary16's range, fine in the model)
        format_values(fmt, lo=-30, hi=5),
        st.sampled_from([0.0, 1.0, -1.0, 2.0**100, -(2.0**100)]),
    )


@st.composite
def geometries(draw, max_size: int = 5, max_channels: int = 2, max_batch: int = 2, general: bool = True) -> Geometry:
    """Small geometries; with ``general`` half of them draw groups (1-3), dilation (1-2) and a
    stride and padding per axis (shrinking to TorchLean's plain geometry)."""
    kH, kW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    wide = general and draw(st.booleans())
    if wide:
        sh, sw, ph, pw = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 2)), draw(st.integers(0, 2))
        dh, dw, groups = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    else:
        (sh, ph), dh, groups = (draw(st.integers(1, 3)), draw(st.integers(0, 2))), 1, 1
        sw, pw, dw = sh, ph, dh
    H = draw(st.integers(max(1, dh * (kH - 1) + 1 - 2 * ph), max(max_size, dh * (kH - 1) + 1)))
    W = draw(st.integers(max(1, dw * (kW - 1) + 1 - 2 * pw), max(max_size, dw * (kW - 1) + 1)))
    return Geometry(
        N=draw(st.integers(1, max_batch)), C=groups * draw(st.integers(1, max_channels)), H=H, W=W,
        O=groups * draw(st.integers(1, max_channels)), kH=kH, kW=kW, stride=(sh, sw), padding=(ph, pw),
        dilation=(dh, dw), groups=groups,
    )


@st.composite
def cases(draw, fmt: Format, values=None, eps: bool = False, **geo) -> Case:
    g = draw(geometries(**geo))
    values = values if values is not None else format_values(fmt, lo=-20, hi=5)

    def arr(shape):
        return draw(hnp.arrays(np.float64, shape, elements=values))

    kw = {}
    if eps:
        e = st.one_of(st.just(0.0), st.floats(0, 1e-3), st.sampled_from([2.0**-30, 1.0]))
        kw = {"eps_input": draw(e), "eps_weight": draw(e), "eps_grad_output": draw(e)}
    return Case(arr(g.input_shape), arr(g.weight_shape), arr(g.grad_output_shape),
                format=fmt, **g.conv_kwargs(), **kw)

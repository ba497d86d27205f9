"""The fast exact oracle equals the mpmath reference and exact rational sums, over the whole span."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mpmath import mp, mpf

from difftest import lean
from difftest.case import Case
from difftest.exact import ExactTensor, dyadic_to_float
from difftest.formats import BINARY16, BINARY32, BINARY64
from difftest.oracles import MpmathOracle, SlicedExactOracle, exact_matmul

from suite_strategies import cases, format_values, spread_values

WIDE64 = st.one_of(
    format_values(BINARY64, lo=-1074, hi=-1000),  # float64 subnormals and tiny normals
    format_values(BINARY64, lo=-60, hi=10),
    format_values(BINARY64, lo=300, hi=427),  # up to ~2^480
    st.sampled_from([0.0, 2.0**100, -(2.0**100)]),
)


def fraction_matmul(a, b):
    A = np.vectorize(Fraction, otypes=[object])(a)
    B = np.vectorize(Fraction, otypes=[object])(b)
    return A @ B


@given(data=st.data())
def test_exact_matmul_equals_rational_matmul_over_the_float64_span(data):
    m, k, n = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6)), data.draw(st.integers(1, 4))
    a = data.draw(hnp.arrays(np.float64, (m, k), elements=WIDE64))
    b = data.draw(hnp.arrays(np.float64, (k, n), elements=WIDE64))
    got = exact_matmul(a, b).to_fractions()
    assert (got == fraction_matmul(a, b)).all()


def test_exact_matmul_keeps_a_subnormal_next_to_cancelling_giants():
    a = np.array([[2.0**100, 2.0**-149, -(2.0**100)]])
    b = np.ones((3, 1))
    r = exact_matmul(a, b)
    assert r.to_fractions()[0, 0] == Fraction(2) ** -149
    assert r.nearest[0, 0] == 2.0**-149
    # binary32 products reach 2^256; a 113-bit mpmath fsum drops the subnormal next to them,
    # which is why the reference runs at PREC bits
    terms = [2.0**300, 2.0**-149, -(2.0**300)]
    with mp.workprec(113):
        assert mp.fsum([mpf(t) for t in terms]) == 0
    assert exact_matmul(np.array([terms]), b).nearest[0, 0] == 2.0**-149


def test_exact_matmul_of_products_below_float64_range():
    a = np.array([[2.0**-1074, 3 * 2.0**-1074]])
    b = np.array([[2.0**-1074], [-(2.0**-1074)]])
    assert exact_matmul(a, b).to_fractions()[0, 0] == -2 * Fraction(2) ** -2148


@pytest.mark.parametrize("fmt", [BINARY32, BINARY16], ids=lambda f: f.name)
@given(data=st.data())
def test_sliced_oracle_equals_mpmath_reference(fmt, data):
    case = data.draw(cases(fmt, values=spread_values(fmt), max_size=4))
    args = (case.input, case.weight, case.grad_output, case.geometry)
    fast, ref = SlicedExactOracle().spec_gradients(*args), MpmathOracle().spec_gradients(*args)
    for g in fast:
        assert fast[g].same_values(ref[g]), g


@given(case=cases(BINARY32, values=spread_values(BINARY32), max_size=4))
def test_sliced_oracle_equals_the_lean_spec_in_rationals(case):
    args = (case.input, case.weight, case.grad_output, case.geometry)
    fast = SlicedExactOracle().spec_gradients(*args)
    spec = lean.spec_gradients(*args)
    for g in fast:
        assert (fast[g].to_fractions() == spec[g]).all(), g


@given(st.integers(-(2**200), 2**200), st.integers(-1300, 300))
def test_nearest_and_residual_are_correctly_rounded(m, e):
    t = ExactTensor(np.array([m], dtype=object), e)
    x = Fraction(m) * Fraction(2) ** e
    hi, lo = t.nearest[0], t.residual[0]
    assert Fraction(hi) == BINARY64.round(x)
    assert Fraction(lo) == BINARY64.round(x - Fraction(hi))
    assert dyadic_to_float(m, e) == hi


def test_hand_computed_gradients_stride2_padding1_non_square():
    # input 1x1x3x4, weight 1x1x2x2, stride 2, padding 1 -> out 2x3
    x = np.arange(1.0, 13.0).reshape(1, 1, 3, 4)
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    d = np.array([[[[1.0, -1.0, 2.0], [0.5, 3.0, -2.0]]]])
    case = Case(x, w, d, stride=2, padding=1)
    assert (case.geometry.out_h, case.geometry.out_w) == (2, 3)
    r = SlicedExactOracle().spec_gradients(x, w, d, case.geometry)
    # bias: sum of δ
    assert r["grad_bias"].nearest.tolist() == [3.5]
    # grad_weight[di, dj] = Σ_ij x̃[2i+di, 2j+dj] δ[i, j]; x̃ is x padded by one zero ring:
    # x̃ rows: 0 | 0 1 2 3 4 0 | 0 5 6 7 8 0 | 0 9 10 11 12 0 | 0
    #   (di,dj)=(0,0): reads x̃[0,0],x̃[0,2],x̃[0,4],x̃[2,0],x̃[2,2],x̃[2,4] = 0,0,0,0,6,8
    #   -> 3*6 + (-2)*8 = 2
    #   (1,1): x̃[1,1]=1, x̃[1,3]=3, x̃[1,5]=0, x̃[3,1]=9, x̃[3,3]=11, x̃[3,5]=0
    #   -> 1*1 - 1*3 + 0 + 0.5*9 + 3*11 + 0 = 35.5
    gw = r["grad_weight"].nearest[0, 0]
    assert gw[0, 0] == 2.0 and gw[1, 1] == 35.5
    # grad_input[h, w] = Σ δ[oi, oj] w[di, dj] with 2·oi + di = h + 1, 2·oj + dj = w + 1
    #   (0,0): oi=0,di=1; oj=0,dj=1 -> δ[0,0]·w[1,1] = 4
    #   (1,1): h+1=2 -> (oi,di)=(1,0); w+1=2 -> (oj,dj)=(1,0) -> δ[1,1]·w[0,0] = 3
    #   (2,3): h+1=3 -> (1,1); w+1=4 -> (2,0) -> δ[1,2]·w[1,0] = -6
    gi = r["grad_input"].nearest[0, 0]
    assert (gi[0, 0], gi[1, 1], gi[2, 3]) == (4.0, 3.0, -6.0)


@st.composite
def level_tensors(draw):
    """Level representations with carries, mixed signs, cancellation and midpoints."""
    n = draw(st.integers(1, 6))
    width = draw(st.integers(13, 26))
    exp = draw(st.integers(-1074, 200))
    count = draw(st.integers(1, 8))
    big = st.integers(-(2**58), 2**58)
    levels = {}
    for level in range(count):
        vals = draw(st.lists(big | st.sampled_from([0, 1, -1, 2**width, -(2**width), 2**52 + 1]), min_size=n, max_size=n))
        levels[level] = np.array(vals, dtype=np.int64)
    if count >= 2 and draw(st.booleans()):  # exact cancellation between the two top levels
        levels[count - 1] = np.where(levels[count - 1] % 2 == 0, 0, levels[count - 1])
        levels[count - 2] = -levels[count - 1] * (2**width)
    return ExactTensor.from_levels(levels, exp, width)


@given(level_tensors())
def test_float_views_of_levels_are_nearest_and_bracket_the_exact_value(t):
    exact = t.to_fractions()
    for x, hi, lo, tail in zip(exact.ravel(), t.nearest.ravel(), t.residual.ravel(), t.tail.ravel()):
        assert Fraction(hi) == BINARY64.round(x)
        assert abs(x - Fraction(hi) - Fraction(lo)) <= Fraction(tail)
        assert Fraction(tail) <= abs(x) * Fraction(2) ** -80 + Fraction(2) ** -1060


def test_levels_next_to_a_rounding_midpoint_are_decided_exactly():
    # 1 + 2^-53 (a tie: rounds to 1) and 1 + 2^-53 + 2^-200 (rounds up): level sums that differ far below the tie
    width = 20
    base = -220
    def levels_of(value):  # value = m * 2^base, split into base-2^width digits
        m, digits = int(value * Fraction(2) ** -base), {}
        for k in range(16):
            digits[k] = np.array([m % (1 << width)], dtype=np.int64)
            m >>= width
        return digits
    tie = Fraction(1) + Fraction(2) ** -53
    above = tie + Fraction(2) ** -200
    assert ExactTensor.from_levels(levels_of(tie), base, width).nearest[0] == 1.0
    assert ExactTensor.from_levels(levels_of(above), base, width).nearest[0] == 1.0 + 2.0**-52


@given(case=cases(BINARY32, max_size=6))
def test_the_tap_by_tap_product_sums_exactly_the_dense_gemms_terms(case):
    """``gradient_product`` (the input gradient tap by tap, groups batched) sums the same terms as
    the dense GEMM layouts of ``gemm_operands``: on small integers both are exact and equal."""
    from difftest.layouts import gemm_operands, gemm_result_to_gradient, gradient_product

    g = case.geometry
    ints = [np.round(t * 7) % 5 - 2 for t in (case.input, case.weight, case.grad_output)]
    x, w, d = ints
    dense = gemm_operands(x, w, d, g)
    for name, other in (("grad_input", w), ("grad_weight", x), ("grad_bias", None)):
        a, b = dense[name]
        assert np.array_equal(gradient_product(name, d, other, g), gemm_result_to_gradient(name, a @ b, g)), name

@given(a=hnp.arrays(np.float64, st.integers(1, 12), elements=WIDE64 | st.sampled_from([2.0**100, -(2.0**1000), 2.0**-1074])),
       width=st.integers(13, 26))
def test_split_digits_rebuilds_every_entry_exactly(a, width):
    """The compiled digit cut (kernels.split_digits): integer digits below 2^width that sum back
    to each entry exactly, over the float64 span, also where every entry is a multiple of a high
    power of two (trailing zeros below the frame's q)."""
    from oracles.slices import digit_frame, split_digits

    for arr in (a, a * 2.0**-40 if np.isfinite(a * 2.0**-40).all() else a):
        digits, q = split_digits(arr, width)
        if not arr.any():
            assert digits == [] and digit_frame(arr, width) is None
            continue
        assert len(digits) == digit_frame(arr, width)[1]
        for d in digits:
            assert (np.floor(d) == d).all() and (np.abs(d) < 2**width).all()
        for i, v in enumerate(arr):
            rebuilt = sum(Fraction(int(d[i])) * Fraction(2) ** (q + s * width) for s, d in enumerate(digits))
            assert rebuilt == Fraction(v)

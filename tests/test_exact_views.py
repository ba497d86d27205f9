"""The float64 views of exact tensors are right over the whole float64 exponent range.

``nearest`` must be the float64 nearest to the exact value (ties to even, as ``float`` of a
Fraction rounds) and ``|exact - nearest - residual| <= tail``. The sums below sit where the
double-double decision of :class:`difftest.exact.ExactTensor` is delicate: next to a power of
two (the grid below it is twice finer), next to rounding midpoints, at exponents <= -511 where
float64 products of two such values underflow, in the subnormal range, with products below
the float64 range, and after heavy cancellation.

A summand is a dyadic ``m · 2^q`` (``|m| < 2^53``, ``-2148 <= q <= 971``) entered as one float64
product ``a · b`` with ``b`` a power of two, so that sums reach below the float64 range too.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from difftest import lean
from difftest.case import Case
from difftest.check import exact_gradients
from difftest.formats import BINARY64
from difftest.oracles import exact_matmul

TWO = Fraction(2)


def assert_views(t, exact):
    """``nearest`` is ``float(exact)`` and ``residual``, ``tail`` bracket what remains."""
    for x, hi, lo, tail in zip(exact.ravel(), t.nearest.ravel(), t.residual.ravel(), t.tail.ravel()):
        assert hi == float(x), (x, hi, float(x))
        assert abs(x - Fraction(hi) - Fraction(lo)) <= Fraction(tail), (x, hi, lo, tail)


def value_of(summands) -> Fraction:
    return sum((m * TWO**q for m, q in summands), Fraction(0))


def product_of(m: int, q: int, s: int) -> tuple[float, float]:
    """Float64 ``(a, 2^s')`` with ``a · 2^s' = m · 2^q`` exactly, ``s'`` the nearest allowed to ``s``."""
    s = min(max(s, -1074, q + m.bit_length() - 1000), 1000, q + 1074)
    return math.ldexp(m, q - s), math.ldexp(1.0, s)


def sums_of_products(rows, scales):
    """``exact_matmul`` of a block matrix whose entry ``i`` is the sum of the summands ``rows[i]``."""
    width = sum(len(r) for r in rows)
    a, b = np.zeros((len(rows), width)), np.zeros((width, 1))
    col = 0
    for i, row in enumerate(rows):
        for (m, q), s in zip(row, scales[col : col + len(row)]):
            a[i, col], b[col, 0] = product_of(m, q, s)
            col += 1
    return exact_matmul(a, b), np.array([[value_of(r)] for r in rows], dtype=object)


# --- the reported defect --------------------------------------------------------------------


def test_bias_of_a_tie_minus_a_tiny_below_a_power_of_two_at_exponent_below_minus_511():
    d = np.array([2.0**-520, -(2.0**-574), -(2.0**-634)])  # 2^-520 - 2^-574 is a tie, rounding to 2^-520
    case = Case(np.ones((1, 1, 1, 3)), np.ones((1, 1, 1, 1)), d.reshape(1, 1, 1, 3), format=BINARY64)
    exact = sum((Fraction(v) for v in d), Fraction(0))
    got = exact_gradients(case)["grad_bias"]
    assert got.nearest[0] == float(exact) == 2.9134143481250804e-157
    assert_views(got, np.array([exact], dtype=object))


# --- every exponent, deterministically -----------------------------------------------------

# x = 2^k + j·2^(k-55) + t·2^(k-115): j counts quarters of the spacing above 2^k (the spacing
# below is half of it), t a tiny push that the double-double's second word loses
PATTERNS = [(-2, -1), (-2, 0), (-2, 1), (-4, 1), (-4, -1), (-3, 0), (4, -1), (4, 1), (2, 1), (0, -1)]


@pytest.mark.parametrize("sign", [1, -1])
def test_sums_next_to_every_power_of_two_round_to_nearest(sign):
    ks = range(-1074 + 115, 1024)  # every term a float64 (the hypothesis tests go lower)
    rows = [[sign * 2.0**k, sign * j * 2.0 ** (k - 55), sign * t * 2.0 ** (k - 115)] for k in ks for j, t in PATTERNS]
    a = np.array(rows)
    exact = np.array([[sum((Fraction(v) for v in r), Fraction(0))] for r in rows], dtype=object)
    assert_views(exact_matmul(a, np.ones((3, 1))), exact)


# --- hypothesis: near powers of two, near midpoints, below the range, cancelling -----------

SIGNS = st.sampled_from([1, -1])
MANTISSAS = st.sampled_from([1, 3, 2**52 - 1, 2**52 + 1]) | st.integers(1, 2**53 - 1)
EXPONENTS = st.one_of(
    st.integers(-1074, 1023),
    st.integers(-620, -480),  # products of two such values underflow in float64
    st.integers(-1074, -1000),  # subnormal and tiny normal results
)


def clamp(q: int) -> int:
    return max(q, -2148)


@st.composite
def near_a_power_of_two(draw, exponents=EXPONENTS):
    """Rows ``±(2^k + j·2^(k-55) + p·push)`` for every ``j`` in [-6, 6] (quarters of the spacing
    above ``2^k``: the spacing below is half of it) and every sign ``p``, ``push ~ 2^(k-55-d)``."""
    k, s, d, m = draw(exponents), draw(SIGNS), draw(st.integers(1, 130)), draw(MANTISSAS)
    q = clamp(k - 55 - d - m.bit_length())
    return [[(s, k), (s * j, clamp(k - 55)), (s * p * m, q)] for j in range(-6, 7) for p in (1, -1)]


@st.composite
def near_a_midpoint(draw, exponents=EXPONENTS):
    """Rows ``±(M·2^q + τ·2^(q-1) + p·push)``: the midpoints between ``M·2^q`` and its
    neighbours, pushed by ``push ~ 2^(q-1-d)`` either way or not; ``M < 2^53`` (subnormal
    results where it is small and ``q = -1074``)."""
    q = min(draw(exponents), 970)
    big = st.integers(2**52, 2**53 - 1) | st.sampled_from([2**52, 2**52 + 1, 2**53 - 1])
    M = draw(st.one_of(big, st.integers(1, 2**52), st.sampled_from([1, 2, 3])))
    s, d, m = draw(SIGNS), draw(st.integers(1, 130)), draw(MANTISSAS)
    qp = clamp(q - 1 - d - m.bit_length())
    return [[(s * M, q), (s * t, q - 1), (s * p * m, qp)] for t in (1, -1) for p in (1, 0, -1)]


@st.composite
def cancelling(draw, exponents=EXPONENTS):
    """The rows of a pattern between giants ``±M·2^e`` that cancel exactly (or down to ``2^e``)."""
    rows = draw(st.one_of(near_a_power_of_two(exponents), near_a_midpoint(exponents)))
    M, e = draw(st.integers(1, 2**53 - 1)), min(draw(exponents), 960)
    rest = draw(st.sampled_from([0, 1]))
    return [[(M, e)] + row + [(-(M - rest), e)] for row in rows]


@st.composite
def below_the_range(draw):
    """Rows of products as small as ``2^-1074 · 2^-1074``, with a float64-range summand or not."""
    tiny = st.tuples(SIGNS.flatmap(lambda s: MANTISSAS.map(lambda m: s * m)), st.integers(-2148, -1900))
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        row = draw(st.lists(tiny, min_size=1, max_size=4))
        if draw(st.booleans()):
            row.append((draw(SIGNS) * draw(MANTISSAS), draw(st.integers(-1074, -1000))))
        rows.append(row)
    return rows


CASE_EXPONENTS = st.integers(-750, 360)  # case values within 2^±480, quotients by x exact
NEAR = st.one_of(near_a_power_of_two(), near_a_midpoint(), cancelling())


def float64_terms(rows):
    return [[(m, max(q, -1074)) for m, q in row] for row in rows]


@given(rows=near_a_power_of_two(st.integers(-1074, 1023)).map(float64_terms))
def test_float64_sums_near_a_power_of_two_at_any_exponent(rows):
    """Float64 summands (``b = 1``): the levels are summed in float64 first (the double-double
    path), and only undecided entries are recomputed exactly."""
    t, exact = sums_of_products(rows, [0] * sum(len(r) for r in rows))
    assert t.exp >= -1074
    assert_views(t, exact)


@given(groups=st.lists(NEAR.map(float64_terms), min_size=1, max_size=3))
def test_float64_sums_near_midpoints_and_after_cancellation(groups):
    rows = sum(groups, [])
    t, exact = sums_of_products(rows, [0] * sum(len(r) for r in rows))
    assert_views(t, exact)


@given(groups=st.lists(NEAR | below_the_range(), min_size=1, max_size=3), data=st.data())
def test_sums_of_products_down_to_below_the_float64_range(groups, data):
    rows = sum(groups, [])
    count = sum(len(r) for r in rows)
    scales = data.draw(st.lists(st.integers(-60, 60) | st.just(0), min_size=count, max_size=count))
    t, exact = sums_of_products(rows, scales)
    assert (t.to_fractions() == exact).all()
    assert_views(t, exact)


@given(rows=st.one_of(near_a_power_of_two(CASE_EXPONENTS), near_a_midpoint(CASE_EXPONENTS), cancelling(CASE_EXPONENTS)),
       data=st.data())
def test_views_of_oracle_gradients_of_binary64_cases(rows, data):
    """Through the oracle on a case: output channel ``o`` holds row ``o`` as ``x_k · δ_ok``, so
    ``grad_weight[o] = Σ_k x_k δ_ok`` is the row's sum (``grad_bias[o] = Σ_k δ_ok`` another)."""
    xs = [2.0 ** data.draw(st.integers(-60, 60)) for _ in rows[0]]
    d = np.array([[math.ldexp(m, q) / x for (m, q), x in zip(row, xs)] for row in rows])
    case = Case(np.array(xs).reshape(1, 1, 1, -1), np.ones((len(rows), 1, 1, 1)), d.reshape(1, len(rows), 1, -1),
                format=BINARY64)
    got = exact_gradients(case)
    spec = lean.spec_gradients(case.input, case.weight, case.grad_output, case.geometry)
    assert_views(got["grad_weight"], np.array([[value_of(row)] for row in rows], dtype=object).reshape(-1, 1, 1, 1))
    for g in got:
        assert_views(got[g], spec[g])

"""The order-free bound holds for every summation tree, with and without FMA."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from difftest.formats import BFLOAT16, BINARY16, BINARY32
from difftest.orderfree import abs_gemm_up, gamma_up, product_bound

from strategies import format_values

FORMATS = [BINARY16, BFLOAT16, BINARY32]


def any_order_dot(fmt, xs, ys, draw):
    """Evaluate Σ x_i y_i by a random tree: random leaf order, random pairings, random FMAs."""
    items = [("prod", Fraction(x), Fraction(y)) for x, y in zip(xs, ys)]
    draw(st.randoms()).shuffle(items)
    vals = []
    for kind, x, y in items:
        vals.append(("pending", x, y))
    rng = draw(st.randoms())
    def value(v):
        return fmt.round(v[1] * v[2]) if v[0] == "pending" else v[1]
    while len(vals) > 1:
        i = rng.randrange(len(vals) - 1)
        a, b = vals[i], vals[i + 1]
        if a[0] == "pending" and rng.random() < 0.5:  # fused: round(x·y + c), one rounding
            r = fmt.round(a[1] * a[2] + value(b))
        else:
            r = fmt.round(value(a) + value(b))
        vals[i : i + 2] = [("done", r)]
    return value(vals[0])


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@given(data=st.data())
def test_any_summation_tree_is_within_the_order_free_bound(fmt, data):
    v = st.one_of(format_values(fmt, lo=fmt.emin, hi=fmt.emin + 12), format_values(fmt, lo=-8, hi=8), st.just(0.0))
    n = data.draw(st.integers(1, 24))
    xs = data.draw(st.lists(v, min_size=n, max_size=n))
    ys = data.draw(st.lists(v, min_size=n, max_size=n))
    got = any_order_dot(fmt, xs, ys, data.draw)
    exact = sum((Fraction(x) * Fraction(y) for x, y in zip(xs, ys)), Fraction(0))
    a, b = np.array([xs]), np.array([ys]).T
    ones = np.ones_like
    bound = product_bound(fmt, a, b, ones(a), ones(b), 0.0, 0.0).bound[0, 0]
    assert abs(got - exact) <= Fraction(bound)


def test_gamma_is_infinite_where_n_u_reaches_one():
    g = gamma_up(BINARY16, np.array([0.0, 1.0, 2047.0, 2048.0, 5000.0]))
    assert g[0] == 0 and np.isfinite(g[2]) and np.isinf(g[3]) and np.isinf(g[4])
    assert Fraction(g[1]) >= Fraction(1, 2**11 - 1)  # γ_1 = u/(1-u), u = 2^-11


@given(st.lists(st.tuples(st.floats(-2.0**400, 2.0**400), st.floats(-2.0**70, 2.0**70)), min_size=1, max_size=40))
def test_abs_gemm_up_is_an_upper_bound_of_the_exact_sum(ps):
    a = np.array([[x for x, _ in ps]])
    b = np.array([[y for _, y in ps]]).T
    exact = sum(abs(Fraction(x) * Fraction(y)) for x, y in ps)
    assert Fraction(abs_gemm_up(a, b)[0, 0]) >= exact

"""The order-free bound holds for every summation tree, with and without FMA."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from difftest.case import Case
from difftest.formats import BFLOAT16, BINARY16, BINARY32, BINARY64
from difftest.orderfree import abs_gemm_up, growth_up, order_free_bounds, product_bound

from suite_strategies import format_values

FORMATS = [BINARY16, BFLOAT16, BINARY32]
FOLDS = ["random", "left", "right"]


def any_order_dot(fmt, xs, ys, rng, fold):
    """Evaluate Σ x_i y_i by a random tree: random leaf order, random pairings (or a left or a
    right fold), random FMAs."""
    vals = [("pending", Fraction(x), Fraction(y)) for x, y in zip(xs, ys)]
    rng.shuffle(vals)
    def value(v):
        return fmt.round(v[1] * v[2]) if v[0] == "pending" else v[1]
    while len(vals) > 1:
        last = len(vals) - 2
        i = rng.randint(0, last) if fold == "random" else 0 if fold == "left" else last
        a, b = vals[i], vals[i + 1]
        if a[0] == "pending" and rng.random() < 0.5:  # fused: round(x·y + c), one rounding
            r = fmt.round(a[1] * a[2] + value(b))
        else:
            r = fmt.round(value(a) + value(b))
        vals[i : i + 2] = [("done", r)]
    return value(vals[0])


def assert_within_the_order_free_bound(fmt, xs, ys, rng, fold):
    got = any_order_dot(fmt, xs, ys, rng, fold)
    exact = sum((Fraction(x) * Fraction(y) for x, y in zip(xs, ys)), Fraction(0))
    a, b = np.array([xs]), np.array([ys]).T
    ones = np.ones_like
    bound = product_bound(fmt, a, b, ones(a), ones(b), 0.0, 0.0).bound[0, 0]
    assert np.isfinite(bound)
    assert abs(got - exact) <= Fraction(bound)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@given(data=st.data())
def test_any_summation_tree_is_within_the_order_free_bound(fmt, data):
    v = st.one_of(format_values(fmt, lo=fmt.emin, hi=fmt.emin + 12), format_values(fmt, lo=-8, hi=8), st.just(0.0))
    n = data.draw(st.integers(1, 24))
    xs = data.draw(st.lists(v, min_size=n, max_size=n))
    ys = data.draw(st.lists(v, min_size=n, max_size=n))
    assert_within_the_order_free_bound(fmt, xs, ys, data.draw(st.randoms()), data.draw(st.sampled_from(FOLDS)))


@settings(max_examples=10)
@given(data=st.data())
def test_binary16_sums_of_2048_terms_and_more_are_within_a_finite_order_free_bound(data):
    """n·u >= 1: same-sign terms and ties make rounding errors pile up in one direction (a left
    fold of 4,096 ones stalls at 2,048)."""
    fmt = BINARY16
    n = data.draw(st.integers(2048, 5000))
    same_sign = st.one_of(st.just(1.0), format_values(fmt, lo=fmt.emin, hi=0).map(abs))
    pool = data.draw(st.lists(same_sign | format_values(fmt, lo=-8, hi=0), min_size=1, max_size=4))
    ys = data.draw(st.sampled_from([1.0, 0.75, 1.0 + 2.0**-10]))
    rng = data.draw(st.randoms(use_true_random=True))  # seeded by Hypothesis; thousands of calls
    xs = [rng.choice(pool) for _ in range(n)]
    assert_within_the_order_free_bound(fmt, xs, [ys] * n, rng, data.draw(st.sampled_from(FOLDS)))


def exact_growth(fmt, k):
    return (1 + fmt.unit_roundoff) ** k - 1


@pytest.mark.parametrize("fmt", FORMATS + [BINARY64], ids=lambda f: f.name)
def test_growth_is_a_close_sure_upper_bound_also_where_n_u_reaches_one(fmt):
    ks = [0, 1, 2, 3, 16, 100, 2047, 2048, 2049, 4096, 5000, 9999]
    g = growth_up(fmt, np.array(ks, dtype=np.float64))
    assert g[0] == 0 and np.isfinite(g).all()
    for k, x in zip(ks, g):
        exact = exact_growth(fmt, k)
        assert Fraction(x) >= exact, k
        if k * fmt.unit_roundoff >= Fraction(1, 2**20):
            assert Fraction(x) <= exact * (1 + Fraction(1, 10**9)), k
        if k * fmt.unit_roundoff < 1:  # never looser than γ_k = k·u / (1 - k·u), where that is finite
            assert Fraction(x) <= k * fmt.unit_roundoff / (1 - k * fmt.unit_roundoff), k


@pytest.mark.parametrize("fmt", FORMATS + [BINARY64], ids=lambda f: f.name)
@given(ks=st.lists(st.integers(0, 400), min_size=1, max_size=12))
def test_growth_is_above_its_exact_value(fmt, ks):
    g = growth_up(fmt, np.array(ks, dtype=np.float64).reshape(-1, 1))
    assert g.shape == (len(ks), 1)
    assert all(Fraction(x) >= exact_growth(fmt, k) for k, x in zip(ks, g.ravel()))


@pytest.mark.parametrize("fmt", FORMATS + [BINARY64], ids=lambda f: f.name)
def test_growth_from_its_table_equals_growth_from_the_distinct_counts(fmt):
    """Many counts of a small range are looked up in a table of 0..max; few counts of a wide range
    are computed one distinct value each: the same numbers."""
    ks = np.random.default_rng(0).integers(0, 5000, size=2000).astype(np.float64)  # the table
    table = growth_up(fmt, ks)
    one_by_one = np.array([growth_up(fmt, np.array([k, 2.0**40]))[0] for k in ks[:50]])  # distinct values
    assert np.array_equal(table[:50], one_by_one)


def test_binary16_bias_bound_of_4096_ones_is_finite_and_excludes_minus_60000():
    n = 4096
    case = Case(np.ones((1, 1, 64, 64)), np.ones((1, 1, 1, 1)), np.ones((1, 1, 64, 64)), format=BINARY16)
    bias = order_free_bounds(case.runtime(), case.geometry)["grad_bias"].bound[0]
    exact = exact_growth(BINARY16, n - 1) * n  # ((1 + u)^(n-1) - 1)·Σ|δ|
    assert exact <= Fraction(bias) <= exact * (1 + Fraction(1, 10**9))
    assert bias < abs(-60000 - n)  # a backend returning -60000 is beyond it


@given(st.lists(st.tuples(st.floats(-2.0**400, 2.0**400), st.floats(-2.0**70, 2.0**70)), min_size=1, max_size=40))
def test_abs_gemm_up_is_an_upper_bound_of_the_exact_sum(ps):
    a = np.array([[x for x, _ in ps]])
    b = np.array([[y for _, y in ps]]).T
    exact = sum(abs(Fraction(x) * Fraction(y)) for x, y in ps)
    assert Fraction(abs_gemm_up(a, b)[0, 0]) >= exact


def test_binary64_a_few_quanta_beyond_the_bound_at_the_subnormal_floor_are_precision():
    """x = δ = 2^-1074 over 64 terms (1 × 1 kernel): the exact weight gradient is 64·2^-2148, the
    true order-free bound 32.0…·2^-1074 (64 products each rounded by at most η = 2^-1075). A backend
    returning 48·2^-1074 is beyond it in every order; with η rounded up to 2^-1074 the bound was
    66·2^-1074 and it passed."""
    from difftest import Case, check_case
    from difftest.backends import FunctionBackend

    tiny = 2.0**-1074
    x, w, d = np.full((1, 1, 8, 8), tiny), np.ones((1, 1, 1, 1)), np.full((1, 1, 8, 8), tiny)
    case = Case(x, w, d, stride=1, padding=0, format="binary64")

    def off_by_48(x, w, d, stride, padding):
        return d * w[0, 0, 0, 0], np.full((1, 1, 1, 1), 48 * tiny), d.sum(axis=(0, 2, 3))

    (r, nf) = check_case(case, [FunctionBackend(off_by_48, "binary64", name="off-by-48"), "nf-binary64"])
    weight = r.gradients["grad_weight"]
    assert weight.verdict == "precision", weight
    assert 32 * tiny < weight.worst["bound_order_free"] <= 34 * tiny
    assert r.gradients["grad_input"].verdict == r.gradients["grad_bias"].verdict == "pass"
    assert nf.verdict == "pass"  # the NF model itself: every product rounds to 0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**40), st.integers(-1074, 200))
def test_times_eta_is_a_close_upper_bound_of_x_times_eta(m, e):
    from fractions import Fraction

    from difftest.orderfree import times_eta_up

    x = np.float64(np.ldexp(float(m), e))
    if not np.isfinite(x):
        return
    for fmt in (BINARY64, BINARY32, BINARY16):
        got = Fraction(float(times_eta_up(fmt, x)))
        exact = Fraction(float(x)) * Fraction(2) ** (fmt.emin - 1)
        assert exact <= got <= exact * (1 + Fraction(2) ** -51) + Fraction(2) ** -1073


@pytest.mark.parametrize("fmt", [BINARY64, BINARY32, BINARY16, BFLOAT16], ids=lambda f: f.name)
@given(data=st.data())
def test_the_compiled_finish_equals_the_ufunc_finish_bit_for_bit(fmt, data):
    """product_bound's tail runs as one compiled pass (kernels.order_free_bound): for any sums
    (zero, subnormal, near the float64 top) and counts (0, 1, beyond binary16's 2048) it returns
    the bits the operation-at-a-time ufuncs return."""
    from difftest.orderfree import _finish_compiled, _finish_ufuncs

    size = data.draw(st.integers(1, 40))
    c = np.array(data.draw(st.lists(st.one_of(st.floats(0, 2.0**1000), st.sampled_from([0.0, 2.0**-1074, 2.0**-1022])),
                                    min_size=size, max_size=size)))
    n = np.array(data.draw(st.lists(st.sampled_from([0, 1, 2, 3, 2047, 2048, 2049, 4000]) | st.integers(0, 4000),
                                    min_size=size, max_size=size)), dtype=np.float64)
    k = data.draw(st.integers(int(n.max()), 2**50))
    got, want = _finish_compiled(fmt, c, n, k), _finish_ufuncs(fmt, c, n, k)
    for g, w in zip(got, want):
        assert np.array_equal(g.view(np.int64), w.view(np.int64)), (g, w)



@given(st.lists(st.tuples(*[st.floats(0, 2.0**1000) | st.sampled_from([0.0, 2.0**-1074, np.inf])] * 4),
                min_size=1, max_size=30),
       st.floats(0, 1.0) | st.just(0.0), st.floats(0, 1.0) | st.just(2.0**-1074))
def test_the_eps_terms_in_one_pass_equal_them_an_operation_at_a_time(rows, e_a, e_b):
    """product_bound adds ``sa·e_b + sb·e_a + m·2·e_a·e_b`` to the bound in one compiled pass
    (kernels.plus_eps_terms, operands broadcast): the bits of the ufunc chain it replaced."""
    from difftest.fparith import add_up, mul_up
    from difftest.orderfree import _plus_eps_terms

    bound, sa, sb, m = (np.array(c) for c in zip(*rows))
    c = np.float64(mul_up(np.float64(2 * e_a), np.float64(e_b)))
    with np.errstate(all="ignore"):
        want = add_up(bound, add_up(add_up(mul_up(sa, np.float64(e_b)), mul_up(sb, np.float64(e_a))), mul_up(m, c)))
        got = _plus_eps_terms(bound, sa, sb[:1], m, e_a, e_b)  # sb broadcast from one entry
        want_b = add_up(bound, add_up(add_up(mul_up(sa, np.float64(e_b)), mul_up(sb[:1], np.float64(e_a))), mul_up(m, c)))
    assert np.array_equal(got.view(np.int64), want_b.view(np.int64))
    assert np.array_equal(_plus_eps_terms(bound, sa, sb, m, e_a, e_b).view(np.int64), want.view(np.int64))


@given(data=st.data())
def test_counts_without_zeros_are_the_structural_counts(data):
    """Where neither operand holds a zero, count_products answers from the geometry
    (structural_count): the GEMM of the non-zero masks gives the same counts — padded reads and
    non-matching steps are the only zero products — for grouped, strided, dilated layers too."""
    from difftest.layouts import gemm_shape, gradient_operand, gradient_product
    from difftest.orderfree import count_products

    from suite_strategies import geometries

    g = data.draw(geometries(max_size=6, max_channels=3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x, w, d = (rng.uniform(0.5, 1.5, s) * rng.choice([-1, 1], s) for s in (g.input_shape, g.weight_shape, g.grad_output_shape))
    for name, raw in (("grad_weight", x), ("grad_input", w)):
        k = gemm_shape(name, g)[2]
        want = gradient_product(name, np.ones(d.shape), gradient_operand(name, np.ones(raw.shape), g), g)
        assert np.array_equal(count_products(name, d, raw, g, k), want)
        with_zero = raw.copy()
        with_zero.flat[0] = 0.0  # one zero: the GEMM of masks, which counts it out
        assert np.array_equal(count_products(name, d, with_zero, g, k),
                              gradient_product(name, np.ones(d.shape), gradient_operand(name, (with_zero != 0) * 1.0, g), g))

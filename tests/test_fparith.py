"""Vectorised exact arithmetic equals exact rational arithmetic on adversarial values."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from difftest.formats import BINARY64, PRESETS
from difftest.fparith import (
    add_up, half_ulp_of_product, half_ulp_of_sum, mag_of_product, mag_of_sum, mul_up, nf_add, nf_mul, sub_down, two_sum,
)

from suite_strategies import format_values

FORMATS = list(PRESETS.values())


def pairs(fmt):
    v = st.one_of(
        format_values(fmt, lo=fmt.emin, hi=fmt.emin + 40),
        format_values(fmt, lo=-40, hi=40),
        format_values(fmt, lo=100, hi=200),
        st.sampled_from([0.0, 1.0, -1.0, 0.5]),
    )
    return st.lists(st.tuples(v, v), min_size=1, max_size=30)


def arrays(ps):
    return np.array([a for a, _ in ps]), np.array([b for _, b in ps])


def near_ties(fmt):
    """Pairs whose exact sum lies on, or next to, a rounding midpoint of fmt."""
    def make(m, q, k, sgn):
        a = np.ldexp(float(2 ** (fmt.prec - 1) + m), q)  # a value of fmt with quantum 2^q
        half = np.ldexp(1.0, q - 1)
        tiny = np.ldexp(1.0, max(q - 1 - k, fmt.emin))
        return a, half + sgn * tiny if sgn else half
    return st.lists(
        st.builds(make, st.integers(0, 2 ** (fmt.prec - 1) - 1), st.integers(fmt.emin, 50),
                  st.integers(1, 60), st.sampled_from([-1, 0, 1])),
        min_size=1, max_size=30,
    )


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@given(data=st.data())
def test_nf_add_rounds_the_exact_sum_once(fmt, data):
    ps = data.draw(pairs(fmt) | near_ties(fmt))
    a, b = arrays(ps)
    got = nf_add(fmt, a, b)
    for x, y, r in zip(a, b, got):
        assert Fraction(r) == fmt.round(Fraction(x) + Fraction(y)), (x, y)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@given(data=st.data())
def test_nf_mul_rounds_the_exact_product_once(fmt, data):
    a, b = arrays(data.draw(pairs(fmt)))
    got = nf_mul(fmt, a, b)
    for x, y, r in zip(a, b, got):
        assert Fraction(r) == fmt.round(Fraction(x) * Fraction(y)), (x, y)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@given(data=st.data())
def test_half_ulp_of_exact_sum_and_product(fmt, data):
    a, b = arrays(data.draw(pairs(fmt) | near_ties(fmt)))
    hs, hp = half_ulp_of_sum(fmt, a, b), half_ulp_of_product(fmt, a, b)
    for x, y, s, p in zip(a, b, hs, hp):
        want_s = fmt.ulp(Fraction(x) + Fraction(y)) / 2
        want_p = fmt.ulp(Fraction(x) * Fraction(y)) / 2
        # exact, except 2^-1075 (binary64's ulp(0)/2), which float64 rounds up to 2^-1074
        assert Fraction(s) == max(want_s, Fraction(2) ** -1074)
        assert Fraction(p) == max(want_p, Fraction(2) ** -1074)


@given(st.lists(st.tuples(format_values(BINARY64, lo=-1074, hi=900), format_values(BINARY64, lo=-1074, hi=900)),
                min_size=1, max_size=30))
def test_mag_of_sum_and_product_are_exact_over_binary64(ps):
    a, b = arrays(ps)
    s, e = two_sum(a, b)
    for x, y, ms, mp in zip(a, b, mag_of_sum(s, e), mag_of_product(a, b)):
        assert ms == BINARY64.mag(Fraction(x) + Fraction(y))
        assert mp == BINARY64.mag(Fraction(x) * Fraction(y))


def test_mag_when_float64_rounds_up_to_a_power_of_two():
    # (1 - 2^-27)(1 + 2^-27) = 1 - 2^-54: a float64 tie that rounds to 1.0, yet mag is 0.
    x, y = np.array([1.0 - 2.0**-27]), np.array([1.0 + 2.0**-27])
    assert float(x[0] * y[0]) == 1.0
    assert mag_of_product(x, y)[0] == 0 == BINARY64.mag(Fraction(x[0]) * Fraction(y[0]))
    # 1 - 2^-54 is a float64 tie that rounds to 1.0, yet the exact sum is below 1.
    a, b = np.array([1.0]), np.array([-(2.0**-54)])
    s, e = two_sum(a, b)
    assert s[0] == 1.0 and mag_of_sum(s, e)[0] == 0


@given(st.lists(st.tuples(st.floats(0, 2.0**480), st.floats(0, 2.0**480)), min_size=1, max_size=30))
def test_directed_rounding_brackets_the_exact_result(ps):
    a, b = arrays(ps)
    for x, y, s, p, d in zip(a, b, add_up(a, b), mul_up(a, b), sub_down(a, b)):
        assert Fraction(s) >= Fraction(x) + Fraction(y)
        assert Fraction(s) - (Fraction(x) + Fraction(y)) <= Fraction(s) * Fraction(2) ** -52
        assert Fraction(p) >= Fraction(x) * Fraction(y)
        assert Fraction(d) <= Fraction(x) - Fraction(y)


COMPILED = [f for f in FORMATS if f.name != "binary64"]


@pytest.mark.parametrize("fmt", COMPILED, ids=lambda f: f.name)
@given(data=st.data())
def test_compiled_step_rounds_the_exact_sum_once_and_adds_its_half_ulp(fmt, data):
    from difftest.kernels import _round, _step

    for x, y in data.draw(pairs(fmt) | near_ties(fmt)):
        acc, e = _step(x, 0.0, y, 0.0, fmt.prec, fmt.emin)
        exact = Fraction(x) + Fraction(y)
        assert Fraction(acc) == fmt.round(exact), (x, y)
        assert Fraction(e) == fmt.ulp(exact) / 2
        assert Fraction(_round(x * y, fmt.prec, fmt.emin)) == fmt.round(Fraction(x) * Fraction(y))


@pytest.mark.parametrize("fmt", COMPILED, ids=lambda f: f.name)
def test_the_branch_free_step_handles_exact_zeros(fmt):
    """The compiled step has no branch for zero: an exact zero sum (cancellation, or 0 + 0) must
    still round to 0 and add ulp(0)/2 = 2^(emin-1), and zero rounds to zero."""
    from difftest.kernels import _half_ulp_of, _round, _step

    tiny = float(fmt.ulp(Fraction(0)))
    for x in (0.0, 1.0, -3.5, tiny, -tiny):
        acc, e = _step(x, tiny, -x, tiny / 2, fmt.prec, fmt.emin)  # e values of ulp(0)'s scale: exact sums
        assert acc == 0.0 and Fraction(e) == 2 * fmt.ulp(Fraction(0))
    assert _round(0.0, fmt.prec, fmt.emin) == 0.0 and _round(-0.0, fmt.prec, fmt.emin) == 0.0
    assert Fraction(_half_ulp_of(0.0, fmt.prec, fmt.emin)) == fmt.ulp(Fraction(0)) / 2


def _numpy_add_up(a, b):
    """The numpy form :func:`difftest.directed.add_up` compiles (its reference)."""
    s, e = two_sum(a, b)
    return np.where(e > 0, np.nextafter(s, np.inf), s)


def _numpy_sub_down(a, b):
    s, e = two_sum(a, -b)
    return np.where(e < 0, np.nextafter(s, -np.inf), s)


def _numpy_mul_up(a, b):
    p = a * b
    return np.where((a == 0) | (b == 0), 0.0, np.maximum(np.nextafter(p, np.inf), 2.0**-1074))


SPECIALS = [0.0, -0.0, 2.0**-1074, -(2.0**-1074), 2.0**-1022, 1.0, -1.0, 1.0 + 2.0**-52, 2.0**1023,
            float(np.finfo(np.float64).max), -float(np.finfo(np.float64).max), np.inf, -np.inf, np.nan]


@given(st.lists(st.tuples(st.one_of(st.floats(), st.sampled_from(SPECIALS)),
                          st.one_of(st.floats(), st.sampled_from(SPECIALS))), min_size=1, max_size=40))
def test_compiled_directed_rounding_equals_its_numpy_form_bit_for_bit(ps):
    """add_up, sub_down and mul_up run compiled (difftest.directed): on any float64 pair, NaN,
    infinities, signed zeros, subnormals and overflow included, they return the very bits of the
    numpy expressions they replaced (mul_up on the magnitudes, its domain)."""
    a, b = arrays(ps)
    with np.errstate(all="ignore"):
        for got, want in ((add_up(a, b), _numpy_add_up(a, b)), (sub_down(a, b), _numpy_sub_down(a, b)),
                          (mul_up(np.abs(a), np.abs(b)), _numpy_mul_up(np.abs(a), np.abs(b)))):
            assert np.array_equal(got.view(np.int64), want.view(np.int64)) or \
                np.array_equal(got, want, equal_nan=True) and np.array_equal(np.isnan(got), np.isnan(want))


def test_next_up_is_nextafter_on_every_kind_of_float64():
    from numba import njit

    from difftest.values.directed import next_down, next_up

    x = np.array(SPECIALS + [-s for s in SPECIALS] + [3.5, -7.25e-300, 4.9e-310])
    up = njit(lambda v: np.array([next_up(t) for t in v]))(x)
    down = njit(lambda v: np.array([next_down(t) for t in v]))(x)
    with np.errstate(all="ignore"):
        assert np.array_equal(up, np.nextafter(x, np.inf), equal_nan=True)
        assert np.array_equal(down, np.nextafter(x, -np.inf), equal_nan=True)
        assert np.array_equal(np.signbit(up), np.signbit(np.nextafter(x, np.inf)))
        assert np.array_equal(np.signbit(down), np.signbit(np.nextafter(x, -np.inf)))


@pytest.mark.parametrize("fmt", COMPILED, ids=lambda f: f.name)
@given(xs=st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(SPECIALS[:11])),
                   min_size=1, max_size=40), data=st.data())
def test_compiled_rounding_to_a_format_equals_its_numpy_form_bit_for_bit(fmt, xs, data):
    """Format.round_array runs compiled (directed.round_to): on any float64 — the format's ties and
    subnormals, float64 subnormals, signed zeros, values rounding past float64 — the bits of
    ``ldexp(rint(ldexp(x, -q)), q)``."""
    xs = xs + data.draw(st.lists(format_values(fmt) .map(lambda v: v * (1 + 2.0**-fmt.prec)), max_size=10))
    x = np.array(xs)
    q = fmt.quantum_exp_array(x)
    with np.errstate(over="ignore"):
        want = np.ldexp(np.rint(np.ldexp(x, -q)), q)
        got = fmt.round_array(x)
    assert np.array_equal(got.view(np.int64), want.view(np.int64)), (x, got, want)


@given(st.lists(st.tuples(st.one_of(st.floats(0), st.sampled_from([0.0, np.inf, 2.0**-1074])),
                          st.one_of(st.floats(0), st.sampled_from([0.0, np.inf, 2.0**-1074]))), min_size=1, max_size=40))
def test_compiled_ratio_equals_its_numpy_form(ps):
    """EntryArrays.ratio runs compiled (directed.ratio): error/bound, 0 where both are 0 or the
    quotient is NaN, inf where only the bound is 0 — as the numpy expression it replaced."""
    from difftest.outcome import EntryArrays

    e, b = np.array([p for p, _ in ps]), np.array([q for _, q in ps])
    with np.errstate(all="ignore"):
        r = e / b
        want = np.where(b == 0, np.where(e == 0, 0.0, np.inf), r)
        want = np.where(np.isnan(want), 0.0, want)
    got = EntryArrays(error=e, bound=b, bound_order_free=b).ratio("bound")
    assert np.array_equal(got.view(np.int64), want.view(np.int64))


def test_numba_may_use_512_bit_vectors_only_where_nobody_chose_the_cpu():
    """difftest.directed lets numba prefer 512-bit vectors on AVX-512 CPUs (numba.config.CPU_FEATURES,
    the host's features and -prefer-256-bit), and leaves a CPU or features the user chose alone."""
    import os
    import subprocess
    import sys

    from numba.core import codegen

    code = "import difftest.values.directed as d, numba.core.config as c; print(d.PREFERS_512_BIT, repr(c.CPU_FEATURES))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    avx512 = "+avx512f" in codegen.get_host_cpu_features().split(",")
    assert out[0] == str(avx512)
    if avx512:
        assert out[1].endswith(",-prefer-256-bit'")
    chosen = subprocess.run([sys.executable, "-c", code], env={**env, "NUMBA_CPU_NAME": "generic"},
                            capture_output=True, text=True, check=True).stdout.split()
    assert chosen[0] == "False" and "prefer-256-bit" not in chosen[1]

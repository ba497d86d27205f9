"""Formats: the exact definitions, and the vectorised primitives that must equal them."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from difftest.errors import UnknownFormat
from difftest.formats import BFLOAT16, BINARY16, BINARY32, BINARY64, PRESETS, TF32, Format, get_format

from suite_strategies import format_values

VECTORISED = list(PRESETS.values())
DEC = Format(radix=10, prec=3, emin=-5, name="dec3")
FLX8 = Format(radix=2, prec=8, emin=None, name="flx8")


def test_presets_have_the_documented_parameters():
    assert (BINARY64.prec, BINARY64.emin) == (53, -1074)
    assert (BINARY32.prec, BINARY32.emin) == (24, -149)
    assert (TF32.prec, TF32.emin) == (11, -136)
    assert (BINARY16.prec, BINARY16.emin) == (11, -24)
    assert (BFLOAT16.prec, BFLOAT16.emin) == (8, -133)
    assert BINARY16.max_finite == 65504.0
    assert BINARY32.max_finite == float(np.finfo(np.float32).max)
    assert all(f.vectorised for f in VECTORISED)


def test_mag_is_floor_log_plus_one():
    f = BINARY32
    assert f.mag(1) == 1 and f.mag(Fraction(1, 2)) == 0 and f.mag(0) == 0
    assert f.mag(Fraction(3, 4)) == 0 and f.mag(2) == 2 and f.mag(-5) == 3
    assert DEC.mag(999) == 3 and DEC.mag(1000) == 4 and DEC.mag(Fraction(1, 10)) == 0


def test_ulp_of_zero_is_radix_to_emin_for_flt_and_zero_for_flx():
    assert BINARY32.ulp(0) == Fraction(2) ** -149
    assert BINARY16.ulp(0) == Fraction(2) ** -24
    assert FLX8.ulp(0) == 0
    assert DEC.ulp(0) == Fraction(1, 10**5)


def test_ulp_follows_fexp():
    assert BINARY32.ulp(1) == Fraction(2) ** -23
    assert BINARY32.ulp(Fraction(2) ** -140) == Fraction(2) ** -149  # subnormal range
    assert BINARY16.ulp(65504) == 32
    assert FLX8.ulp(Fraction(2) ** -2000) == Fraction(2) ** -2007
    assert DEC.ulp(123) == 1 and DEC.ulp(Fraction(123, 1000)) == Fraction(1, 1000)


def test_round_is_nearest_with_ties_to_even():
    f = BINARY16
    one = Fraction(1)
    u = Fraction(2) ** -10
    assert f.round(one + u / 2) == one  # tie -> even
    assert f.round(one + 3 * u / 2) == one + 2 * u  # tie -> even (up)
    assert f.round(one + u / 2 + Fraction(2) ** -40) == one + u
    assert f.round(Fraction(2) ** -25) == 0  # half the smallest subnormal: tie to even zero
    assert f.round(Fraction(3, 2) * Fraction(2) ** -25) == Fraction(2) ** -24
    assert f.round(Fraction(70000)) == 70016  # no overflow in the model
    assert DEC.round(Fraction(1235, 10)) == 124 and DEC.round(Fraction(1245, 10)) == 124


def test_unknown_format_names_the_presets():
    with pytest.raises(UnknownFormat, match="binary32"):
        get_format("float33")


@pytest.mark.parametrize("fmt", VECTORISED, ids=lambda f: f.name)
@given(data=st.data())
def test_round_array_equals_exact_rounding(fmt, data):
    xs = data.draw(st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, min_value=-2.0**400, max_value=2.0**400),
            format_values(BINARY64, lo=-1074, hi=-1000),
            # ties of fmt: a value of fmt plus half its ulp
            format_values(fmt, lo=fmt.emin, hi=60).map(lambda v: v + float(fmt.ulp(Fraction(v))) / 2),
        ),
        min_size=1, max_size=20,
    ))
    a = np.array(xs)
    got = fmt.round_array(a)
    for x, r in zip(xs, got):
        assert Fraction(r) == fmt.round(Fraction(x)), x


@pytest.mark.parametrize("fmt", VECTORISED, ids=lambda f: f.name)
@given(data=st.data())
def test_quantum_exp_array_equals_exact_cexp_and_ulp0(fmt, data):
    xs = data.draw(st.lists(format_values(fmt, lo=fmt.emin, hi=200) | st.just(0.0), min_size=1, max_size=20))
    q = fmt.quantum_exp_array(np.array(xs))
    for x, e in zip(xs, q):
        assert Fraction(2) ** int(e) == fmt.ulp(Fraction(x))


@pytest.mark.parametrize("fmt", VECTORISED, ids=lambda f: f.name)
@given(data=st.data())
def test_representable_array_equals_exact_check(fmt, data):
    xs = data.draw(st.lists(
        format_values(fmt, lo=fmt.emin, hi=100) | st.floats(-1e6, 1e6) | format_values(BINARY64, lo=-1074, hi=10),
        min_size=1, max_size=20,
    ))
    got = fmt.representable_array(np.array(xs))
    assert [bool(g) for g in got] == [fmt.is_representable(Fraction(x)) for x in xs]

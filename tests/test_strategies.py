"""The public strategies yield valid cases of representable values, and the patterns they promise."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from difftest import strategies as dst
from difftest.formats import PRESETS

FORMATS = list(PRESETS.values())


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@settings(max_examples=25)
@given(data=st.data())
def test_cases_hold_only_values_of_their_format_and_valid_geometries(fmt, data):
    limits = dst.Limits(max_batch=2, max_channels=3, max_size=6)
    case = data.draw(dst.cases(fmt, limits=limits))
    for a in (case.input, case.weight, case.grad_output):
        assert fmt.representable_array(a).all()
        assert np.all(np.abs(a) < fmt.max_finite)
    g = case.geometry
    assert g.kH <= g.H + 2 * g.padding and g.kW <= g.W + 2 * g.padding
    assert g.C <= 3 and g.O <= 3 and g.N <= 2


@pytest.mark.parametrize("family", ["normal", "uniform", "log_uniform", "integers", "powers_of_two", "subnormals", "near_ties", "values"])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@settings(max_examples=30)
@given(data=st.data())
def test_every_value_family_is_representable(fmt, family, data):
    x = data.draw(getattr(dst, family)(fmt))
    assert fmt.representable_array(np.array([x]))[0]


@given(dst.subnormals(dst.BINARY32))
def test_subnormals_reach_below_the_normal_range(x):
    assert abs(x) < 2.0**-125 + 2.0**-126


@settings(max_examples=20)
@given(data=st.data())
def test_cancellation_puts_adjacent_opposite_giants_early_in_each_channels_fold(data):
    fmt = dst.BINARY32
    shape = (2, 3, 4, 5)
    a = data.draw(dst.cancellation(fmt, shape))
    flat = a.transpose(1, 0, 2, 3).reshape(3, -1)
    for row in flat:
        big = np.argmax(np.abs(row))
        assert big <= 7 and row[big + 1] == -row[big] or row[big - 1] == -row[big]
        small = np.delete(row, [big, big + 1] if row[big + 1] == -row[big] else [big - 1, big])
        assert np.all(np.abs(small) < np.abs(row[big]) * 2.0**-fmt.prec)  # below ulp(B)/2: lost next to B


@settings(max_examples=20)
@given(dst.geometries(dst.Limits(max_batch=3, max_channels=5, max_size=9, max_kernel=4, max_stride=3, max_padding=3)))
def test_geometries_respect_their_limits(g):
    assert 1 <= g.N <= 3 and 1 <= g.C <= 5 and 1 <= g.O <= 5 and g.kH <= 4 and 1 <= g.stride <= 3 and g.padding <= 3


@pytest.mark.parametrize("family", dst.FAMILIES)
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_seeded_arrays_of_every_family_are_representable_and_reproducible(fmt, family):
    a = dst.seeded_array(fmt, (3, 4, 5, 6), family, seed=7, sparsity=0.5)
    assert a.shape == (3, 4, 5, 6) and fmt.representable_array(a).all()
    assert np.all(np.abs(a) < fmt.max_finite)
    assert np.array_equal(a, dst.seeded_array(fmt, (3, 4, 5, 6), family, seed=7, sparsity=0.5))

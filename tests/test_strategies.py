"""The public strategies yield valid cases of representable values, and the patterns they promise."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from difftest import strategies as dst
from difftest.formats import PRESETS, Format
from difftest.geometry import Geometry

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


# --- arguments are checked when a strategy is built -----------------------------------------

SHAPE = (1, 2, 3, 3)
GEOMETRY = Geometry(N=1, C=2, H=3, W=3, O=2, kH=2, kW=2, stride=1, padding=0)

#: Every public builder taking a format, called with only the format varying.
WITH_FORMAT = {
    "format_values": lambda fmt: dst.format_values(fmt),
    "normal": lambda fmt: dst.normal(fmt),
    "uniform": lambda fmt: dst.uniform(fmt),
    "log_uniform": lambda fmt: dst.log_uniform(fmt),
    "integers": lambda fmt: dst.integers(fmt),
    "powers_of_two": lambda fmt: dst.powers_of_two(fmt),
    "subnormals": lambda fmt: dst.subnormals(fmt),
    "near_ties": lambda fmt: dst.near_ties(fmt),
    "values": lambda fmt: dst.values(fmt),
    "cancellation": lambda fmt: dst.cancellation(fmt, SHAPE),
    "constant_blocks": lambda fmt: dst.constant_blocks(fmt, SHAPE),
    "seeded_array": lambda fmt: dst.seeded_array(fmt, SHAPE, "normal", seed=0),
    "seeded": lambda fmt: dst.seeded(fmt, SHAPE),
    "tensors": lambda fmt: dst.tensors(fmt, SHAPE),
    "structured": lambda fmt: dst.structured(fmt, GEOMETRY),
    "cases": lambda fmt: dst.cases(fmt),
}

#: Every public builder taking limits, called with only the limits varying.
WITH_LIMITS = {
    "geometries": lambda limits: dst.geometries(limits),
    "log_uniform": lambda limits: dst.log_uniform(dst.BINARY32, limits=limits),
    "values": lambda limits: dst.values(dst.BINARY32, limits),
    "cancellation": lambda limits: dst.cancellation(dst.BINARY32, SHAPE, limits),
    "constant_blocks": lambda limits: dst.constant_blocks(dst.BINARY32, SHAPE, limits),
    "seeded_array": lambda limits: dst.seeded_array(dst.BINARY32, SHAPE, "normal", 0, limits=limits),
    "seeded": lambda limits: dst.seeded(dst.BINARY32, SHAPE, limits),
    "tensors": lambda limits: dst.tensors(dst.BINARY32, SHAPE, limits),
    "structured": lambda limits: dst.structured(dst.BINARY32, GEOMETRY, limits),
    "cases": lambda limits: dst.cases(dst.BINARY32, limits=limits),
}


@pytest.mark.parametrize("field", ["max_batch", "max_channels", "max_size", "max_kernel", "max_stride"])
@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3"])
def test_limits_reject_sizes_that_are_not_positive_integers(field, value):
    with pytest.raises(InvalidArgument, match=f"Limits.{field} must be an integer >= 1, got {value!r}"):
        dst.Limits(**{field: value})


@pytest.mark.parametrize("value", [-1, 1.0, False])
def test_limits_reject_a_padding_that_is_not_a_non_negative_integer(value):
    with pytest.raises(InvalidArgument, match="Limits.max_padding must be an integer >= 0"):
        dst.Limits(max_padding=value)


@settings(max_examples=5)
@given(dst.geometries(dst.Limits(max_batch=1, max_channels=1, max_size=1, max_kernel=1, max_stride=1, max_padding=0)))
def test_the_smallest_limits_are_valid_and_yield_the_one_by_one_geometry(g):
    assert g == Geometry(N=1, C=1, H=1, W=1, O=1, kH=1, kW=1, stride=1, padding=0)


@pytest.mark.parametrize("builder", WITH_LIMITS.values(), ids=WITH_LIMITS.keys())
def test_limits_arguments_must_be_limits(builder):
    with pytest.raises(InvalidArgument, match="limits must be a Limits"):
        builder({"max_kernel": 3})


@pytest.mark.parametrize("builder", WITH_FORMAT.values(), ids=WITH_FORMAT.keys())
def test_unknown_format_names_are_rejected_with_the_known_names(builder):
    with pytest.raises(InvalidArgument, match="fmt must be a Format or one of binary64, binary32, tf32, binary16, bfloat16"):
        builder("binary8")


@pytest.mark.parametrize("builder", WITH_FORMAT.values(), ids=WITH_FORMAT.keys())
def test_preset_names_are_accepted_wherever_a_format_is(builder):
    builder("binary16")


@pytest.mark.parametrize("fmt", [Format(10, 7, -100), Format(2, 24, None), Format(2, 64, -16445), 32],
                         ids=["decimal", "FLX", "wider-than-float64", "not-a-format"])
def test_formats_whose_values_float64_cannot_hold_are_rejected(fmt):
    with pytest.raises(InvalidArgument, match="fmt must be"):
        dst.cases(fmt)


@pytest.mark.parametrize("scale", [0, -1.0, math.inf, math.nan, True, "1"])
def test_normal_scale_must_be_a_finite_positive_number(scale):
    with pytest.raises(InvalidArgument, match="scale must be a finite number > 0"):
        dst.normal(dst.BINARY32, scale)


@pytest.mark.parametrize("lo, hi, name", [(math.nan, 1.0, "lo"), (-math.inf, 1.0, "lo"), (0.0, math.inf, "hi"), (1.0, 0.0, "hi"), (0, "1", "hi")])
def test_uniform_bounds_must_be_finite_with_lo_at_most_hi(lo, hi, name):
    with pytest.raises(InvalidArgument, match=f"{name} must be a finite number"):
        dst.uniform(dst.BINARY32, lo, hi)


@pytest.mark.parametrize("bound", [-1, 1.5, True])
def test_integers_bound_must_be_a_non_negative_integer(bound):
    with pytest.raises(InvalidArgument, match="bound must be an integer >= 0"):
        dst.integers(dst.BINARY32, bound)


@pytest.mark.parametrize("build", [
    lambda: dst.log_uniform(dst.BINARY32, max_exp=2.5),
    lambda: dst.log_uniform(dst.BINARY32, max_exp="3"),
    lambda: dst.format_values(dst.BINARY32, max_exp=4.0),
    lambda: dst.powers_of_two(dst.BINARY32, max_exp=1.5),
], ids=["log_uniform-float", "log_uniform-str", "format_values", "powers_of_two"])
def test_maximal_exponents_must_be_integers(build):
    with pytest.raises(InvalidArgument, match="max_exp must be an integer"):
        build()


def test_format_values_minimal_exponent_must_be_an_integer():
    with pytest.raises(InvalidArgument, match="min_exp must be an integer"):
        dst.format_values(dst.BINARY32, min_exp=0.5)


def test_powers_of_two_must_reach_up_to_at_least_the_smallest_subnormal():
    with pytest.raises(InvalidArgument, match="max_exp must be an integer >= -149"):
        dst.powers_of_two(dst.BINARY32, max_exp=-150)


def test_seeded_array_family_must_be_one_of_the_families():
    with pytest.raises(InvalidArgument, match="family must be one of mixed, normal, uniform, .*, got 'gauss'"):
        dst.seeded_array(dst.BINARY32, SHAPE, "gauss", seed=0)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, math.nan, "0.5"])
def test_seeded_array_sparsity_must_lie_in_the_half_open_unit_interval(sparsity):
    with pytest.raises(InvalidArgument, match=r"sparsity must be a number in \[0, 1\)"):
        dst.seeded_array(dst.BINARY32, SHAPE, "normal", seed=0, sparsity=sparsity)


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_seeded_array_seed_must_be_a_non_negative_integer(seed):
    with pytest.raises(InvalidArgument, match="seed must be an integer >= 0"):
        dst.seeded_array(dst.BINARY32, SHAPE, "normal", seed=seed)


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 2, 3, 3, 1), (1, 0, 3, 3), (1, 2, 3.0, 3), 4])
@pytest.mark.parametrize("builder", [dst.cancellation, dst.tensors], ids=["cancellation", "tensors"])
def test_tensor_shapes_must_be_four_positive_integers(builder, shape):
    with pytest.raises(InvalidArgument, match="shape must be a tuple of 4 positive integers"):
        builder(dst.BINARY32, shape)


@pytest.mark.parametrize("shape", [(2, 0), (2, -1), (2, 1.5), "abc", 4])
@pytest.mark.parametrize("build", [
    lambda shape: dst.arrays(shape, st.just(1.0)),
    lambda shape: dst.constant_blocks(dst.BINARY32, shape),
    lambda shape: dst.seeded(dst.BINARY32, shape),
    lambda shape: dst.seeded_array(dst.BINARY32, shape, "normal", seed=0),
], ids=["arrays", "constant_blocks", "seeded", "seeded_array"])
def test_array_shapes_must_be_tuples_of_positive_integers(build, shape):
    with pytest.raises(InvalidArgument, match="shape must be a tuple of positive integers"):
        build(shape)


def test_array_elements_must_be_a_strategy():
    with pytest.raises(InvalidArgument, match="elements must be a hypothesis strategy"):
        dst.arrays(SHAPE, 1.0)


def test_cases_geometry_must_be_a_strategy_not_a_geometry():
    with pytest.raises(InvalidArgument, match="geometry must be a strategy of Geometry"):
        dst.cases(geometry=GEOMETRY)


def test_cases_tensor_must_be_a_value_strategy_or_a_function():
    with pytest.raises(InvalidArgument, match="tensor must be a value strategy or a function"):
        dst.cases(tensor=1.0)


def test_structured_needs_a_geometry():
    with pytest.raises(InvalidArgument, match="g must be a Geometry"):
        dst.structured(dst.BINARY32, (1, 2, 3, 3))


@settings(max_examples=10)
@given(data=st.data())
def test_cases_take_a_value_strategy_for_their_tensors(data):
    case = data.draw(dst.cases("binary16", tensor=dst.integers("binary16", 4), limits=dst.Limits(max_size=4)))
    for a in (case.input, case.weight, case.grad_output):
        assert np.all(np.abs(a) <= 4) and np.array_equal(a, np.round(a))

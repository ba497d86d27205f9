"""The theorem as a property: the NF reference is within the certified bound of the exact spec."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from difftest.case import Case
from difftest.formats import BINARY64, PRESETS
from difftest.oracles import SlicedExactOracle
from difftest.orderfree import order_free_bounds
from difftest.replay import replay

from suite_strategies import cases, geometries, spread_values

FORMATS = list(PRESETS.values())


def assert_within_bounds(case: Case) -> None:
    rt = case.runtime()
    exact = SlicedExactOracle().spec_gradients(case.input, case.weight, case.grad_output, case.geometry)
    of = order_free_bounds(rt, case.geometry)
    for g, (value, bound) in replay(rt, case.geometry).items():
        spec = exact[g].to_fractions()
        for v, s, b, o in zip(value.ravel(), spec.ravel(), bound.ravel(), of[g].bound.ravel()):
            err = abs(Fraction(v) - s)
            assert err <= Fraction(b), (g, "torchlean")
            assert err <= Fraction(o), (g, "order-free")  # the NF fold is one of "any order"


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@given(data=st.data())
def test_nf_result_is_within_both_bounds_of_the_exact_spec(fmt, data):
    assert_within_bounds(data.draw(cases(fmt, values=spread_values(fmt), eps=True, max_size=4)))


@st.composite
def unrounded_cases(draw, fmt):
    """Spec values that are arbitrary float64 numbers: runtime values are rounded into fmt."""
    g = draw(geometries(max_size=4))
    el = st.floats(-4, 4, allow_nan=False) | st.floats(-1e-6, 1e-6)
    arr = lambda shape: draw(hnp.arrays(np.float64, shape, elements=el))  # noqa: E731
    return Case(arr(g.input_shape), arr(g.weight_shape), arr(g.grad_output_shape),
                format=fmt, round_inputs=True, **g.conv_kwargs())


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f is not BINARY64], ids=lambda f: f.name)
@given(data=st.data())
def test_rounded_inputs_stay_within_the_bound_through_their_eps(fmt, data):
    case = data.draw(unrounded_cases(fmt))
    assert_within_bounds(case)

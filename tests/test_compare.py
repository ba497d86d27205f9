"""Errors are bracketed surely; verdicts follow the definitions; violations only when certain."""

from fractions import Fraction

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from difftest.case import Case
from difftest.check import check_case, model_for
from difftest.compare import compare_gradient, error_bounds
from difftest.exact import ExactTensor
from difftest.formats import BINARY16, BINARY32
from difftest.fparith import add_up
from difftest.oracles import SlicedExactOracle
from difftest.backends import get_backend


@given(st.integers(-(2**120), 2**120), st.integers(-1200, 100), st.floats(allow_nan=False, allow_infinity=False))
def test_error_lower_bound_is_never_above_the_true_error(m, e, b):
    exact = ExactTensor(np.array([m], dtype=object), e)
    err = error_bounds(np.array([b]), exact)
    true = abs(Fraction(b) - Fraction(m) * Fraction(2) ** e)
    assert Fraction(err.lower[0]) <= true
    assert abs(Fraction(err.approx[0]) - true) <= true * Fraction(2) ** -50 + Fraction(2) ** -1070


def _setup(fmt=BINARY32):
    rng = np.random.default_rng(7)
    x = fmt.round_array(rng.standard_normal((1, 2, 6, 5)))
    w = fmt.round_array(rng.standard_normal((3, 2, 3, 3)))
    d = fmt.round_array(rng.standard_normal((1, 3, 3, 3)))
    case = Case(x, w, d, stride=2, padding=1, format=fmt)
    model = model_for(case, fmt)
    exact = SlicedExactOracle().spec_gradients(x, w, d, case.geometry)
    return case, model, exact


def _judge(values, model, exact, g="grad_weight", fmt=BINARY32):
    of = model.order_free[g]
    return compare_gradient(values, exact[g], model.bound[g], of.bound, add_up(of.abs_sum, of.bound), fmt)


def test_exact_values_pass():
    _, model, exact = _setup()
    r = _judge(exact["grad_weight"].nearest, model, exact)
    assert r.verdict == "pass" and r.violations == 0


def test_error_between_the_two_bounds_is_order():
    _, model, exact = _setup()
    v = exact["grad_weight"].nearest.copy()
    tl, of = model.bound["grad_weight"][0, 0, 0, 0], model.order_free["grad_weight"].bound[0, 0, 0, 0]
    assert tl < of  # this entry's torchlean bound is the tighter one
    v[0, 0, 0, 0] += (tl + of) / 2
    r = _judge(v, model, exact)
    assert r.verdict == "order" and r.violations == 1 and r.worst_index == [0, 0, 0, 0]
    assert 1 < r.max_ratio and r.max_ratio_order_free < 1


def test_error_beyond_the_order_free_bound_is_precision():
    _, model, exact = _setup()
    v = exact["grad_weight"].nearest.copy()
    v[1, 1, 2, 0] += 3 * max(model.bound["grad_weight"][1, 1, 2, 0], model.order_free["grad_weight"].bound[1, 1, 2, 0])
    r = _judge(v, model, exact)
    assert r.verdict == "precision" and r.violations_order_free == 1 and r.worst_index == [1, 1, 2, 0]


def test_error_equal_to_the_bound_is_not_a_violation():
    _, model, exact = _setup()
    v = exact["grad_bias"].nearest.copy()
    v[0] = exact["grad_bias"].nearest[0] + model.bound["grad_bias"][0] * (1 - 2.0**-40)
    assert _judge(v, model, exact, g="grad_bias").verdict == "pass"


def test_non_finite_output_is_precision_inside_the_range_and_domain_where_overflow_is_possible():
    _, model, exact = _setup()
    v = exact["grad_weight"].nearest.copy()
    v[0, 0, 0, 0] = np.nan
    assert _judge(v, model, exact).verdict == "precision"
    # grad_weight = 4 · 6e4 = 2.4e5: finite in the model, beyond binary16's 65504 on hardware
    x = np.full((1, 1, 2, 2), 6e4)
    case = Case(x, np.ones((1, 1, 1, 1)), np.ones((1, 1, 2, 2)), format=BINARY16)
    model16 = model_for(case, BINARY16)
    ex = SlicedExactOracle().spec_gradients(case.input, case.weight, case.grad_output, case.geometry)
    r = _judge(np.array([[[[np.inf]]]]), model16, ex, fmt=BINARY16)
    assert r.verdict == "domain"
    # the same inf on an entry whose sum cannot reach 65504 is a precision failure
    r = _judge(np.array([np.inf]), model16, ex, g="grad_bias", fmt=BINARY16)
    assert r.verdict == "precision"


class RaisingBackend:
    """A backend that fails, to check a multi-backend run survives it."""

    name = "raises"
    format = BINARY32

    def conv2d_backward(self, x, w, d, stride, padding):
        raise RuntimeError("kernel launch failed")


class WrongShapeBackend(RaisingBackend):
    name = "wrong-shape"

    def conv2d_backward(self, x, w, d, stride, padding):
        return {"grad_input": np.zeros(3), "grad_weight": np.zeros(w.shape), "grad_bias": np.zeros(w.shape[0])}


def test_a_raising_backend_is_an_error_and_the_run_goes_on():
    case, _, _ = _setup()
    results = check_case(case, [RaisingBackend(), WrongShapeBackend(), get_backend("nf-binary32")])
    assert [r.verdict for r in results] == ["error", "error", "pass"]
    assert "kernel launch failed" in results[0].gradients["grad_input"].message
    assert "shape" in results[1].gradients["grad_input"].message


def test_inputs_not_in_a_backends_format_are_domain():
    case, _, _ = _setup()
    (r,) = check_case(case, [get_backend("numpy-float16")])
    assert r.verdict == "domain" and "not representable in binary16" in r.gradients["grad_bias"].message

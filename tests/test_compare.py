"""Errors are bracketed surely; verdicts follow the definitions; violations only when certain."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from difftest.case import Case
from difftest.check import check_case, nf_reference
from difftest.compare import compare_gradient, error_bounds
from difftest.exact import ExactTensor
from difftest.cli import main
from difftest.formats import BFLOAT16, BINARY16, BINARY32, BINARY64, TF32
from difftest.fparith import add_up
from difftest.oracles import SlicedExactOracle
from difftest.backends import get_backend

from suite_strategies import cases, format_values


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
    model = nf_reference(case, fmt)
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
    model16 = nf_reference(case, BINARY16)
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


def test_an_entry_beyond_the_order_free_bound_is_precision_even_within_the_torchlean_bound():
    _, model, exact = _setup()
    tl, of = model.bound["grad_input"], model.order_free["grad_input"].bound
    idx = tuple(int(i) for i in np.argwhere((of < tl) & (of > 0))[0])  # TorchLean is the looser bound here
    v = exact["grad_input"].nearest.copy()
    v[idx] += (tl[idx] + of[idx]) / 2
    r = _judge(v, model, exact, g="grad_input")
    assert r.verdict == "precision" and r.violations == 0 and r.violations_order_free == 1
    assert r.worst_index == list(idx) and r.max_ratio < 1 < r.max_ratio_order_free


class Tf32InputsBackend:
    """A deliberately wrong backend: rounds its inputs to TF32, yet claims binary32."""

    name = "tf32-inputs-claiming-binary32"
    format = BINARY32

    def conv2d_backward(self, x, w, d, stride, padding):
        import torch

        t = lambda a: torch.from_numpy(TF32.round_array(a))  # noqa: E731
        xt, wt = t(x).requires_grad_(True), t(w).requires_grad_(True)
        y = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding)
        y.backward(t(d))
        f32 = lambda g: g.numpy().astype(np.float32).astype(np.float64)  # noqa: E731
        return {"grad_input": f32(xt.grad), "grad_weight": f32(wt.grad), "grad_bias": f32(t(d).sum((0, 2, 3)))}


def test_tf32_inputs_are_precision_although_the_torchlean_bound_holds():
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32).astype(np.float64)  # noqa: E731
    case = Case(r(1, 2, 24, 24), r(32, 2, 3, 3), r(1, 32, 24, 24), stride=1, padding=1)
    (res,) = check_case(case, [Tf32InputsBackend()])
    gi = res.gradients["grad_input"]
    assert gi.verdict == "precision" and gi.violations == 0 and gi.violations_order_free > 100


NF_FORMATS = [BINARY64, BINARY32, TF32, BINARY16, BFLOAT16]


@pytest.mark.parametrize("fmt", NF_FORMATS, ids=lambda f: f.name)
@settings(max_examples=25)
@given(data=st.data())
def test_the_nf_reference_always_passes_also_beyond_the_hardware_range(fmt, data):
    top = {"binary64": 400, "binary32": 200, "tf32": 200, "binary16": 40, "bfloat16": 200}[fmt.name]
    values = st.one_of(format_values(fmt, lo=-30, hi=5), format_values(fmt, lo=top - 60, hi=top),
                       format_values(fmt, lo=fmt.emin, hi=fmt.emin + 12), st.just(0.0))
    case = data.draw(cases(fmt, values=values))
    (r,) = check_case(case, [get_backend(f"nf-{fmt.name}")])
    assert {g.verdict for g in r.gradients.values()} == {"pass"}, {k: g.message for k, g in r.gradients.items()}


def test_values_beyond_the_hardware_range_are_domain_for_hardware_and_in_the_model_for_nf(tmp_path, capsys):
    x = np.full((1, 1, 2, 2), 2.0**200)
    case = Case(x, np.ones((1, 1, 1, 1)), np.ones((1, 1, 2, 2)))
    nf, hw = check_case(case, [get_backend("nf-binary32"), get_backend("numpy-float32")])
    assert nf.verdict == "pass"
    assert hw.verdict == "domain" and "beyond the largest finite binary32" in hw.gradients["grad_input"].message
    case.save(tmp_path / "big.npz")
    assert main(["bounds", str(tmp_path / "big.npz"), "--out", str(tmp_path / "b.npz")]) == 0
    with np.load(tmp_path / "b.npz") as z:
        assert z["grad_weight_exact"][0, 0, 0, 0] == 4 * 2.0**200 and np.isfinite(z["grad_weight_bound_order_free"]).all()


class NegativeBiasBackend:
    """A deliberately wrong binary16 backend: the bias gradient of positive terms comes back negative."""

    name = "negative-bias"
    format = BINARY16

    def conv2d_backward(self, x, w, d, stride, padding):
        out = get_backend("nf-binary16").conv2d_backward(x, w, d, stride, padding)
        return {**out, "grad_bias": np.full(w.shape[0], -60000.0)}


def test_a_negative_sum_of_4096_positive_binary16_terms_is_precision():
    ones = np.ones((1, 1, 64, 64))
    (r,) = check_case(Case(ones, np.ones((1, 1, 1, 1)), ones, format=BINARY16), [NegativeBiasBackend()])
    gb = r.gradients["grad_bias"]
    assert gb.verdict == "precision" and gb.violations_order_free == 1
    assert np.isfinite(gb.worst["bound_order_free"]) and gb.worst["bound_order_free"] < 64096

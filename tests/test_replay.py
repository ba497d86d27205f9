"""The vectorised replay equals TorchLean's definitions (difftest.lean) on exact rationals."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from difftest import lean
from difftest.case import Case
from difftest.formats import BINARY16, PRESETS
from difftest.replay import compiled, compiled_replay, numpy_replay, replay

from suite_strategies import cases, format_values, spread_values

FORMATS = list(PRESETS.values())
TOL = Fraction(1, 10**9)


def assert_replay_matches_lean(case: Case) -> None:
    """Both engines (compiled folds where the format allows, and the numpy folds) equal Lean's."""
    rt = case.runtime()
    ref = lean.gradients_and_bounds(
        rt.format, rt.input, rt.weight, rt.grad_output, case.geometry, rt.eps_input, rt.eps_weight, rt.eps_grad_output
    )
    engines = [numpy_replay] + ([compiled_replay] if compiled(rt.format) else [])
    for engine in engines:
        assert_matches(engine(rt, case.geometry), ref, rt.format)


def assert_matches(fast, ref, fmt) -> None:
    for g, (value, bound) in fast.items():
        ref_value, ref_bound = ref[g]
        for v, rv in zip(value.ravel(), ref_value.ravel()):
            assert Fraction(v) == rv, (g, "NF value")
        for b, rb in zip(bound.ravel(), ref_bound.ravel()):
            # never below the Lean bound, above it by at most 1e-9 relative (plus, in binary64,
            # the 2^-1075 terms float64 must round up to 2^-1074)
            assert Fraction(b) >= rb, (g, "bound below Lean's")
            slack = TOL * rb + (Fraction(2) ** -1074 * 10**6 if fmt.name == "binary64" else 0)
            assert Fraction(b) - rb <= slack, (g, float(b), float(rb))


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@given(data=st.data())
def test_replay_equals_lean_definitions(fmt, data):
    assert_replay_matches_lean(data.draw(cases(fmt, values=spread_values(fmt), eps=True, max_size=4)))


@given(case=cases(BINARY16, values=format_values(BINARY16, lo=-24, hi=-10), max_size=5))
def test_replay_equals_lean_in_the_subnormal_range(case):
    assert_replay_matches_lean(case)


def assert_rounded_up(b: float, exact: Fraction) -> None:
    """``b`` is the Lean value rounded upward: not below it, at most 1e-9 relative above."""
    assert exact <= Fraction(b) <= exact * (1 + TOL)


def test_hand_computed_bias_bound():
    # δ = 1, 2, 3 in binary32: ulp(1)/2 + ulp(3)/2 + ulp(6)/2 = 2^-24 + 2^-23 + 2^-22
    d = np.array([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    case = Case(np.zeros((1, 1, 1, 3)), np.zeros((1, 1, 1, 1)), d)
    value, bound = replay(case.runtime(), case.geometry)["grad_bias"]
    assert value[0] == 6.0
    assert_rounded_up(bound[0], 7 * Fraction(2) ** -24)


def test_hand_computed_input_bound_counts_zero_steps():
    # O = C = 1, 1x1 kernel, 2x2 image: each entry folds over 4 steps (oi, oj), one matching.
    w = np.ones((1, 1, 1, 1))
    d = np.ones((1, 1, 2, 2))
    case = Case(np.zeros((1, 1, 2, 2)), w, d)
    value, bound = replay(case.runtime(), case.geometry)["grad_input"]
    u = 2.0**-24  # ulp(1)/2 in binary32
    # entry (0,0): matching step first: mulEps = u, addEps adds ulp(1)/2 = u; then 3 zero steps of u
    assert_rounded_up(bound[0, 0, 0, 0], 5 * Fraction(u))
    # entry (1,1): 3 zero steps with acc = 0 (ulp(0)/2 = 2^-150 each), then the matching step
    assert_rounded_up(bound[0, 0, 1, 1], 2 * Fraction(u) + 3 * Fraction(2) ** -150)
    assert (value == 1.0).all()


def test_hand_computed_kernel_bound_counts_padded_reads():
    # 1x1 image, 3x3 kernel, padding 1: grad_weight[di, dj] has one step; 8 of 9 read padding.
    x = np.array([[[[2.0]]]])
    d = np.array([[[[1.0]]]])
    case = Case(x, np.zeros((1, 1, 3, 3)), d, padding=1, eps_input=2.0**-10, eps_grad_output=2.0**-12)
    value, bound = replay(case.runtime(), case.geometry)["grad_weight"]
    ex, ed = Fraction(2) ** -10, Fraction(2) ** -12
    # centre tap reads x = 2: mulEps = (2 + ex)·ed + (1 + ed)·ex + ulp(2)/2, then addEps: + ulp(2)/2
    centre = (2 + ex) * ed + (1 + ed) * ex + 2 * (Fraction(2) ** -23)
    # a padded tap reads exact 0: mulEps = ex·ed + (1 + ed)·ex + ulp(0)/2, then + ulp(0)/2
    padded = ex * ed + (1 + ed) * ex + 2 * (Fraction(2) ** -150)
    assert_rounded_up(bound[0, 0, 1, 1], centre)
    assert_rounded_up(bound[0, 0, 0, 0], padded)
    assert value[0, 0, 1, 1] == 2.0 and value[0, 0, 0, 0] == 0.0


def test_each_compiled_fold_is_compiled_once_whatever_the_operands_flags():
    """A writable and a read-only operand are two numba specialisations, each compiled on a fresh
    machine (eight of three folds made a first run spend 15 s compiling): every operand reaches the
    folds read-only and C-ordered, so each fold has one."""
    from difftest import kernels

    rng = np.random.default_rng(5)
    for writable in (True, False):
        x, w, d = (BINARY16.round_array(rng.standard_normal(s)) for s in ((1, 2, 5, 5), (3, 2, 3, 3), (1, 3, 3, 3)))
        x = np.asfortranarray(x)  # any layout
        for a in (x, w, d):
            a.setflags(write=writable)
        case = Case(x, w, d, stride=1, padding=0, format="binary16")
        compiled_replay(case.runtime(BINARY16), case.geometry)
    for fold in (kernels.kernel_fold, kernels.bias_fold, kernels.input_fold):
        assert len(fold.signatures) == 1, (fold.__name__, fold.signatures)

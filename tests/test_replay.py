"""The vectorised replay equals TorchLean's definitions (difftest.lean) on exact rationals."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from difftest import lean
from difftest.case import Case
from difftest.formats import BINARY16, BINARY32, PRESETS
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


@given(case=cases(BINARY32, values=format_values(BINARY32, lo=-100, hi=-84) | format_values(BINARY32, hi=-130),
                 max_size=5))
def test_binary32_replay_on_the_hardware_equals_lean_in_the_subnormal_range(case):
    """binary32 folds on the hardware's binary32 arithmetic (kernels._sum_step): products of
    values near 2^-75 and sums of subnormals round as FLT(24, -149) does."""
    assert_replay_matches_lean(case)


def _binary32_case(value: float) -> Case:
    x = np.full((1, 2, 4, 4), value)
    w = np.full((3, 2, 3, 3), value)
    d = np.full((1, 3, 2, 2), value)
    return Case(x, w, d, stride=1, padding=0, format="binary32")


def test_a_binary32_fold_past_the_binary32_range_is_folded_again_emulated():
    """The NF model has no overflow: 2^100·2^100 is a finite product there. On the hardware's
    binary32 it is +inf, so the folds run again the emulated way, and equal Lean's."""
    from difftest import kernels
    from difftest.replay import _PROBE, _operand  # the folds' own argument types: no new specialisation

    case = _binary32_case(2.0**100)
    rt = case.runtime()
    acc, e = np.empty(3), np.empty(3)
    d = _operand(rt.grad_output.transpose(1, 0, 2, 3).reshape(3, -1))
    kernels.bias_fold(d, 24, -149, True, _PROBE, 0.0, acc, e)
    assert np.isfinite(acc).all()  # sums of 2^100 stay in range
    acc, e = np.empty((3, 18)), np.empty((3, 18))
    kernels.kernel_fold(_operand(np.full((4, 18), 2.0**100)), _operand(np.full((3, 4), 2.0**100)), 24, -149, True,
                        _PROBE, 0.0, 0.0, acc, e)
    assert not np.isfinite(acc).any()  # the hardware path overflows here ...
    assert_replay_matches_lean(case)  # ... and the replay does not


def test_flush_to_zero_is_detected_and_the_binary32_replay_stays_exact():
    """A library may set flush-to-zero and denormals-are-zero in MXCSR (torch.set_flush_denormal):
    the hardware binary32 path checks gradual underflow in every task (kernels._ieee32) and folds
    the emulated way without it, so subnormal products still equal Lean's. One numba thread: the
    folds then run on this thread, the one that flushes."""
    torch = pytest.importorskip("torch")
    import numba
    from numba import njit

    from difftest.kernels import _ieee32

    probe = njit(lambda p: _ieee32(p))
    args = np.array([2.0**-149, 2.0**-70])
    assert probe(args)
    threads = numba.get_num_threads()
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals (no SSE3)")
    try:
        numba.set_num_threads(1)
        assert not probe(args)  # this thread flushes now
        assert_replay_matches_lean(_binary32_case(2.0**-70))  # products 2^-140: subnormal
    finally:
        torch.set_flush_denormal(False)
        numba.set_num_threads(threads)


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


def test_the_replay_cache_answers_equal_operands_and_never_an_array_written_since():
    """The last replays are kept (the model and an nf-* backend ask for the same one): equal
    operands in other arrays are answered from the cache; an operand its caller wrote into after
    the replay is replayed afresh, and -0.0 is not +0.0 there."""
    from difftest import replay as replay_mod
    from difftest.case import RuntimeInputs

    rng = np.random.default_rng(3)
    x, w, d = (BINARY32.round_array(rng.standard_normal(s)) for s in ((1, 2, 5, 5), (3, 2, 3, 3), (1, 3, 3, 3)))
    g = Case(x, w, d, stride=1, padding=0, format="binary32").geometry
    rt = lambda *a: RuntimeInputs(BINARY32, *a, 0.0, 0.0, 0.0, rounded=False)  # noqa: E731
    first = replay(rt(x, w, d), g)
    assert replay(rt(x.copy(), w.copy(), d.copy()), g)["grad_weight"][0] is first["grad_weight"][0]
    x[0, 0, 0, 0] += 1.0  # the caller writes into its input
    again = replay(rt(x, w, d), g)
    assert again["grad_weight"][0] is not first["grad_weight"][0]
    assert np.array_equal(again["grad_weight"][0], numpy_replay(rt(x, w, d), g)["grad_weight"][0])
    d[0, 0, 0, 0] = 0.0
    zero = replay(rt(x, w, d), g)
    d[0, 0, 0, 0] = -0.0
    assert replay(rt(x, w, d), g)["grad_bias"][0] is not zero["grad_bias"][0]
    assert len(replay_mod._CACHE) <= 4


@pytest.mark.parametrize("groups", [1, 2])
@given(data=st.data())
def test_three_channels_a_group_padded_to_four_equal_lean(groups, data):
    """The compiled input fold pads a group's 2 or 3 channels to 4 (zero weights, entries dropped
    after) so that its inner loop runs as one vector — the ResNet stem's 3 channels: the padding
    never reaches the real entries."""
    from difftest.geometry import Geometry

    fmt = data.draw(st.sampled_from([BINARY32, BINARY16]))
    g = Geometry(N=1, C=3 * groups, H=5, W=4, O=2 * groups, kH=3, kW=2, stride=(2, 1), padding=(1, 0), groups=groups)
    arr = lambda shape: data.draw(hnp.arrays(np.float64, shape, elements=format_values(fmt, lo=-20, hi=5)))  # noqa: E731
    case = Case(arr(g.input_shape), arr(g.weight_shape), arr(g.grad_output_shape), format=fmt, **g.conv_kwargs())
    assert_replay_matches_lean(case)

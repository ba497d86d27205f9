"""The general geometry: groups, dilation, per-axis stride and padding, through every engine.

The engines (fast exact oracle, mpmath oracle, NF replay compiled and numpy, order-free bound,
emulations) are checked against the Fraction reference of :mod:`difftest.lean`, which follows
the generalised index map point by point, and against torch's float64 autograd (an independent
implementation of the same convolution). Groups are independent convolutions: judging a grouped
case must give exactly what judging each group alone gives.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from difftest.case import Case
from difftest.check import check_case, exact_gradients, nf_reference
from difftest.errors import CaseFileError, InvalidCase
from difftest.formats import BINARY16, BINARY32
from difftest.geometry import GRADIENTS, Geometry

from suite_strategies import cases, geometries


def general_case(geometry: Geometry, seed: int = 0, fmt=BINARY32) -> Case:
    rng = np.random.default_rng(seed)
    arr = lambda shape: rng.standard_normal(shape).astype(np.float16).astype(np.float64)  # noqa: E731
    return Case(arr(geometry.input_shape), arr(geometry.weight_shape), arr(geometry.grad_output_shape),
                format=fmt, **geometry.conv_kwargs())


GENERAL = [
    Geometry(1, 4, 5, 6, 6, 3, 2, (2, 1), (1, 0), (1, 2), 2),
    Geometry(2, 3, 7, 5, 3, 2, 3, 1, (0, 2), 2, 3),  # depthwise, dilated
    Geometry(1, 4, 6, 5, 4, 2, 2, (1, 3), (2, 1), (2, 1), 4),
    Geometry(1, 6, 7, 7, 4, 3, 3, 2, 2, 2, 2),
]


@pytest.mark.parametrize("g", GENERAL, ids=lambda g: g.text())
def test_every_engine_matches_the_fraction_reference_and_torch(g):
    torch = pytest.importorskip("torch")
    from difftest import lean
    from difftest.oracles import get_oracle
    from difftest.replay import numpy_replay

    case = general_case(g, fmt=BINARY16)
    ref = lean.spec_gradients(case.input, case.weight, case.grad_output, g)
    exact = exact_gradients(case)
    slow = get_oracle("mpmath").spec_gradients(case.input, case.weight, case.grad_output, g)
    x, w = torch.tensor(case.input, requires_grad=True), torch.tensor(case.weight, requires_grad=True)
    torch.nn.functional.conv2d(x, w, None, **g.conv_kwargs()).backward(torch.tensor(case.grad_output))
    for name in GRADIENTS:
        assert (exact[name].to_fractions() == ref[name]).all(), name
        assert (slow[name].to_fractions() == ref[name]).all(), name
    np.testing.assert_allclose(exact["grad_input"].nearest, x.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(exact["grad_weight"].nearest, w.grad.numpy(), rtol=1e-12, atol=1e-12)
    model = nf_reference(case, BINARY16)
    fractions = lean.gradients_and_bounds(BINARY16, case.input, case.weight, case.grad_output, g)
    numpy_folds = numpy_replay(case.runtime(BINARY16), g)
    for name in GRADIENTS:
        value, bound = fractions[name]
        assert (np.vectorize(float)(value) == model.nf[name]).all(), name  # the compiled folds
        assert (numpy_folds[name][0] == model.nf[name]).all(), name
        assert (np.vectorize(Fraction)(model.bound[name]) >= bound).all(), name


@settings(max_examples=40, deadline=None, derandomize=True)
@given(case=cases(BINARY32, max_size=5))
def test_a_grouped_case_is_judged_as_its_groups_are(case):
    """Groups are independent convolutions: each group's slice of every result (exact, NF,
    TorchLean bound) equals the result of that group alone, the order-free bound up to float64
    rounding of its (upward-inflated) GEMM."""
    g = case.geometry
    if g.groups == 1:
        return
    whole = nf_reference(case, BINARY32)
    exact = exact_gradients(case)
    for k, (x, w, d) in enumerate(g.split_groups(case.input, case.weight, case.grad_output)):
        alone = Case(x, w, d, format=BINARY32, **g.group_geometry().conv_kwargs())
        part = nf_reference(alone, BINARY32)
        part_exact = exact_gradients(alone)
        slices = {"grad_input": (slice(None), slice(k * g.Cg, (k + 1) * g.Cg)),
                  "grad_weight": (slice(k * g.Og, (k + 1) * g.Og),), "grad_bias": (slice(k * g.Og, (k + 1) * g.Og),)}
        for name, where in slices.items():
            assert np.array_equal(whole.nf[name][where], part.nf[name]), name
            assert np.array_equal(whole.bound[name][where], part.bound[name]), name
            # one batched float64 GEMM or one per group: each a sure upper bound, equal up to BLAS's order
            assert np.array_equal(whole.order_free[name].terms[where], part.order_free[name].terms), name
            np.testing.assert_allclose(whole.order_free[name].bound[where], part.order_free[name].bound, rtol=1e-12)
            assert (exact[name].to_fractions()[where] == part_exact[name].to_fractions()).all(), name


@settings(max_examples=30, deadline=None, derandomize=True)
@given(g=geometries(max_size=6, max_channels=3))
def test_geometries_agree_with_torch_on_shapes(g):
    torch = pytest.importorskip("torch")
    x = torch.zeros(g.input_shape)
    y = torch.nn.functional.conv2d(x, torch.zeros(g.weight_shape), **g.conv_kwargs())
    assert tuple(y.shape) == g.grad_output_shape
    assert g.macs == g.N * g.O * g.Cg * g.kH * g.kW * g.out_h * g.out_w


def test_general_case_files_round_trip_and_plain_ones_keep_their_form(tmp_path):
    g = GENERAL[0]
    case = general_case(g)
    back = Case.load(case.save(tmp_path / "general.npz"))
    assert (back.stride, back.padding, back.dilation, back.groups) == ((2, 1), (1, 0), (1, 2), 2)
    assert back.case_id == case.case_id and back.geometry == g
    with np.load(tmp_path / "general.npz") as z:
        assert z["stride"].tolist() == [2, 1] and int(z["groups"]) == 2
    plain = general_case(Geometry(1, 2, 4, 4, 3, 3, 3, 1, 1))
    with np.load(plain.save(tmp_path / "plain.npz")) as z:
        assert "dilation" not in z.files and "groups" not in z.files and z["stride"].shape == ()
    # a case of values to be rounded (a model's layer) says so in its file, and replays rounded
    third = np.full(plain.input.shape, 1 / 3)
    rounded = Case(third, plain.weight, plain.grad_output, stride=1, padding=1, round_inputs=True)
    back = Case.load(rounded.save(tmp_path / "rounded.npz"))
    assert back.round_inputs and back.case_id == rounded.case_id and back.eps_input == rounded.eps_input
    assert not Case.load(tmp_path / "plain.npz").round_inputs
    # a pair of equal values is the scalar: the same case, the same id
    same = Case(plain.input, plain.weight, plain.grad_output, stride=(1, 1), padding=[1, 1], dilation=(1, 1))
    assert same.stride == 1 and same.case_id == plain.case_id


@pytest.mark.parametrize("kwargs, shapes, message", [
    ({"groups": 3}, ((1, 4, 5, 5), (3, 2, 3, 3), (1, 3, 3, 3)), "groups=3 must divide"),
    ({"groups": 2}, ((1, 4, 5, 5), (4, 1, 3, 3), (1, 4, 3, 3)), "second axis must be 2"),
    ({"dilation": 3}, ((1, 1, 5, 5), (1, 1, 3, 3), (1, 1, 1, 1)), r"dilated by 3 \(reaching 7\) exceeds"),
    ({"stride": (1, 2, 3)}, ((1, 1, 5, 5), (1, 1, 3, 3), (1, 1, 3, 3)), "stride must be an integer or a pair"),
    ({"dilation": 0}, ((1, 1, 5, 5), (1, 1, 3, 3), (1, 1, 3, 3)), "dilation must be >= 1"),
    ({"padding": (1, -1)}, ((1, 1, 5, 5), (1, 1, 3, 3), (1, 1, 3, 3)), "padding must be >= 0"),
    ({"groups": 1.5}, ((1, 1, 5, 5), (1, 1, 3, 3), (1, 1, 3, 3)), "groups must be an integer"),
    ({"stride": (2, 1)}, ((1, 1, 5, 5), (1, 1, 3, 3), (1, 1, 3, 3)), r"expected \(1, 1, 2, 3\).*stride \(2, 1\)"),
])
def test_bad_geometries_are_refused_with_a_clear_message(kwargs, shapes, message):
    x, w, d = (np.ones(s) for s in shapes)
    with pytest.raises(InvalidCase, match=message):
        Case(x, w, d, **kwargs)


def test_a_malformed_dilation_in_a_file_is_a_case_file_error(tmp_path):
    np.savez(tmp_path / "bad.npz", input=np.ones((1, 1, 4, 4)), weight=np.ones((1, 1, 2, 2)),
             grad_output=np.ones((1, 1, 3, 3)), stride=1, padding=0, dilation=np.ones((2, 2)))
    with pytest.raises(CaseFileError, match=r"dilation must be an integer or a pair \[h, w\]"):
        Case.load(tmp_path / "bad.npz")


def test_extensions_are_named_and_groups_are_not_one():
    assert Geometry(1, 4, 5, 5, 4, 3, 3, 1, 1, 1, 4).extensions == ()
    assert Geometry(2, 1, 5, 5, 1, 3, 3, (2, 1), 1, 2).extensions == ("batch", "dilation", "per-axis stride")
    note = Geometry(1, 1, 5, 5, 1, 3, 3, 1, (1, 0)).extension_note()
    assert note.startswith("per-axis padding: the bounds fold in the spec's order") and "not a Lean theorem" in note
    assert Geometry(1, 1, 5, 5, 1, 3, 3).extension_note() == ""


def test_the_check_command_labels_an_extension(tmp_path, capsys):
    from difftest.cli import main

    path = general_case(GENERAL[1]).save(tmp_path / "c.npz")
    assert main(["check", str(path), "--backend", "numpy-float32", "--backend", "nf-binary32"]) == 0
    out = capsys.readouterr().out
    assert "dilation 2, groups 3" in out and "padding (0, 2)" in out
    assert "note: batch N > 1: grad_weight/grad_bias bounds fold over (n, i, j), n outermost; " \
           "dilation, per-axis padding: the bounds fold in the spec's order" in out


@settings(max_examples=15, deadline=None, derandomize=True)
@given(case=cases(BINARY32, max_size=5), backend=st.sampled_from(["numpy-float32", "emu-binary32", "emu-fft", "nf-binary32"]))
def test_cpu_backends_stay_within_the_order_free_bound_on_general_geometries(case, backend):
    """binary32 done right in any order never breaks the order-free bound (emu-fft: an FFT
    may, but never by an error: its verdict is one of the three)."""
    (r,) = check_case(case, [backend])
    for name, gr in r.gradients.items():
        assert gr.verdict in (("pass", "order", "precision") if backend == "emu-fft" else ("pass", "order")), (name, gr)
    if backend == "nf-binary32":
        assert r.verdict == "pass"

"""Emulated reference backends: each computes what it says, and each breaks binary32's order-free bound."""

import numpy as np
import pytest

from difftest import Case
from difftest.backends import all_backends
from difftest.campaign import default_backends
from difftest.check import check_case

EMULATED = ["emu-tf32", "emu-binary16-acc", "emu-bfloat16-acc", "emu-ftz", "emu-rtz-acc", "emu-fft"]


def normal_case(C=2, O=32, size=24):
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(np.float32).astype(np.float64)  # noqa: E731
    return Case(r(1, C, size, size), r(O, C, 3, 3), r(1, O, size, size), stride=1, padding=1)


def verdicts(case, name):
    (r,) = check_case(case, [name])
    return {g: x.verdict for g, x in r.gradients.items()}


def test_every_emulation_is_registered_claims_binary32_and_stays_out_of_default_campaigns():
    known = all_backends()
    assert all(known[n].format.name == "binary32" and known[n].availability()[0] for n in EMULATED)
    assert not {b.name for b in default_backends()} & set(EMULATED)


@pytest.mark.parametrize("name", ["emu-tf32", "emu-binary16-acc", "emu-bfloat16-acc"])
def test_reduced_precision_is_precision_on_ordinary_values(name):
    assert verdicts(normal_case(), name)["grad_input"] == "precision"


def test_flushed_subnormals_are_precision_and_normal_values_pass():
    tiny = np.full((1, 1, 2, 2), 2.0**-140)  # binary32 subnormals: the weight gradient is subnormal too
    case = Case(tiny, np.ones((1, 1, 1, 1)), np.ones((1, 1, 2, 2)))
    assert verdicts(case, "emu-ftz")["grad_weight"] == "precision"
    assert set(verdicts(normal_case(O=4, size=8), "emu-ftz").values()) == {"pass"}


def test_truncated_accumulation_is_precision_where_rounding_to_nearest_is_not():
    d = np.array([1.0, 1.5 * 2.0**-24]).reshape(1, 1, 1, 2)  # 1 + 1.5 ulp/2: truncation loses 1.5·2^-24 > u·Σ|δ|
    case = Case(np.ones((1, 1, 1, 2)), np.ones((1, 1, 1, 1)), d)
    assert verdicts(case, "emu-rtz-acc")["grad_bias"] == "precision"
    assert verdicts(case, "nf-binary32")["grad_bias"] == "pass"


def test_fft_errors_scale_with_the_norm_and_drown_small_entries():
    d = np.array([2.0**20, 2.0**-10, 2.0**-10, 2.0**-10, 2.0**-10, 2.0**-10, 2.0**-10, 2.0**-10]).reshape(1, 1, 1, 8)
    case = Case(np.ones((1, 1, 1, 8)), np.ones((1, 1, 1, 1)), d)  # grad_input = δ: one giant, small others
    assert verdicts(case, "emu-fft")["grad_input"] == "precision"
    assert verdicts(case, "nf-binary32")["grad_input"] == "pass"


@pytest.mark.parametrize("name", ["emu-binary16-acc", "emu-rtz-acc"])
def test_the_emulated_folds_agree_with_an_exact_scalar_fold(name):
    """The vectorised fold equals a fold written out with Fractions on a small case."""
    from fractions import Fraction

    from difftest.formats import BINARY16, BINARY32

    rng = np.random.default_rng(3)
    d = BINARY32.round_array(rng.standard_normal((1, 1, 1, 9)))
    acc = Fraction(0)
    for t in d.ravel():
        exact = acc + Fraction(float(t))
        if name == "emu-binary16-acc":
            acc = BINARY16.round(exact)
        else:  # truncation in binary32: the nearest, stepped back toward zero where it went outwards
            near = BINARY32.round(exact)
            if abs(near) > abs(exact):
                near = Fraction(float(np.nextafter(np.float32(near), np.float32(0))))
            acc = near
    (got,) = check_case(Case(np.ones((1, 1, 1, 9)), np.ones((1, 1, 1, 1)), d), [name])
    assert Fraction(float(got.outputs["grad_bias"][0])) == acc

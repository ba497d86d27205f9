"""Your own conv backward in a few lines: a plain function plus a format is a backend."""

import numpy as np
import pytest

from difftest import Case, check_case
from difftest.backends import FunctionBackend, as_backend, get_backend, is_registered

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'difftest[torch]')")


def torch_float32_conv_backward(x, w, d, stride, padding):
    """A user's conv backward: torch in float32."""
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float32, requires_grad=True)
    bt = torch.zeros(w.shape[0], dtype=torch.float32, requires_grad=True)
    torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding).backward(torch.tensor(d, dtype=torch.float32))
    return xt.grad, wt.grad, bt.grad


def test_a_plain_function_is_judged_like_the_registered_backend_that_computes_the_same():
    case = Case.load("examples/stride2_pad1.npz")
    mine, theirs = check_case(case, [torch_float32_conv_backward, "torch-cpu-float32"])
    assert mine.backend == "torch_float32_conv_backward" and mine.format == "binary32"
    for g in mine.gradients:
        assert mine.gradients[g].verdict == theirs.gradients[g].verdict
        assert mine.gradients[g].max_ratio == pytest.approx(theirs.gradients[g].max_ratio)


def test_a_function_with_a_format_is_judged_in_that_format():
    rng = np.random.default_rng(1)
    r = lambda *s: np.round(rng.standard_normal(s) * 8) / 8  # noqa: E731  (values of every format)
    case = Case(r(1, 2, 5, 5), r(3, 2, 3, 3), r(1, 3, 3, 3))
    (res,) = check_case(case, [(torch_float32_conv_backward, "binary16")])
    assert res.format == "binary16"


def test_a_function_returning_the_wrong_thing_is_an_error_with_a_message():
    case = Case.load("examples/stride2_pad1.npz")
    (res,) = check_case(case, [lambda x, w, d, s, p: None])
    assert res.verdict == "error" and "must return (grad_input, grad_weight, grad_bias)" in res.gradients["grad_bias"].message


def test_as_backend_says_what_it_accepts():
    assert as_backend("nf-binary32") is not None and is_registered("nf-binary32") and not is_registered("mine")
    assert isinstance(as_backend(torch_float32_conv_backward, "binary32"), FunctionBackend)
    with pytest.raises(TypeError, match="needs the format"):
        as_backend(torch_float32_conv_backward)
    with pytest.raises(TypeError, match="not a backend"):
        as_backend(42)
    assert as_backend(get_backend("numpy-float32")).name == "numpy-float32"


def test_assert_within_bounds_takes_a_function_and_names_the_saved_case_on_failure(tmp_path):
    from difftest import assert_within_bounds

    case = Case.load("examples/cancellation.npz")
    assert_within_bounds(case, torch_float32_conv_backward, bound="order-free")

    def sums_in_float16(x, w, d, stride, padding):  # a user's bug: the bias summed in binary16
        gi, gw, _ = torch_float32_conv_backward(x, w, d, stride, padding)
        return gi, gw, torch.tensor(d, dtype=torch.float16).sum((0, 2, 3))

    with pytest.raises(AssertionError, match="grad_bias: precision") as failure:
        assert_within_bounds(case, sums_in_float16, save_to=tmp_path)
    assert f"difftest.check_case(difftest.Case.load('{tmp_path / case.case_id}.npz'), [" in str(failure.value)

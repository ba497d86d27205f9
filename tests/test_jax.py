"""JAX backends: jax.vjp of conv_general_dilated under jit, inputs in exactly, what XLA's CPU runtime does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed (pip install -e '.[jax]')")

from difftest import Case, check_case  # noqa: E402
from difftest.backends import get_backend  # noqa: E402
from difftest.geometry import GRADIENTS, Geometry  # noqa: E402
from difftest.isolation import Workers  # noqa: E402

CASES = Path(__file__).parent / "cases"


@pytest.fixture(scope="module")
def isolated():
    """JAX's backends in worker processes, as the faces run them: JAX is multithreaded once it
    runs, and warns at every later fork of the process that ran it (the suite's subprocesses)."""
    with Workers(timeout=300) as pool:
        yield lambda *names: pool.wrap([get_backend(n) for n in names])


def _case(g: Geometry, seed: int = 0, fmt: str = "binary32") -> Case:
    from difftest.strategies import seeded_array

    x, w, d = (seeded_array(fmt, s, "normal", seed + i) for i, s in
               enumerate((g.input_shape, g.weight_shape, g.grad_output_shape)))
    return Case(x, w, d, stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups, format=fmt)


@pytest.mark.parametrize("g", [
    Geometry(2, 4, 7, 6, 6, 3, 3, stride=(1, 2), padding=(1, 0), dilation=(2, 1), groups=2),
    Geometry(1, 3, 8, 8, 5, 3, 3, stride=2, padding=1),
])
def test_jax_cpu_float32_matches_torch_within_the_order_free_bound_on_ordinary_values(g, isolated):
    case = _case(g)
    jx, torch = check_case(case, isolated("jax-cpu-float32", "torch-cpu-float32"))
    assert jx.verdict in ("pass", "order"), jx.gradients
    for name in GRADIENTS:  # both compute the same convolution: within each other's rounding
        assert np.allclose(jx.outputs[name], torch.outputs[name], rtol=1e-5, atol=1e-6)


def test_only_the_requested_gradients_and_a_value_the_dtype_cannot_hold_raises(isolated):
    import dataclasses

    case = dataclasses.replace(_case(Geometry(1, 2, 5, 5, 3, 3, 3, padding=1)), gradients=("grad_weight",))
    (r,) = check_case(case, isolated("jax-cpu-float32"))
    assert list(r.gradients) == ["grad_weight"] and r.verdict in ("pass", "order")
    (b,) = isolated("jax-cpu-bfloat16")
    x = np.full((1, 1, 3, 3), 1 + 2.0**-12)
    with pytest.raises(Exception, match="not exactly representable in jax.numpy.bfloat16"):
        b.conv2d_backward(x, np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), 1, 0)


def test_the_environment_says_what_ran(isolated):
    (b,) = isolated("jax-cpu-float32")
    env = b.environment()
    assert env["jax"] == jax.__version__ and env["platform"] == "cpu" and env["precision_requested"] == "default"
    assert "xla_flags" in env and env["jax_backend"] == "cpu"
    cuda = get_backend("jax-cuda-float32-highest")
    assert "HIGHEST" in cuda.description and not cuda.default_campaign


def test_xla_cpu_flushes_subnormals_to_zero_a_precision_finding(isolated):
    """XLA's CPU runtime computes with flush-to-zero and denormals-are-zero: a bias gradient whose
    exact value is binary32-subnormal comes back 0 (found by a fuzz campaign, declared in
    difftest-expected.toml)."""
    case = Case.load(CASES / "xla-cpu-flushes-subnormals.npz")
    (r,) = check_case(case, isolated("jax-cpu-float32"))
    bias = r.gradients["grad_bias"]
    assert bias.verdict == "precision" and bias.worst["backend"] == 0.0
    assert 0 < abs(bias.worst["exact"]) < np.finfo(np.float32).tiny


@pytest.mark.skipif(jax.__version__ != "0.10.2", reason=f"the XLA CHECK failure was seen with jax 0.10.2, not {jax.__version__}")
def test_an_xla_check_failure_is_an_error_verdict_and_the_run_goes_on():
    """A fuzz campaign hit this abort of XLA's algebraic simplifier (bfloat16, a stride-2 case of a
    4 x 1 image): the worker dies with SIGABRT, the verdict is error with XLA's CHECK line, and the
    next case runs in a new worker."""
    case = Case.load(CASES / "xla-check-failure-bfloat16.npz")
    with Workers(timeout=120) as pool:
        (b,) = pool.wrap([get_backend("jax-cpu-bfloat16")])
        (r,) = check_case(case, [b])
        assert r.verdict == "error" and r.gradients["grad_input"].message == "crashed: SIGABRT"
        assert "Check failed" in r.error
        (after,) = check_case(_case(Geometry(1, 2, 5, 5, 3, 3, 3, padding=1), fmt="bfloat16"), [b])
        assert after.verdict != "error"

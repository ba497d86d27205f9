"""Every available backend agrees with the exact oracle within its order-free bound on ordinary cases."""

import numpy as np
import pytest

from difftest.backends import all_backends, get_backend
from difftest.case import Case
from difftest.check import check_case
from difftest.geometry import GRADIENTS

GEOMETRIES = [  # (N, C, H, W, O, k, stride, padding)
    (1, 3, 8, 8, 4, 3, 1, 1),
    (2, 2, 9, 7, 3, 3, 2, 1),
    (1, 4, 6, 10, 2, 2, 2, 0),
    (2, 1, 5, 5, 2, 1, 3, 2),
]
# the emulated references (emu-*) break binary32's bounds by design: tests/test_emulated.py
AVAILABLE = [b for b in all_backends().values() if b.availability()[0] and b.default_campaign]


def ordinary_case(fmt, geometry, seed):
    N, C, H, W, O, k, s, p = geometry
    rng = np.random.default_rng(seed)
    oh, ow = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    r = lambda *shape: fmt.round_array(rng.standard_normal(shape))  # noqa: E731
    return Case(r(N, C, H, W), r(O, C, k, k), r(N, O, oh, ow), stride=s, padding=p, format=fmt)


@pytest.mark.parametrize("backend", AVAILABLE, ids=lambda b: b.name)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_backend_is_within_its_order_free_bound_on_ordinary_cases(backend, geometry):
    case = ordinary_case(backend.format, geometry, seed=11)
    (result,) = check_case(case, [backend])
    for g in GRADIENTS:
        r = result.gradients[g]
        assert r.verdict in ("pass", "order"), (g, r)
        assert r.violations_order_free == 0


@pytest.mark.parametrize("name", [n for n in all_backends() if n.startswith("nf-")])
def test_nf_backends_pass_their_own_bound(name):
    b = get_backend(name)
    (result,) = check_case(ordinary_case(b.format, GEOMETRIES[1], seed=5), [b])
    assert result.verdict == "pass"


def test_numpy_float32_is_what_numpy_computes():
    b = get_backend("numpy-float32")
    case = ordinary_case(b.format, GEOMETRIES[0], seed=1)
    out = b.conv2d_backward(case.input, case.weight, case.grad_output, case.stride, case.padding)
    d = case.grad_output.astype(np.float32)
    assert np.array_equal(out["grad_bias"], d.transpose(1, 0, 2, 3).reshape(4, -1).sum(axis=1).astype(np.float64))

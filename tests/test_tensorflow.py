"""TensorFlow backends: GradientTape over tf.nn.conv2d + bias_add, the layouts transposed exactly,
and what TensorFlow's CPU kernels refuse declared, not drawn, not an error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed (pip install -e '.[tensorflow]', or '.[test]')")

from difftest import Case, check_case  # noqa: E402
from difftest.backends import get_backend  # noqa: E402
from difftest.campaign import Campaign, CampaignConfig  # noqa: E402
from difftest.geometry import GRADIENTS, Geometry  # noqa: E402
from difftest.store import read_results  # noqa: E402
from difftest.strategies import seeded_array  # noqa: E402
from difftest.supports import Supports  # noqa: E402


def _case(g: Geometry, fmt: str = "binary32", seed: int = 0) -> Case:
    x, w, d = (seeded_array(fmt, s, "normal", seed + i) for i, s in
               enumerate((g.input_shape, g.weight_shape, g.grad_output_shape)))
    return Case(x, w, d, stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups, format=fmt)


def test_tf_cpu_float32_computes_the_convolutions_gradients_in_torchs_layout():
    """Per-axis stride and padding, a batch: NCHW/OIHW go in as NHWC/HWIO and come back."""
    case = _case(Geometry(2, 3, 7, 6, 4, 3, 2, stride=(2, 1), padding=(1, 0)))
    mine, torch = check_case(case, ["tf-cpu-float32", "torch-cpu-float32"])
    assert mine.verdict in ("pass", "order"), mine.gradients
    for name in GRADIENTS:
        assert np.allclose(mine.outputs[name], torch.outputs[name], rtol=1e-5, atol=1e-6)
    (bf,) = check_case(dataclasses.replace(_case(case.geometry, "bfloat16"), gradients=("grad_input",)),
                       ["tf-cpu-bfloat16"])
    assert list(bf.gradients) == ["grad_input"] and bf.verdict != "error"


def test_what_tensorflows_cpu_kernels_refuse_is_declared_and_unsupported():
    b = get_backend("tf-cpu-float32")
    assert b.supports == Supports(dilation=False, groups=False) and get_backend("tf-cuda-tf32").supports == Supports()
    with pytest.raises(Exception, match="do not yet support dilation rates larger than 1"):
        b.conv2d_backward(np.ones((1, 2, 7, 7)), np.ones((2, 2, 3, 3)), np.ones((1, 2, 5, 5)), 1, 1, dilation=2)
    for g in (Geometry(1, 2, 7, 7, 2, 3, 3, padding=1, dilation=2), Geometry(1, 4, 5, 5, 4, 3, 3, padding=1, groups=2)):
        (r,) = check_case(_case(g), [b])
        assert r.verdict == "unsupported" and "does not take" in r.gradients["grad_weight"].message


def test_a_campaign_draws_nothing_it_refuses_and_gets_no_error(tmp_path):
    cfg = CampaignConfig([get_backend("tf-cpu-float32")], out=tmp_path, database=None, progress=False, examples=20,
                         rounds=1, seed=0, shrink=False)  # each geometry traces a graph: few cases, no shrinking
    Campaign(cfg).run()
    records = read_results(tmp_path)
    assert records and not [r for r in records for gr in r.gradients.values() if gr.verdict in ("error", "unsupported")]
    assert all(Geometry.from_dict(r.geometry).dilation == 1 and r.geometry["groups"] == 1 for r in records)


def test_the_environment_says_what_ran():
    env = get_backend("tf-cpu-float32").environment()
    assert env["tensorflow"] == tf.__version__ and "tf_enable_onednn_opts" in env and "tensor_float_32_execution" in env

"""Backends declare what they take: campaigns draw only that, ``check`` says ``unsupported`` for the rest."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from difftest import Case, check_case
from difftest import strategies as dst
from difftest.backends import Backend, FunctionBackend, get_backend
from difftest.campaign import Campaign, CampaignConfig
from difftest.expectations import Expected
from difftest.errors import DifftestError
from difftest.formats import BINARY32
from difftest.geometry import GRADIENTS, Geometry
from difftest.results import exit_code, findings
from difftest.store import read_results
from difftest.supports import ALL, SPEC, Supports, of_function

FEW = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def five(x, w, d, stride, padding):
    return get_backend("numpy-float32").conv2d_backward(x, w, d, stride, padding)


def dilated(x, w, d, stride, padding, dilation=1):
    return get_backend("numpy-float32").conv2d_backward(x, w, d, stride, padding, dilation=dilation)


class Refusing(Backend):
    """Like TensorFlow's CPU kernels: no dilated or grouped gradients. It raises on one, so a
    campaign that drew one would show an ``error``."""

    name = "refusing-float32"
    format = BINARY32
    supports = Supports(dilation=False, groups=False)

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS, dilation=1, groups=1):
        if dilation != 1 or groups != 1:
            raise RuntimeError(f"refused: dilation {dilation}, groups {groups}")
        return get_backend("numpy-float32").conv2d_backward(x, w, d, stride, padding, gradients)


def test_a_signature_says_what_a_function_takes():
    assert of_function(five) == SPEC
    assert of_function(dilated) == Supports(dilation=True, groups=False, per_axis=False)
    assert of_function(lambda x, w, d, s, p, **kw: None) == Supports(per_axis=False)
    assert FunctionBackend(five, "binary32").supports == SPEC
    assert FunctionBackend(five, "binary32", supports=ALL).supports == ALL
    assert get_backend("torch-cpu-float32").supports == ALL and Refusing().supports.label == "no dilation, no groups"


def test_what_is_not_taken_is_named():
    g = Geometry(2, 4, 6, 6, 4, 3, 3, stride=(1, 2), padding=1, dilation=2, groups=2)
    assert SPEC.why_not(g) == "dilation 2, groups 2, the per-axis stride (1, 2)"
    assert Supports(batch=False).why_not(g) == "a batch of 2"
    assert ALL.takes(g) and not SPEC.takes(g)
    assert SPEC.takes(Geometry(2, 4, 6, 6, 4, 3, 3, stride=2, padding=1))


@pytest.mark.parametrize("takes", [SPEC, Supports(dilation=False), Supports(groups=False, per_axis=False), Supports(batch=False)])
def test_the_strategies_draw_only_what_is_taken(takes):
    @FEW
    @given(dst.campaign_cases("binary32", dst.Limits(max_channels=4), realistic=0.5, extensions=takes))
    def drawn(case):
        assert takes.takes(case.geometry), takes.why_not(case.geometry)

    drawn()


def test_extensions_false_is_the_specs_own_geometry_and_a_bad_value_is_refused():
    @FEW
    @given(dst.cases("binary32", extensions=False))
    def drawn(case):
        g = case.geometry
        assert g.dilation == 1 and g.groups == 1 and isinstance(g.stride, int) and isinstance(g.padding, int)

    drawn()
    with pytest.raises(Exception, match="extensions must be True, False or a difftest.supports.Supports"):
        dst.cases("binary32", extensions="no")


def _dilated_case() -> Case:
    rng = np.random.default_rng(0)
    g = Geometry(1, 2, 7, 7, 2, 3, 3, padding=1, dilation=2)
    arrays = [np.float32(rng.standard_normal(s)).astype(np.float64) for s in (g.input_shape, g.weight_shape, g.grad_output_shape)]
    return Case(*arrays, padding=1, dilation=2, format="binary32")


def test_check_of_a_case_a_backend_does_not_take_is_unsupported_not_an_error_nor_a_finding():
    case = _dilated_case()
    mine, torch_result = check_case(case, [FunctionBackend(five, "binary32", name="five"), "torch-cpu-float32"])
    assert {g: r.verdict for g, r in mine.gradients.items()} == dict.fromkeys(GRADIENTS, "unsupported")
    assert mine.gradients["grad_input"].message == "five does not take dilation 2"
    assert mine.verdict == "unsupported" and torch_result.verdict in ("pass", "order")
    (alone,) = check_case(case, [Refusing()])  # nothing it takes: nothing is computed, nothing raised
    assert alone.verdict == "unsupported" and not alone.timings
    with pytest.raises(DifftestError, match="verdict must be one of order, precision, domain, error"):
        Expected.from_dict({"backend": "x", "verdict": "unsupported", "reason": "r"}, "here")


def test_a_campaign_over_a_backend_that_refuses_dilation_and_groups_draws_none_and_gets_no_error(tmp_path):
    cfg = CampaignConfig([Refusing(), get_backend("nf-binary32")], out=tmp_path, database=None, progress=False,
                         examples=60, rounds=1, seed=3)
    Campaign(cfg).run()
    records = read_results(tmp_path)
    mine = [r for r in records if r.backend == "refusing-float32"]
    assert mine and not any(gr.verdict in ("error", "unsupported") for r in mine for gr in r.gradients.values())
    assert all(Refusing.supports.takes(Geometry.from_dict(r.geometry)) for r in mine)
    # nf-binary32 takes everything: a group of its own, which draws the generalisations too
    general = [r for r in records if r.backend == "nf-binary32" and not SPEC.takes(Geometry.from_dict(r.geometry))]
    assert general
    assert exit_code(records, "precision") == 0 and not [f for f in findings(records) if f.finding.verdict == "error"]


class SaysNothingUsable(Backend):
    """A backend whose ``supports`` raises: untrusted code, run as taking everything."""

    name = "says-nothing-usable"
    format = BINARY32
    isolate = False

    @property
    def supports(self):
        raise RuntimeError("no idea")

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS, dilation=1, groups=1):
        return get_backend("numpy-float32").conv2d_backward(x, w, d, stride, padding, gradients, dilation, groups)


def test_a_backend_whose_supports_raises_is_run_as_taking_everything(tmp_path):
    (r,) = check_case(_dilated_case(), [SaysNothingUsable()])
    assert r.verdict in ("pass", "order")
    cfg = CampaignConfig([SaysNothingUsable()], out=tmp_path, database=None, progress=False, examples=5, rounds=1)
    assert Campaign(cfg).groups(cfg.backends)[0].supports == ALL
